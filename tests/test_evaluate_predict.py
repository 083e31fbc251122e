"""Metrics against reference implementations, FRC, evaluate on demo pairs, predict on real CZI movies."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import zipfile
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from mlflow import MlflowClient
from pylibCZIrw import czi as pyczi
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from bpho import datasets, io, metrics
from bpho.datasets import builder
from bpho.errors import BphoError, BphoWarning
from bpho.inference import load_model, pick_device, with_index
from bpho.predict import ahead
from bpho.tracking import download_model
from bpho.config import TrainConfig
from bpho.train import train

from conftest import assert_one_line_error, add_demo, run_bpho

REPO = Path(__file__).resolve().parents[1]
NET = dict(model={"encoder": "resnet18", "decoder_widths": (32, 16, 16, 8, 8)}, batch_size=8)


@pytest.fixture(scope="module")
def trained(demo, mlflow_server, tmp_path_factory):
    """A BPHO_ROOT with demo datasets and three small models registered on the real server. `ev`'s three
    fields are split three ways: one to train on, one to validate on (it chooses the epoch), one to test on;
    `ev2` validates on two of them."""
    root = tmp_path_factory.mktemp("eval-root")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BPHO_ROOT", str(root))
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_server)
        add_demo(demo, root, "paired", "pairs", "paired")
        add_demo(demo, root, "movie", "demo_movie", "movie")
        builder.make("paired_001", datasource="pairs", name="ev", progress=False, track=False,
                     settings=["tile_sizes=64", "tiles_per_image=40", "valid_fraction=0.34", "test_fraction=0.34"])
        builder.make("movie_001", name="ev_movie", progress=False, track=False,
                     settings=["tile_sizes=32", "tiles_per_image=4", "valid_fraction=0"])
        builder.make("paired_001", datasource="pairs", name="ev2", progress=False, track=False,
                     settings=["tile_sizes=64", "tiles_per_image=16", "valid_fraction=0.67"])
        single = train(TrainConfig(dataset="ev", epochs=2, model_name="ev-single", **NET), progress=False)
        movie = train(TrainConfig(dataset="ev_movie", epochs=1, model_name="ev-movie", **NET), progress=False)
        two = train(TrainConfig(dataset="ev2", epochs=1, model_name="ev-two", **NET), progress=False)
    return {"root": root, "server": mlflow_server, "single": single, "movie": movie, "two": two}


@pytest.fixture
def env(trained, monkeypatch):
    monkeypatch.setenv("BPHO_ROOT", str(trained["root"]))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained["server"])
    return trained


@pytest.mark.unit
def test_metrics_agree_with_scikit_image(demo):
    hr = io.read(demo / "paired/hr/field_000.czi").data[0, 0, 0].astype(float)
    rng = np.random.default_rng(0)
    for pred in (ndimage.gaussian_filter(hr, 2) + rng.normal(0, 5, hr.shape), hr + rng.normal(0, 20, hr.shape), hr[::-1]):
        m = metrics.compare(pred, hr)
        p, t = metrics.prepare(pred, hr)
        # stated tolerance: 1e-3 dB PSNR, 1e-4 SSIM (same inputs, same Gaussian window)
        assert m["psnr"] == pytest.approx(peak_signal_noise_ratio(t, p, data_range=1), abs=1e-3)
        ref = structural_similarity(t, p, data_range=1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        assert m["ssim"] == pytest.approx(ref, abs=1e-4)
        assert 0 <= m["ms_ssim"] <= 1 and m["nrmse"] == pytest.approx(np.sqrt(np.mean((p - t) ** 2)))
    assert np.isnan(metrics.compare(hr[:100, :100], hr[:100, :100])["ms_ssim"])  # too small for 5 scales


@pytest.mark.unit
def test_intensity_shift_is_not_a_resolution_gain(demo):
    hr = io.read(demo / "paired/hr/field_000.czi").data[0, 0, 0].astype(float)
    same = metrics.compare(3.0 * hr + 500, hr)
    blurred = metrics.compare(ndimage.gaussian_filter(hr, 3), hr)
    assert same["psnr"] > 60 and same["ssim"] > 0.999
    assert blurred["psnr"] < same["psnr"] - 20


@pytest.mark.unit
def test_frc_finite_and_worse_after_blurring():
    from bpho.demo import AIRYSCAN, blur_and_bin, random_tubes, render_scene

    rng = np.random.default_rng(3)
    fine = AIRYSCAN.pixel_um / 2
    scene = render_scene(random_tubes(rng, 512 * fine), (512, 512), fine, rng)
    obj = blur_and_bin(scene, fine, AIRYSCAN)  # the noise-free image; each acquisition adds its own noise
    obj = 30 * obj / np.percentile(obj, 99.9)
    sharp = metrics.frc(rng.poisson(obj), rng.poisson(obj))
    soft_obj = ndimage.gaussian_filter(obj, 4)
    soft = metrics.frc(rng.poisson(soft_obj), rng.poisson(soft_obj))
    assert sharp.resolution_px is not None and soft.resolution_px is not None
    assert soft.resolution_px > 1.3 * sharp.resolution_px
    assert sharp.resolution_nm(0.035) == pytest.approx(sharp.resolution_px * 35)
    single = metrics.frc_single(rng.poisson(obj).astype(float))
    assert single.resolution_px is not None and np.isfinite(single.curve).all()


def _named(client, experiment_id: str, model: str, split: str):
    runs = client.search_runs([experiment_id], filter_string=f"tags.`bpho.model_uri` = '{model}' and "
                                                             f"tags.`bpho.evaluated_split` = '{split}'")
    assert len(runs) == 1, [r.data.tags for r in runs]
    return runs[0]


def test_evaluate_logs_table_figures_and_links(env, tmp_path):
    single = env["single"]
    splits = {r["source"]: r["split"] for r in datasets.open("ev").manifest["sources"]}
    test, valid = ([k for k, v in splits.items() if v == s] for s in ("test", "valid"))
    assert test and valid and not set(test) & set(valid)
    out = tmp_path / "eval"
    proc = run_bpho("evaluate", "--model", "models:/ev-single/latest", "--dataset", "ev", "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "gain over bicubic, PSNR" in proc.stdout
    # by default the test images, which neither training nor the epoch choice saw, and it says so
    assert (f"scored {len(test)} test image(s) of dataset ev ({', '.join(test)}); neither training nor any "
            "choice (epoch selection) saw them") in proc.stdout
    with open(out / "evaluation.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["image"] for r in rows} == set(test)
    assert {r["method"] for r in rows} == {"model", "nearest", "bilinear", "bicubic"}
    assert all(np.isfinite(float(r["psnr"])) and float(r["frc_nm"]) > 0 for r in rows)
    assert all(float(r["frc_nm"]) == pytest.approx(float(r["frc_px"]) * 35, rel=1e-6) for r in rows)  # 0.035 um HR px
    pngs = {p.name for p in out.glob("*.png")}
    assert {"crops_00.png", "error_00.png", "frc_00.png"} <= pngs
    client = MlflowClient(env["server"], registry_uri=env["server"])
    exp = client.get_experiment_by_name("bpho-evaluate")
    run = _named(client, exp.experiment_id, "models:/ev-single/latest", "test")
    assert run.data.tags["bpho.model_run_id"] == single.run_id
    assert run.data.tags["bpho.dataset_digest"] == datasets.open("ev").digest
    assert run.data.tags["bpho.evaluated_images"] == ",".join(test) and run.data.tags["bpho.selection_used"] == "false"
    assert run.data.params["evaluated_split"] == "test" and run.data.tags["bpho.trained_on_scored"] == "0"
    assert "model_psnr" in run.data.metrics and "model_frc_px" in run.data.metrics
    if len(test) == 1:  # no interval over one image: said, not faked
        assert "95% CI undefined with one image" in proc.stdout and "gain_psnr_ci95_low" not in run.data.metrics
    else:
        assert "gain_psnr_ci95_low" in run.data.metrics
    # --split valid: the images training chose its epoch on, said to be
    proc = run_bpho("evaluate", "--model", "models:/ev-single/latest", "--dataset", "ev", "--split", "valid",
                    "--out", tmp_path / "eval_valid")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (f"scored {len(valid)} validation image(s) of dataset ev ({', '.join(valid)}); {len(valid)} of them chose "
            "the model's epoch") in proc.stdout
    run = _named(client, exp.experiment_id, "models:/ev-single/latest", "valid")
    assert run.data.tags["bpho.selection_used"] == "true" and run.data.params["evaluated_split"] == "valid"
    assert run.data.tags["bpho.evaluated_images"] == ",".join(valid)
    # what training logged and registered is what evaluate measures on the same images
    trained = client.get_run(single.run_id)
    history = {m.step: m.value for m in client.get_metric_history(single.run_id, "valid_psnr")}
    best = int(single.metrics["best_epoch"])
    assert best == max(history, key=history.get)
    assert run.data.metrics["model_psnr"] == pytest.approx(history[best], abs=0.05)
    assert trained.data.metrics["best_valid_psnr"] == pytest.approx(history[best])
    assert run.data.metrics["bicubic_psnr"] == pytest.approx(trained.data.metrics["bicubic_psnr"], abs=1e-6)
    assert trained.data.tags["bpho.best_epoch"].startswith(f"{best + 1} of 2")
    for r in (run, trained):  # the run pages say the metrics' units
        assert "| `*psnr*`, `*psnr_gain*` | dB" in r.data.tags["mlflow.note.content"]
    assert {"evaluation.csv", "crops_00.png", "frc_00.png"} <= {a.path for a in client.list_artifacts(run.info.run_id)}


def _same_rows(a: list, b: list) -> bool:
    """Equal score rows (NaN equal to NaN: MS-SSIM is undefined on small images)."""
    def same(x, y):
        return x == y or (isinstance(x, float) and isinstance(y, float) and np.isnan(x) and np.isnan(y))
    return len(a) == len(b) and all(r.keys() == q.keys() and all(same(r[k], q[k]) for k in r) for r, q in zip(a, b))


def test_baselines_are_scored_once_per_dataset_and_read_back(env, monkeypatch):
    """Training's start scored the bicubic/bilinear/nearest baselines of `ev`'s validation images and
    kept them under BPHO_ROOT, keyed by the dataset digest and the scoring protocol; the next start
    reads them back (nothing scored again), and they equal a fresh computation."""
    import json

    from bpho import evaluate

    ds = datasets.open("ev")
    pairs = ds.validation_images()
    path = evaluate.baselines_cache_path(ds, evaluate.baseline_protocol(pairs, 4))
    assert path.parent == Path(env["root"]) / "cache" / "baselines" and path.name.startswith(ds.digest)
    assert path.is_file()  # written by the fixture's training of ev-single
    fresh = evaluate.score_baselines(pairs, 4)
    cached = json.loads(path.read_text())
    assert cached["dataset_digest"] == ds.digest and _same_rows(cached["rows"], fresh)
    calls = []
    real = evaluate.score_baselines
    monkeypatch.setattr(evaluate, "score_baselines", lambda *a: calls.append(a) or real(*a))
    written = path.stat().st_mtime_ns
    assert _same_rows(evaluate.dataset_baselines(ds, pairs, 4), fresh)
    assert calls == [] and path.stat().st_mtime_ns == written  # read back, not scored or written again
    # another protocol (here: other images) is another entry; an unreadable entry is scored again
    assert evaluate.baselines_cache_path(ds, evaluate.baseline_protocol(ds.test_images(), 4)) != path
    path.write_text("{half a file")
    assert _same_rows(evaluate.dataset_baselines(ds, pairs, 4), fresh) and len(calls) == 1
    assert _same_rows(json.loads(path.read_text())["rows"], fresh)
    evaluate.dataset_baselines(ds, pairs, 4)
    assert len(calls) == 1


def _write_movie(path: Path, shape, pixel_um=0.14, scenes=1) -> np.ndarray:
    """A CZI of i.i.d. Poisson noise, `shape` (T, C, Z, Y, X) per scene; returns (scene, T, C, Z, Y, X)."""
    rng = np.random.default_rng(5)
    written = rng.poisson(40, (scenes, *shape)).astype(np.uint16) + 100
    with pyczi.create_czi(str(path)) as w:
        for s in range(scenes):
            for t, c, z in np.ndindex(*shape[:3]):
                w.write(written[s, t, c, z], plane={"T": t, "C": c, "Z": z}, scene=s, location=(s * 10_000, 0))
        w.write_metadata(scale_x=pixel_um * 1e-6, scale_y=pixel_um * 1e-6, scale_z=0.5e-6)
    return written


def _each_plane_alone(model, lr: np.ndarray) -> np.ndarray:
    """(T, C, Z, Y, X) LR -> the HR each plane gets when it is predicted alone: frame t of one (C, Z)
    series with its own frame window (t-2..t+2 mirrored at the ends for a 5-frame model), scaled
    by that series' percentiles. Anything mixed up (time points, channels, z-planes) differs."""
    p = model.meta["normalization"]
    half = model.frames // 2
    out = np.zeros((*lr.shape[:3], lr.shape[3] * model.scale, lr.shape[4] * model.scale), np.float32)
    for c, z in np.ndindex(*lr.shape[1:3]):
        series = lr[:, c, z].astype(np.float32)
        lo, hi = np.percentile(series, (p["percentile_low"], p["percentile_high"]))
        padded = np.pad((series - lo) / (hi - lo), ((half, half), (0, 0), (0, 0)), mode="reflect")
        for t in range(lr.shape[0]):
            out[t, c, z] = model.predict_normalized(padded[t:t + model.frames], lo, hi - lo)
    return out


