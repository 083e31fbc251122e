"""`--ensemble`: each inference tile predicted in its 8 flips and 90-degree rotations, each
prediction turned back, the 8 averaged (bpho/inference.py), through `bpho predict` and `bpho evaluate`."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from mlflow import MlflowClient
from pylibCZIrw import czi as pyczi
from scipy import ndimage

from bpho import io
from bpho.config import TrainConfig
from bpho.inference import SuperResolver, load_model
from bpho.models import build_model
from bpho.tracking import download_model
from bpho.train import train
from conftest import build_world, run_bpho, use_world

NORM = {"percentile_low": 2, "percentile_high": 99.8}
TINY_UNET = {"arch": "unet", "encoder": "resnet18", "decoder_widths": (16, 8, 8), "head_channels": 4}

# The dihedral group written out element by element (not as the flip x rotation loop of
# inference.py), each transform of a (..., h, w) tensor with its own inverse.
_rot = lambda k: lambda t: torch.rot90(t, k, (-2, -1))  # noqa: E731
_t = lambda t: t.transpose(-2, -1)  # noqa: E731
_anti = lambda t: torch.rot90(t, 2, (-2, -1)).transpose(-2, -1)  # noqa: E731
_ud = lambda t: torch.flip(t, (-2,))  # noqa: E731
_lr = lambda t: torch.flip(t, (-1,))  # noqa: E731
DIHEDRAL = [(_rot(0), _rot(0)), (_rot(1), _rot(3)), (_rot(2), _rot(2)), (_rot(3), _rot(1)),
            (_t, _t), (_anti, _anti), (_ud, _ud), (_lr, _lr)]


def fresh(arch: dict, scale: int, frames: int, seed: int = 0) -> SuperResolver:
    """A freshly initialised network from bpho's builder, its weights grown until the output
    differs clearly from the network's bilinear base (and so between flips and rotations)."""
    torch.manual_seed(seed)
    net = build_model({**arch, "scale": scale, "frames": frames}).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(1.5)
    meta = {"model": net.config.to_dict(), "normalization": NORM}
    return SuperResolver(net=net, meta=meta, device=torch.device("cpu"), tile=128, context=3)


def direct(model: SuperResolver, window: np.ndarray, lo: float, span: float, ensemble: bool) -> np.ndarray:
    """One tile, computed here with torch: mirrored by the context, the network on each of the 8
    transforms, each turned back, averaged, the context cropped, back to the input's units."""
    c, s = model.context, model.scale
    x = torch.from_numpy(np.pad(window, ((0, 0), (c, c), (c, c)), mode="reflect"))[None]
    with torch.no_grad():
        preds = [inv(model.net(fwd(x))) for fwd, inv in (DIHEDRAL if ensemble else DIHEDRAL[:1])]
    hr = torch.stack(preds).mean(0)[0, 0].numpy()
    return hr[c * s:hr.shape[0] - c * s, c * s:hr.shape[1] - c * s] * span + lo


def _image(shape, seed=0) -> np.ndarray:
    return ndimage.gaussian_filter(np.random.default_rng(seed).gamma(2, 50, shape), 1.2).astype(np.float32)


@pytest.mark.parametrize("arch, scale, frames", [(TINY_UNET, 4, 1), (TINY_UNET, 2, 3),
                                                 ({"arch": "rcan", "features": 8, "groups": 1, "blocks": 2}, 1, 1)])
