"""Degradation models on flat fields and real demo CZI; synthesize_lowres datasets; the
degradation study and the real-vs-synthetic report on a real MLflow server."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from mlflow import MlflowClient

from bpho import datasets, io
from bpho.degrade import classic, fitted, physical
from bpho.degrade.fitted import RegisteredPair
from bpho.errors import BphoError
from bpho import synthesize as sy
from bpho import tune
from bpho.config import DegradationReportConfig, DegradationStudyConfig

from conftest import assert_one_line_error, build_world, run_bpho


@pytest.mark.parametrize("dtype", [np.float32, np.uint16])
@pytest.mark.parametrize("model, params", [(classic, classic.ClassicParams(scale=4)),
                                           (classic, classic.ClassicParams(scale=2, downsample="bilinear")),
                                           (physical, physical.PhysicalParams(scale=4)),
                                           (physical, physical.PhysicalParams(scale=3, psf="airy"))])
@pytest.mark.unit
def test_output_shape_and_type(model, params, dtype):
    hr = (np.random.default_rng(0).random((2, 48, 60)) * 1000 + 100).astype(dtype)
    for x in (hr, hr[0]):
        lr = model.degrade(x, params, np.random.default_rng(1), hr_pixel_um=0.035)
        assert lr.shape == (*x.shape[:-2], 48 // params.scale, 60 // params.scale)
        assert lr.dtype == (np.uint16 if dtype == np.uint16 else np.float32)


@pytest.mark.unit
def test_classic_flat_field_mean_and_poisson_gaussian_variance():
    c, std, peak, s = 500.0, 0.03, 40.0, 4
    p = classic.ClassicParams(scale=s, gauss_std=(std, std), poisson_peak=(peak, peak), level=c)
    lr = classic.degrade(np.full((1024, 1024), c), p, np.random.default_rng(0))
    assert lr.mean() == pytest.approx(c, rel=2e-3)
    expected = (c ** 2 * std ** 2 + c ** 2 / peak) / s ** 2  # Gaussian + Poisson, averaged over s x s
    assert lr.var() == pytest.approx(expected, rel=0.05)
    ranged = classic.degrade(np.full((64, 64), c), replace(p, gauss_std=(0.0, 0.5), poisson_peak=(0.0, 0.0)),
                             np.random.default_rng(3))
    assert 0 < ranged.std() < 0.5 * c / s  # the amount is drawn from the range
    sp = classic.degrade(np.full((512, 512), c), replace(p, gauss_std=(0, 0), poisson_peak=(0, 0), salt_pepper=0.1,
                                                         scale=1), np.random.default_rng(0))
    assert np.mean(sp == 0) == pytest.approx(0.05, abs=0.01) and np.mean(sp == c) > 0.9


@pytest.mark.unit
def test_physical_flat_field_follows_its_detector_model():
    p = physical.PhysicalParams(scale=4, photons=50.0, background=5.0, gain=2.5, offset=100.0, read_noise=3.0)
    lr = physical.degrade(np.full((1024, 1024), 2000.0, np.float32), p, np.random.default_rng(0), hr_pixel_um=0.035)
    mean = p.offset + p.gain * (p.photons + p.background)
    assert lr.mean() == pytest.approx(mean, rel=2e-3)
    assert lr.var() == pytest.approx(p.gain ** 2 * (p.photons + p.background) + p.read_noise ** 2 + 1 / 12, rel=0.05)
    assert np.all(lr == np.round(lr))  # quantised
    low = physical.degrade(np.full((64, 64), 10.0), replace(p, bit_depth=8, photons=500), np.random.default_rng(0),
                           hr_pixel_um=0.035)
    assert low.max() == 255  # clipped to the detector's bit depth
    with pytest.raises(BphoError, match="pixel size"):
        physical.degrade(np.ones((8, 8)), p)


@pytest.mark.parametrize("psf", ["gaussian", "airy"])
@pytest.mark.unit
def test_psf_fwhm_in_nanometres(psf):
    point = np.zeros((1, 129, 129))
    point[0, 64, 64] = 1.0
    out = physical.blur(point, fwhm_nm=350.0, pixel_nm=35.0, kind=psf)[0, 64]
    above = np.flatnonzero(out >= out.max() / 2)
    # the half-maximum width on the pixel grid: 10 pixels = 350 nm, within a pixel
    assert abs((above[-1] - above[0] + 1) - 10) <= 1
    assert physical.blur(point, 350.0, 35.0, psf).sum() == pytest.approx(1.0, rel=1e-3)  # photons kept


@pytest.mark.unit
def test_movie_frames_get_independent_noise():
    hr = np.repeat(np.random.default_rng(0).random((1, 64, 64)) * 100 + 50, 4, axis=0)
    lr = physical.degrade(hr, physical.PhysicalParams(scale=2), np.random.default_rng(0), hr_pixel_um=0.05)
    mean = physical.degrade(hr, physical.PhysicalParams(scale=2), hr_pixel_um=0.05, expected=True)
    noise = (lr - mean).reshape(4, -1)
    assert np.allclose(mean[0], mean[3])  # the same degradation per frame
    assert abs(np.corrcoef(noise)[0, 1]) < 0.05 and noise[0].std() > 1  # noise drawn anew per frame


def test_fitted_recovers_known_parameters_from_pairs(demo):
    truth = physical.PhysicalParams(scale=4, psf_fwhm_nm=180.0, photons=80.0, gain=1.5, offset=90.0, read_noise=2.5,
                                    hr_offset=100.0)  # the demo HR camera offset
    pairs = []
    for i, path in enumerate(sorted((demo / "paired" / "hr").glob("*.czi")) * 2):  # two LR acquisitions each
        img = io.read(path)
        hr = img.data[0, 0, 0]
        lr = physical.degrade(hr, truth, np.random.default_rng(i), hr_pixel_um=img.pixel_size[2])
        pairs.append(RegisteredPair(f"{path.stem}_{i}", lr, hr, img.pixel_size[2]))
    fit = fitted.fit(pairs, scale=4)
    got = fit.params
    assert got.psf_fwhm_nm == pytest.approx(truth.psf_fwhm_nm, rel=0.1)
    assert got.gain == pytest.approx(truth.gain, rel=0.15)
    assert got.photons == pytest.approx(truth.photons, rel=0.15)
    lr_all = np.concatenate([p.lr.ravel() for p in pairs]).astype(float)
    for level in np.percentile(lr_all, (50, 99)):
        true_std = np.sqrt(truth.gain * (level - truth.offset) + truth.read_noise ** 2)
        assert fit.noise_std(level) == pytest.approx(true_std, rel=0.1)
    assert fit.pairs == [p.name for p in pairs] and fit.explained > 0.9


@pytest.fixture(scope="module")
def world(demo, tmp_path_factory):
    return build_world(demo, tmp_path_factory.mktemp("synth-root"), sources=[
        ("paired", "pairs", "paired"), ("hr_only", "hr_only", "hr"), ("movie", "demo_movie", "movie")])


@pytest.fixture
def env(world, monkeypatch, tracked):
    monkeypatch.setenv("BPHO_ROOT", str(world))
    return world


def test_synthesize_cli_builds_a_dataset_that_names_its_degradation(env, tracked):
    proc = run_bpho("synthesize", "--datasource", "hr_only", "--degradation", "physical", "--dataset", "syn_phys",
                    "--set", "photons=40", "--set", "tile_sizes=64", "--set", "tiles_per_image=6", "--force", check=True)
    assert "syn_phys" in proc.stdout and "photons=40.0" in proc.stdout
    ds = datasets.open("syn_phys")
    m = ds.manifest
    assert m["degradation"]["name"] == "physical" and m["degradation"]["parameters"]["photons"] == 40.0
    assert m["datasource"]["name"] == "hr_only" and m["parameters"]["register"] is False
    assert {r["lr"] for r in m["sources"]} == {"synthetic"}
    lr, hr = ds.tiles(64, "train")
    assert lr.shape[1:] == (1, 16, 16) and hr.shape[1:] == (1, 64, 64) and len(lr) > 0
    # lineage in MLflow: the build's run carries the degradation and its parameters
    client = MlflowClient(tracked)
    run = client.search_runs([client.get_experiment_by_name("bpho-datasets").experiment_id],
                             filter_string="tags.`bpho.dataset` = 'syn_phys'")[0]
    assert run.data.tags["bpho.degradation"] == "physical" and run.data.params["degradation.photons"] == "40.0"
    # the same inputs give the same digest; another degradation another digest
    again = sy.synthesize("hr_only", sy.degradation("physical", {"photons": 40.0}), "syn_phys2",
                          recipe_settings=["tile_sizes=64", "tiles_per_image=6"], progress=False, track=False)
    assert again.digest == ds.digest
    other = sy.synthesize("hr_only", sy.degradation("classic"), "syn_classic",
                          recipe_settings=["tile_sizes=64", "tiles_per_image=6"], progress=False, track=False)
    assert other.digest != ds.digest and other.manifest["degradation"]["name"] == "classic"


def test_synthesize_fitted_records_its_pairs_and_movies_keep_frames(env):
    deg = sy.degradation("fitted", fit_on="pairs")
    ds = sy.synthesize("pairs", deg, "syn_fit", recipe_settings=["tile_sizes=64", "tiles_per_image=4"],
                       progress=False, track=False)
    fitted_on = ds.manifest["degradation"]["fitted_on"]
    train_stems = {r["source"] for r in datasets.open("syn_fit").manifest["sources"] if r["split"] == "train"}
    assert fitted_on["datasource"] == "pairs" and set(fitted_on["pairs"]) == train_stems  # never the held-out pairs
    assert 100 < ds.manifest["degradation"]["parameters"]["psf_fwhm_nm"] < 350
    movie = sy.synthesize("demo_movie", sy.degradation("classic", {"scale": 4}), "syn_movie",
                          recipe_settings=["tile_sizes=32", "tiles_per_image=2", "valid_fraction=0"],
                          progress=False, track=False)
    lr, hr = movie.tiles(32, "train")
    assert lr.shape[1:] == (5, 8, 8) and hr.shape[1:] == (1, 32, 32)


def test_synthesize_refuses_bad_input_in_one_line(env):
    assert_one_line_error(run_bpho("synthesize", "--datasource", "hr_only", "--degradation", "physical",
                                   "--dataset", "x", "--set", "wavelength=5"), "wavelength")
    assert_one_line_error(run_bpho("synthesize", "--datasource", "hr_only", "--degradation", "fitted",
                                   "--dataset", "x"), "--fit-on")
    assert_one_line_error(run_bpho("synthesize", "--datasource", "hr_only", "--degradation", "fitted",
                                   "--dataset", "x", "--fit-on", "hr_only"), "hr_only", "no LR/HR pairs")
    assert_one_line_error(run_bpho("synthesize", "--datasource", "hr_only", "--degradation", "physical",
                                   "--dataset", "x", "--set", "photons=abc"), "photons")


def test_degradation_study_logs_nested_trials(env, tracked):
    result = tune.tune_degradation(DegradationStudyConfig("pairs", "physical", trials=4), progress=False)
    client = MlflowClient(tracked)
    parent = client.get_run(result.parent_run_id)
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{result.parent_run_id}'")
    assert len(children) == 4
    assert all({"pixel", "noise", "spectrum", "total"} <= set(r.data.metrics) for r in children)
    assert min(r.data.metrics["total"] for r in children) == pytest.approx(result.best_value)
    assert parent.data.metrics["best_total"] == pytest.approx(result.best_value)
    assert "study/best_degradation.json" in {f.path for f in client.list_artifacts(parent.info.run_id, "study")}
    # the HR's dark level is measured, as fitted measures it, not searched; gain is not searched
    fit = sy.degradation("fitted", fit_on="pairs")
    assert result.best_params["hr_offset"] == pytest.approx(fit.params.hr_offset, rel=0.05) and fit.params.hr_offset > 50
    assert {c.data.params["degradation.gain"] for c in children} == {"2.0"}
    # the distance prefers the truth: the fitted model is closer to the real LR than a badly blurred one
    pairs = sy.registered_pairs("pairs", split="train")
    blurry = sy.Degradation("physical", replace(fit.params, psf_fwhm_nm=600.0))
    noiseless = sy.Degradation("physical", replace(fit.params, photons=5000.0, read_noise=0.0))
    close = tune.similarity(fit, pairs)
    assert close["pixel"] < tune.similarity(blurry, pairs)["pixel"]
    assert close["noise"] < tune.similarity(noiseless, pairs)["noise"]


def test_report_trains_on_real_and_synthetic_pairs(env, tracked, tmp_path):
    cfg = DegradationReportConfig("pairs", epochs=1, tile_size=64, recipe_settings=("tile_sizes=64", "tiles_per_image=8"),
                                  model={"encoder": "resnet18", "decoder_widths": (32, 16, 16, 8, 8)}, batch_size=4, trials=3,
                                  out=str(tmp_path / "report"))
    result = tune.report(cfg, progress=False)
    assert [r.training_pairs for r in result.rows] == ["real", "classic", "physical", "fitted"]
    assert all(np.isfinite(r.psnr) and np.isfinite(r.gain_psnr) for r in result.rows)
    assert (tmp_path / "report" / "report.png").stat().st_size > 0
    # what each degradation misses of the held-out real LR: distances and a residual/spectrum figure
    assert set(result.distances) == {"classic", "physical", "fitted"}
    assert all(np.isfinite(list(d.values())).all() and d["total"] > 0 for d in result.distances.values())
    assert (tmp_path / "report" / "missed.png").stat().st_size > 0
    table = (tmp_path / "report" / "report.txt").read_text()
    assert "fitted" in table and "(bicubic)" in table and "misses" in table
    client = MlflowClient(tracked)
    assert {"report/report.json", "report/report.png", "report/report.txt", "report/missed.png"} <= {
        f.path for f in client.list_artifacts(result.run_id, "report")}
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert saved["rows"][3]["degradation"]["fitted_on"]["datasource"] == "pairs"


@pytest.mark.e2e
def test_mlflow_run_synthesize_lowres_entry_point(env, tracked, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(repo), "-e", "synthesize_lowres", "--env-manager", "local",
         "-P", "datasource=hr_only", "-P", "degradation=classic", "-P", "dataset=syn_entry",
         "-P", "set=tile_sizes=64 tiles_per_image=2 downsample=bilinear", "-P", "force=true"],
        capture_output=True, text=True, cwd=tmp_path,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = datasets.open("syn_entry").manifest
    assert m["degradation"]["parameters"]["downsample"] == "bilinear" and m["parameters"]["tile_sizes"] == [64]
    client = MlflowClient(tracked)
    run = client.search_runs([client.get_experiment_by_name("Default").experiment_id],
                             filter_string="params.dataset = 'syn_entry'")[0]
    assert run.data.tags["bpho.degradation"] == "classic" and run.data.params["degradation.downsample"] == "bilinear"