@pytest.mark.parametrize("model", ["ev-single", "ev-movie"])
def test_predict_real_czi_movie_to_imagej_tiff(env, tmp_path, model):
    movie = tmp_path / "cell.czi"
    written = _write_movie(movie, (7, 2, 2, 37, 45))
    out = tmp_path / "out"
    proc = run_bpho("predict", "--model", f"models:/{model}/latest", movie, "--out", out, "--tile", "16",
                    "--overlap", "4", "--channels", "all")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = out / "cell.tif"
    img = io.read(result)
    assert img.shape == (7, 2, 2, 148, 180) and img.data.dtype == np.float32
    assert img.pixel_size == pytest.approx((0.5, 0.035, 0.035))
    # every plane is the prediction of that plane (with its frame window), in its place
    want = _each_plane_alone(load_model(download_model(f"models:/{model}/latest"), device="cpu", tile=16, overlap=4),
                             written[0])
    np.testing.assert_allclose(img.data, want, rtol=0, atol=1e-4 * float(np.ptp(want)))
    assert (out / "cell.png").read_bytes().startswith(b"\x89PNG")
    with tifffile.TiffFile(result) as tf:
        meta = tf.imagej_metadata
        assert (meta["frames"], meta["channels"], meta["slices"]) == (7, 2, 2) and meta["hyperstack"]