def test_ensemble_is_the_mean_of_the_8_turned_back_predictions(arch, scale, frames):
    """On a non-square image (rot90 swaps its sides), single- and multi-frame (the same transform
    on every frame of the window), scale 1 to 4: what SuperResolver returns with `ensemble` is the
    mean computed directly on the network; without it, the plain prediction, which differs."""
    model = fresh(arch, scale, frames)
    stack = _image((frames, 30, 44))
    lo, hi = map(float, np.percentile(stack, (NORM["percentile_low"], NORM["percentile_high"])))
    window = (stack - lo) / (hi - lo)
    if frames == 1:
        plain, model.ensemble = model.predict(stack[0]), True
        both = model.predict(stack[0])
    else:  # the middle frame of a stack as long as the window sees exactly the window
        plain, model.ensemble = model.predict(stack)[frames // 2], True
        both = model.predict(stack)[frames // 2]
    assert both.shape == (30 * scale, 44 * scale)
    want = direct(model, window, lo, hi - lo, ensemble=True)
    spread = np.ptp(want)
    np.testing.assert_allclose(both, want, atol=1e-5 * spread)
    np.testing.assert_allclose(plain, direct(model, window, lo, hi - lo, ensemble=False), atol=1e-5 * spread)
    assert np.abs(both - plain).mean() > 1e-3 * spread  # the network is not symmetric: the 8 differ


def test_ensemble_does_not_depend_on_the_inference_tiles():
    """As for plain prediction (tests/test_models.py): with a context wider than the network's
    reach (this RCAN's is 17-24 LR px), tiles of 19x19 or 30x28 LR px give the whole image's result."""
    model = fresh({"arch": "rcan", "features": 16, "groups": 1, "blocks": 2}, 4, 1)
    model.context = 24
    image = _image((72, 52), seed=1)
    out = {}
    for tile in (20, 32, 128):
        model.tile, model.overlap, model.ensemble = tile, min(16, tile // 2), True
        out[tile] = model.predict_image(image)
    model.ensemble = False
    plain = model.predict_image(image)
    bilinear = torch.nn.functional.interpolate(torch.from_numpy(image)[None, None], scale_factor=4,
                                               mode="bilinear").numpy()[0, 0]
    residual = np.std(out[128] - bilinear)
    assert residual > 5  # the network matters
    assert np.abs(out[128] - plain).max() > 0.1 * residual  # and the ensemble changes it
    assert max(np.abs(out[t] - out[128]).max() for t in (20, 32)) < 1e-4 * residual


@pytest.fixture(scope="module")
def world(demo, tmp_path_factory):
    """The small demo's pairs as a dataset with a test split, and one tiny model trained on it."""
    root = build_world(demo, tmp_path_factory.mktemp("ensemble-root"), sources=[("paired", "pairs", "paired")],
                       datasets=[("paired_001", "pairs", "ens", ["tile_sizes=64", "tiles_per_image=24",
                                                                 "valid_fraction=0.34", "test_fraction=0.34"])])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BPHO_ROOT", str(root))
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'models.db'}")
        model = {k: v for k, v in TINY_UNET.items() if k != "arch"}
        train(TrainConfig(dataset="ens", epochs=1, batch_size=8, model_name="ens", model=model), progress=False)
    return root


@pytest.fixture
def env(world, monkeypatch):
    monkeypatch.setenv("BPHO_ROOT", str(world))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{world / 'models.db'}")
    return world


def test_bpho_predict_ensemble_writes_the_ensemble_tiff(env, tmp_path):
    """`bpho predict --ensemble` on a real CZI movie (every frame, 2 channels) and on a TIFF writes
    what the loaded model predicts with the ensemble, not the plain prediction."""
    movie = tmp_path / "cell.czi"
    frames = np.random.default_rng(5).poisson(40, (3, 2, 28, 36)).astype(np.uint16) + 100
    with pyczi.create_czi(str(movie)) as w:
        for t, c in np.ndindex(3, 2):
            w.write(frames[t, c], plane={"T": t, "C": c, "Z": 0})
        w.write_metadata(scale_x=0.14e-6, scale_y=0.14e-6)
    tif = tmp_path / "field.tif"
    tifffile.imwrite(tif, _image((26, 40), seed=3))
    proc = run_bpho("predict", "--model", "models:/ens/latest", movie, tif, "--out", tmp_path / "out", "--tile", "24",
                    "--overlap", "8", "--ensemble", "--channels", "all")
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = download_model("models:/ens/latest")
    ens = load_model(folder, device="cpu", tile=24, overlap=8, ensemble=True)
    plain = load_model(folder, device="cpu", tile=24, overlap=8)
    got = io.read(tmp_path / "out/cell.tif")
    assert got.shape == (3, 2, 1, 112, 144) and got.data.dtype == np.float32
    for c in range(2):
        want = ens.predict(frames[:, c])
        np.testing.assert_allclose(got.data[:, c, 0], want, atol=1e-4 * np.ptp(want))
        # a model trained one epoch from its bilinear base has a small residual: the written file is
        # still ten times nearer the ensemble than the plain prediction
        off_plain = np.abs(got.data[:, c, 0] - plain.predict(frames[:, c])).mean()
        assert off_plain > 10 * np.abs(got.data[:, c, 0] - want).mean() and off_plain > 1e-5 * np.ptp(want)
    written = tifffile.imread(tmp_path / "out/field.tif")
    want = ens.predict_image(tifffile.imread(tif))
    np.testing.assert_allclose(written, want, atol=1e-4 * np.ptp(want))


def test_bpho_evaluate_ensemble_logs_and_says_it(env):
    """`bpho evaluate --ensemble` logs `ensemble` true, says so, and scores the ensemble (not the
    plain model, which `bpho evaluate` without the flag scores and logs as false)."""
    runs = {}
    for flag in ([], ["--ensemble"]):
        proc = run_bpho("evaluate", "--model", "models:/ens/latest", "--dataset", "ens", "--device", "cpu", *flag)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert ("flip/rotation ensemble" in proc.stdout.splitlines()[0]) == bool(flag), proc.stdout
        client = MlflowClient()
        exp = client.get_experiment_by_name("bpho-evaluate")
        run = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0]
        runs[bool(flag)] = run
    assert runs[False].data.params["ensemble"] == "false" and runs[True].data.params["ensemble"] == "true"
    assert "flip/rotation ensemble" in runs[True].data.tags["mlflow.note.content"]
    assert runs[True].data.metrics["model_psnr"] != runs[False].data.metrics["model_psnr"]
