"""Networks by name (bpho/models): the registry, the second architecture (RCAN) through the
same train / load / predict / export paths as the U-Net, the flags every architecture gets."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import tifffile
import torch
from scipy import ndimage

from bpho import config
from bpho.inference import SuperResolver, load_model
from bpho.models import ARCHITECTURES, build_model, model_config
from bpho.tracking import download_model
from conftest import assert_one_line_error, build_world, run_bpho, use_world

TINY_RCAN = ["--arch", "rcan", "--model-features", "16", "--model-groups", "1", "--model-blocks", "2"]


@pytest.fixture(scope="module")
def world(demo, tmp_path_factory):
    return build_world(demo, tmp_path_factory.mktemp("models-root"), sources=[("paired", "pairs", "paired")],
                       datasets=[("paired_001", "pairs", "tiny", ["tile_sizes=64", "tiles_per_image=60",
                                                                  "valid_fraction=0.34"])])


@pytest.fixture
def env(world, monkeypatch, tmp_path):
    return use_world(monkeypatch, world, tmp_path)


@pytest.mark.parametrize("scale, frames", [(4, 1), (2, 5), (1, 1)])
@pytest.mark.unit
def test_rcan_any_size(scale, frames):
    net = build_model({"arch": "rcan", "scale": scale, "frames": frames, "features": 8, "groups": 1}).eval()
    with torch.no_grad():
        out = net(torch.rand(2, frames, 23, 17))
    assert out.shape == (2, 1, 23 * scale, 17 * scale)


@pytest.mark.unit
def test_rcan_output_does_not_depend_on_the_inference_tiles():
    """No batch norm and no global average (RCAN's channel attention averages a local window):
    whole-image inference and tiles of 32 or 48 LR px give the same HR image. (With RCAN's global
    average the difference is 1e-2 of the residual; here it is 1e-5.)"""
    torch.manual_seed(0)
    net = build_model({"arch": "rcan", "scale": 4}).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(1.5)  # untrained weights, grown until the residual over bilinear is large
    meta = {"model": net.config.to_dict(), "normalization": {"percentile_low": 2, "percentile_high": 99.8}}
    image = ndimage.gaussian_filter(np.random.default_rng(0).gamma(2, 50, (120, 104)), 1.5).astype(np.float32)
    out = {t: SuperResolver(net=net, meta=meta, device=torch.device("cpu"), tile=t, overlap=min(16, t // 2))
           .predict_image(image) for t in (32, 48, 128)}
    bilinear = torch.nn.functional.interpolate(torch.from_numpy(image)[None, None], scale_factor=4,
                                               mode="bilinear").numpy()[0, 0]
    residual = np.std(out[128] - bilinear)
    assert residual > 10  # the network matters
    assert max(np.abs(out[t] - out[128]).max() for t in (32, 48)) < 1e-4 * residual


@pytest.mark.unit
def test_every_architecture_has_its_flags_and_refuses_the_others():
    flags = config.model_flags()
    for arch in ARCHITECTURES.values():
        cfg = arch.config()
        assert model_config(cfg.to_dict()) == cfg  # what a model folder saves rebuilds it
        for name in flags:
            if hasattr(cfg, name):
                assert arch.name in flags[name]["defaults"]
    cfg = config.from_args(config.TrainConfig, _parse(["--dataset", "d", *TINY_RCAN]))
    assert cfg.model == model_config({"arch": "rcan", "features": 16, "groups": 1, "blocks": 2})
    cfg = config.from_args(config.TrainConfig, _parse(["--dataset", "d", "--model-encoder", "resnet18"]))
    assert cfg.model.arch == "unet" and cfg.model.encoder == "resnet18" and cfg.model.depth == 3
    with pytest.raises(config.BphoError, match="--model-blocks is not a setting of architecture unet"):
        config.from_args(config.TrainConfig, _parse(["--dataset", "d", "--model-blocks", "2"]))


def _parse(argv):
    import argparse

    parser = argparse.ArgumentParser()
    config.add_fields(parser, config.TrainConfig)
    return parser.parse_args(argv)


@pytest.mark.e2e
def test_rcan_trains_predicts_and_exports_through_the_same_paths(env, tmp_path):
    """`bpho train --arch rcan`: logged with its architecture, registered, loaded by name;
    `bpho predict` and the BioImage Model Zoo package (its architecture file rcan.py) give what
    the loaded model gives."""
    proc = run_bpho("train", "--dataset", "tiny", "--epochs", "3", "--batch-size", "8", "--model-name", "tiny-rcan",
                    *TINY_RCAN)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = download_model("models:/tiny-rcan/latest")
    meta = json.loads((folder / "bpho_model.json").read_text())
    assert meta["model"]["arch"] == "rcan" and meta["model"]["features"] == 16
    model = load_model(folder, device="cpu")
    assert type(model.net).__name__ == "RCAN"
    assert meta["validation"]["valid_psnr"] > meta["validation"]["bilinear_psnr"], meta["validation"]

    lr = tmp_path / "lr.tif"
    image = np.random.default_rng(1).gamma(2, 100, (40, 36)).astype(np.float32)
    tifffile.imwrite(lr, image)
    proc = run_bpho("predict", "--model", "models:/tiny-rcan/latest", lr, "--out", tmp_path / "hr")
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = tifffile.imread(next((tmp_path / "hr").glob("*.tif")))
    np.testing.assert_allclose(written, model.predict_image(image), atol=1e-3 * float(np.ptp(written)))

    out = tmp_path / "tiny-rcan.zip"
    proc = run_bpho("export", "--model", "models:/tiny-rcan/latest", "--format", "bioimageio", "--out", out, "--no-log")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test_model passed" in proc.stdout
    package = zipfile.ZipFile(out)
    assert "rcan.py" in package.namelist() and "class RCAN" in package.read("rcan.py").decode()
    rdf = package.read("rdf.yaml").decode()
    assert "callable: rcan" in rdf and "RCAN" in rdf and "10.1007/978-3-030-01234-2_18" in rdf


def test_unknown_architecture_or_setting_is_one_line(env):
    proc = run_bpho("train", "--dataset", "tiny", "--arch", "vgg")  # argparse names the choices
    assert proc.returncode == 2 and "invalid choice: 'vgg'" in proc.stderr and "'rcan'" in proc.stderr
    assert_one_line_error(run_bpho("train", "--dataset", "tiny", "--arch", "rcan", "--model-window", "4"),
                          "rcan window=4: use an odd number")