def test_predict_multiscene_czi_one_file_per_scene(env, tmp_path):
    path = tmp_path / "plate.czi"
    written = _write_movie(path, (1, 1, 1, 24, 30), scenes=2)
    proc = run_bpho("predict", "--model", "models:/ev-single/latest", path, "--out", tmp_path / "o")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "o").glob("*.tif")) == ["plate_s0.tif", "plate_s1.tif"]
    model = load_model(download_model("models:/ev-single/latest"), device="cpu")
    for scene in (0, 1):  # each file holds its own scene's prediction
        img = io.read(tmp_path / f"o/plate_s{scene}.tif")
        assert img.shape == (1, 1, 1, 96, 120)
        want = _each_plane_alone(model, written[scene])
        np.testing.assert_allclose(img.data, want, rtol=0, atol=1e-4 * float(np.ptp(want)))


def test_blending_leaves_no_seams(env, demo):
    """LR tiles of 24 px with 8 px overlap (four tiles a side on a 64 px image) give the whole-image picture."""
    folder = download_model("models:/ev-single/latest")
    lr = io.read(demo / "paired/lr/field_002.czi").data[0, 0, 0]
    whole = load_model(folder, device="cpu", tile=512).predict(lr)
    tiled = load_model(folder, device="cpu", tile=24, overlap=8).predict(lr)
    assert tiled.shape == whole.shape == (256, 256)
    scale = np.percentile(whole, 99) - np.percentile(whole, 1)
    assert np.abs(tiled - whole).mean() < 0.01 * scale
    assert np.corrcoef(tiled.ravel(), whole.ravel())[0, 1] > 0.995
    # a seam is a few rows or columns: the mean dilutes it, the maximum over the image (every tile boundary
    # included) does not. Measured: 7e-4 of the range; 0.025 with no context around the tiles (untrained net),
    # which the mean (< 0.01) and the correlation (> 0.995) above both let through
    assert np.abs(tiled - whole).max() < 0.005 * scale


def test_bad_model_uri_and_unreadable_input(env, tmp_path):
    assert_one_line_error(run_bpho("evaluate", "--model", "models:/ev-movie/latest", "--dataset", "ev_movie", "--split",
                                   "test"), "ev_movie", "no test images", "--split valid")
    assert_one_line_error(run_bpho("evaluate", "--model", "models:/no-such-model/1", "--dataset", "ev"),
                          "models:/no-such-model/1", "not found")
    bad = tmp_path / "notes.czi"
    bad.write_text("not an image")
    good = tmp_path / "good.czi"
    _write_movie(good, (1, 1, 1, 20, 20))
    out = tmp_path / "out"
    assert_one_line_error(run_bpho("predict", "--model", "models:/ev-single/latest", good, bad, "--out", out),
                          "notes.czi", "not a CZI file")
    assert not out.exists() or not any(out.iterdir())
    assert_one_line_error(run_bpho("predict", "--model", "runs:/0123456789abcdef/model", good, "--out", out),
                          "not found")


def test_reduced_precision_feeds_the_network_its_own_dtype(env, demo):
    """The input is cast to the network's dtype (the fp16 crash of benchmarks/inference_speed.py):
    bf16 runs on the CPU and stays close to fp32; fp16 asked on a CPU runs fp32 and says so."""
    folder = download_model("models:/ev-single/latest")
    lr = io.read(demo / "paired/lr/field_002.czi").data[0, 0, 0]
    fp32 = load_model(folder, device="cpu").predict(lr)
    bf16 = load_model(folder, device="cpu", precision="bf16")
    assert next(bf16.net.parameters()).dtype == torch.bfloat16
    low = bf16.predict(lr)
    assert low.dtype == np.float32 and low.shape == fp32.shape
    assert np.corrcoef(low.ravel(), fp32.ravel())[0, 1] > 0.99
    with pytest.warns(BphoWarning, match="fp16 inference needs a GPU"):
        assert load_model(folder, device="cpu", precision="fp16").precision == "fp32"
    with pytest.raises(BphoError, match="precision 'fp8'"):
        load_model(folder, device="cpu", precision="fp8")


@pytest.mark.unit
def test_device_index_is_filled_in():
    """CUDA calls such as set_per_process_memory_fraction need an indexed device (tune fit crashed)."""
    assert with_index(torch.device("cpu")) == torch.device("cpu")
    assert with_index(torch.device("cuda", 1)).index == 1
    if torch.cuda.is_available():
        assert with_index(torch.device("cuda")).index == torch.cuda.current_device()
        assert pick_device("cuda").index is not None


@pytest.mark.unit
def test_frames_are_predicted_ahead_of_writing_in_order_and_errors_reach_the_writer():
    assert list(ahead(iter(range(50)))) == list(range(50))

    def broken():
        yield 1
        raise BphoError("frame 2 failed")

    got = []
    with pytest.raises(BphoError, match="frame 2 failed"):
        for item in ahead(broken()):
            got.append(item)
    assert got == [1]
    consumer = ahead(iter(range(10 ** 6)))
    assert next(consumer) == 0
    consumer.close()  # a writer that stops early stops the thread too (no hang)


def test_predict_writes_ome_tiff_with_physical_pixel_sizes(env, tmp_path):
    movie = tmp_path / "cell.czi"
    _write_movie(movie, (2, 2, 1, 24, 30), pixel_um=0.14)
    out = tmp_path / "out"
    proc = run_bpho("predict", "--model", "models:/ev-single/latest", movie, "--out", out, "--format", "ome-tiff",
                    "--tile", "16", "--overlap", "4", "--channels", "all")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = out / "cell.ome.tif"
    assert proc.stdout.split() == [str(result)] and (out / "cell.png").is_file()
    with tifffile.TiffFile(result) as tf:
        assert tf.is_ome and tf.series[0].axes == "TCYX" and tf.series[0].shape == (2, 2, 96, 120)
        pixels = next(e for e in ET.fromstring(tf.ome_metadata).iter() if e.tag.endswith("Pixels"))
        assert float(pixels.get("PhysicalSizeX")) == pytest.approx(0.035) and pixels.get("PhysicalSizeXUnit") == "µm"
        names = [e.get("Name") for e in pixels if e.tag.endswith("Channel")]
        assert names == ["C0", "C1"]
    img = io.read(result)  # bpho's own reader: the same scale back
    assert img.shape == (2, 2, 1, 96, 120) and img.pixel_size[1:] == pytest.approx((0.035, 0.035))


@pytest.mark.unit
def test_gain_interval_is_undefined_for_one_image():
    from bpho.evaluate import bootstrap_ci

    assert bootstrap_ci([1.043]) == (None, None)
    lo, hi = bootstrap_ci([1.0, 2.0, 1.5, 1.2])
    assert lo < 1.425 < hi


def test_export_bioimageio_package_predicts_what_bpho_predicts(env, tmp_path):
    """`bpho export`: a zip that bioimageio.core tests and runs; its axes, normalisation and weights
    are bpho's; run tiled by bioimageio.core it gives bpho's prediction; lineage in README, logged."""
    from bioimageio.core import predict
    from bioimageio.spec import load_model_description

    out = tmp_path / "ev-single.zip"
    proc = run_bpho("export", "--model", "models:/ev-single/latest", "--format", "bioimageio", "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test_model passed" in proc.stdout
    descr = load_model_description(out)
    assert {k for k, v in descr.weights if v is not None} == {"pytorch_state_dict", "torchscript", "onnx"}
    (lr_t,), (hr_t,) = descr.inputs, descr.outputs
    assert [str(a.id) for a in lr_t.axes] == ["batch", "channel", "y", "x"]
    ds = datasets.open("ev")
    scale_range = next(p for p in lr_t.preprocessing if p.id == "scale_range").kwargs
    assert (scale_range.min_percentile, scale_range.max_percentile) == (
        ds.manifest["parameters"]["percentile_low"], ds.manifest["parameters"]["percentile_high"])
    assert all(a.scale == 4 for a in lr_t.axes[2:]) and all(a.scale == 1 and a.size.tensor_id == "lr"
                                                            for a in hr_t.axes[2:])
    readme = zipfile.ZipFile(out).read("README.md").decode()
    assert env["single"].run_id in readme and ds.digest in readme and ds.manifest["datasource"]["digest"] in readme
    assert zipfile.ZipFile(out).read("cover.png").startswith(b"\x89PNG")

    lr = ds.validation_images()[0].lr[0][:, :-3]  # any size: not a multiple of the encoder's stride
    model = load_model(download_model("models:/ev-single/latest"), device="cpu")
    lo, rng = model._normalisation(lr)
    # (test_model, run by the export, already reproduced the test output from the test input.)
    # Tiled with its halo, the package gives what `bpho predict` gives, in its normalised units
    tiled = predict(model=out, inputs={"lr": lr[None, None]}, blocksize_parameter=8).members["hr"].data.values[0, 0]
    want = (model.predict_image(lr) - lo) / rng
    assert tiled.shape == want.shape == (lr.shape[0] * 4, lr.shape[1] * 4)
    halo = hr_t.axes[2].halo
    assert np.abs(tiled - want)[halo:-halo, halo:-halo].max() < 0.01  # tiles placed differently; borders mirrored
    assert np.corrcoef(tiled.ravel(), want.ravel())[0, 1] > 0.999

    client = MlflowClient(env["server"])
    assert [a.path for a in client.list_artifacts(env["single"].run_id, "bioimageio")] == ["bioimageio/ev-single.zip"]
    assert client.get_run(env["single"].run_id).data.tags["bpho.bioimageio"] == "bioimageio/ev-single.zip"


def test_export_multiframe_model_to_folder_and_refusals(env, tmp_path):
    """`mlflow run -e export` (the MLproject entry point): a folder package of the 5-frame model; then
    the refusals of `bpho export`."""
    out = tmp_path / "movie-model"
    proc = _mlflow_run("export", tmp_path, model="models:/ev-movie/latest", out=out)  # the MLproject's entry point
    assert "test_model passed" in proc.stdout
    from bioimageio.spec import load_model_description

    descr = load_model_description(out / "rdf.yaml")
    (lr_t,) = descr.inputs
    assert [(str(a.id), getattr(a, "size", None)) for a in lr_t.axes[:2]] == [("batch", None), ("time", 5)]
    assert np.load(out / "test_input.npy").shape[:2] == (1, 5)
    assert "mirrored at its borders" in (out / "README.md").read_text()  # 16 px LR movie frames, grown to the minimum
    assert_one_line_error(run_bpho("export", "--model", "models:/ev-movie/latest", "--out", out),
                          str(out), "already exists")
    missing = tmp_path / "never.zip"
    assert_one_line_error(run_bpho("export", "--model", "models:/ev-movie/latest", "--out", missing, "--license", "NOPE"),
                          "--license 'NOPE'", "SPDX")
    assert_one_line_error(run_bpho("export", "--model", "models:/no-such-model/1", "--out", missing), "not found")
    assert not missing.exists() and not list(tmp_path.glob(".never*"))


@pytest.mark.integration
def test_several_validation_images_are_averaged_and_given_an_interval(env, tmp_path):
    """`ev2` validates on two whole images: training's valid_psnr is their mean (what `bpho evaluate
    --split valid` measures image by image), and evaluate gives the gain an interval over images."""
    valid = [p.name for p in datasets.open("ev2").validation_images()]
    assert len(valid) == 2
    out = tmp_path / "eval"
    proc = run_bpho("evaluate", "--model", "models:/ev-two/latest", "--dataset", "ev2", "--split", "valid", "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"scored 2 validation image(s) of dataset ev2 ({', '.join(valid)})" in proc.stdout
    with open(out / "evaluation.csv") as fh:
        psnr = {r["image"]: float(r["psnr"]) for r in csv.DictReader(fh) if r["method"] == "model"}
    assert sorted(psnr) == sorted(valid) and abs(psnr[valid[0]] - psnr[valid[1]]) > 0.2, psnr  # the mean is neither
    assert env["two"].metrics["valid_psnr"] == pytest.approx(np.mean(list(psnr.values())), abs=0.05)
    assert {"crops_00.png", "crops_01.png", "frc_01.png"} <= {p.name for p in out.glob("*.png")}
    client = MlflowClient(env["server"], registry_uri=env["server"])
    run = _named(client, client.get_experiment_by_name("bpho-evaluate").experiment_id, "models:/ev-two/latest", "valid")
    m = run.data.metrics
    assert m["gain_psnr_ci95_low"] <= m["gain_psnr_mean"] <= m["gain_psnr_ci95_high"], m
    assert m["gain_psnr_ci95_low"] < m["gain_psnr_ci95_high"] and "95% CI undefined" not in proc.stdout


def _mlflow_run(entry: str, cwd: Path, **params) -> subprocess.CompletedProcess:
    """`mlflow run REPO -e ENTRY --env-manager local -P KEY=VALUE ...`, as a user runs the MLproject."""
    proc = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", entry, "--env-manager", "local",
         *[a for k, v in params.items() for a in ("-P", f"{k}={v}")]],
        capture_output=True, text=True, cwd=cwd,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.e2e
def test_mlflow_run_evaluate_and_predict_entry_points(env, tmp_path):
    """The MLproject's evaluate and predict entry points run `bpho evaluate` and `bpho predict` (export:
    the test below; the other five entry points: test_mlproject, test_datasets, test_degrade, test_train, test_tune)."""
    _mlflow_run("evaluate", tmp_path, model="models:/ev-two/latest", datasource="pairs")
    client = MlflowClient(env["server"])
    # `mlflow run` makes the run (in the experiment it is given, else Default); bpho evaluate logs into it
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string="tags.`bpho.model_uri` = 'models:/ev-two/latest' and "
                                            "tags.`bpho.evaluated_on` = 'datasource:pairs'")
    assert len(runs) == 1, [r.data.tags for r in runs]
    assert runs[0].data.params["images"] == "3" and runs[0].data.tags["bpho.trained_on_scored"] == "1"
    assert np.isfinite(runs[0].data.metrics["model_psnr"])

    inputs = [tmp_path / "a.czi", tmp_path / "b.czi"]
    written = [_write_movie(p, (1, 1, 1, 20 + 4 * i, 24))[0] for i, p in enumerate(inputs)]
    _mlflow_run("predict", tmp_path, model="models:/ev-single/latest", inputs=" ".join(map(str, inputs)),
                out=tmp_path / "out", device="cpu")
    model = load_model(download_model("models:/ev-single/latest"), device="cpu")
    for path, lr in zip(inputs, written):
        got = io.read(tmp_path / "out" / f"{path.stem}.tif").data
        want = _each_plane_alone(model, lr)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * float(np.ptp(want)))
