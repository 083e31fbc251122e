"""Tuning: the fit search measures real training steps; hparams studies on a real MLflow server,
in SQLite and shared by two worker processes through a real PostgreSQL server."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import optuna
import pytest
import torch
from mlflow import MlflowClient

from bpho import tracking, tune

from conftest import assert_one_line_error, build_world, run_bpho, use_world

SMALL_NET = ["--choices", "encoder=resnet18", "--model-decoder-widths", "32,16,16,8,8"]
SPACE = tune.SearchSpace(choices=("encoder=resnet18",), max_batch=8)
SMALL_MODEL = {"encoder": "resnet18", "decoder_widths": (32, 16, 16, 8, 8)}


@pytest.fixture(scope="module")
def world(demo, tmp_path_factory):
    return build_world(demo, tmp_path_factory.mktemp("tune-root"), datasets=[
        ("paired_001", "pairs", "tiny", ["tile_sizes=32,64", "tiles_per_image=24", "valid_fraction=0.34"]),
        # 256 px tiles do not fit in 256 px fields once the registration border is left out
        ("paired_001", "pairs", "no256", ["tile_sizes=32,256", "tiles_per_image=2", "valid_fraction=0.34"])])


@pytest.fixture
def env(world, monkeypatch, tmp_path):
    return use_world(monkeypatch, world, tmp_path)


def test_fit_search_finds_feasible_monotone_batches_on_cpu(env):
    proc = run_bpho("tune", "fit", "--dataset", "tiny", "--memory-gb", "0.3", "--model-encoder", "resnet18", "--model-mode", "pre",
                    "--model-decoder-widths", "64,32,16,16,8", "--max-batch", "128", "--device", "cpu", "--refine",
                    check=True)
    assert "recommended" in proc.stdout and "tiles/s" in proc.stdout
    fit = json.loads(tune.fit_path("tiny").read_text())
    budget = fit["budget_bytes"]
    assert budget == int(0.3 * 2 ** 30)
    rec = {r["tile_size"]: r for r in fit["recommended"]}
    assert set(rec) == {32, 64}
    for size, r in rec.items():
        pts = sorted((p for p in fit["points"] if p["tile_size"] == size), key=lambda p: p["batch_size"])
        assert r["batch_size"], f"nothing fits at tile {size}"
        best = next(p for p in pts if p["batch_size"] == r["batch_size"])
        assert best["fits"] and best["peak_bytes"] <= budget and best["tiles_per_s"] > 0
        # every measured point below the recommendation fits; the search stopped at the first that did not
        assert all(p["fits"] for p in pts if p["batch_size"] <= r["batch_size"])
        assert all(not p["fits"] for p in pts if p["batch_size"] > r["batch_size"])
    assert rec[64]["batch_size"] <= rec[32]["batch_size"]  # a bigger tile never allows a bigger batch
    # --refine bisected to the exact limit: the next batch up was tried and did not fit (or is above the cap)
    for size, r in rec.items():
        cap = 128 if size == 32 else rec[32]["batch_size"]  # the smaller tile's limit caps the bigger one
        assert r["batch_size"] == cap or any(p["tile_size"] == size and p["batch_size"] == r["batch_size"] + 1
                                             and not p["fits"] for p in fit["points"])
    assert any(not p["fits"] for p in fit["points"])  # the budget did bind
    # a real measurement: 16x the samples at 64 px costs more memory than 2 (activations grow with the batch)
    at64 = {p["batch_size"]: p["peak_bytes"] for p in fit["points"] if p["tile_size"] == 64 and p["peak_bytes"]}
    assert at64[max(at64)] > at64[min(at64)]
    # tracked: the table, the plot and the recommendations in an MLflow run
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    run = client.search_runs([client.get_experiment_by_name(tracking.TUNE_EXPERIMENT).experiment_id])[0]
    assert run.data.metrics["batch_t64_fp32"] == rec[64]["batch_size"]
    assert {"fit/fit.csv", "fit/fit.png", "fit/fit.txt", "fit/tiny.json"} <= {
        f.path for f in client.list_artifacts(run.info.run_id, "fit")}


def test_hparams_study_nested_runs_and_out_of_memory(env, tracked, monkeypatch):
    import bpho.train

    real = bpho.train.forward_backward
    calls = {"trial": None}

    def fail_in_trial_1(*args, **kwargs):  # an out-of-memory error in one trial, as CUDA raises it
        if calls["trial"] == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return real(*args, **kwargs)

    monkeypatch.setattr(bpho.train, "forward_backward", fail_in_trial_1)
    real_train = bpho.train.train

    def counting_train(cfg, **kwargs):
        calls["trial"] = int(kwargs["tags"]["bpho.optuna_trial"])
        return real_train(cfg, **kwargs)

    monkeypatch.setattr(bpho.train, "train", counting_train)
    result = tune.hparams(tune.HparamsConfig("tiny", trials=3, epochs=2, space=SPACE, model=SMALL_MODEL, pruner="median", seed=1),
                          progress=False)
    assert result.trials == 3

    study = optuna.load_study(study_name="hparams-tiny", storage=tune.default_storage())
    states = [t.state for t in study.trials]
    assert states[1] == optuna.trial.TrialState.PRUNED and study.trials[1].user_attrs["out_of_memory"]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 2
    best = max((t for t in study.trials if t.value is not None), key=lambda t: t.value)
    assert result.best_value == pytest.approx(best.value) and result.best_params == best.params

    client = MlflowClient(tracked)
    parent = client.get_run(result.parent_run_id)
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{result.parent_run_id}'")
    assert len(children) == 3
    by_trial = {int(r.data.tags["bpho.optuna_trial"]): r for r in children}
    assert by_trial[1].data.tags["bpho.trial_state"] == "OUT_OF_MEMORY" and by_trial[1].info.status == "KILLED"
    for n in (0, 2):
        assert by_trial[n].info.status == "FINISHED"
        # the objective is the best epoch's full-image gain: the model a trial would register
        assert by_trial[n].data.metrics["best_valid_psnr_gain"] == pytest.approx(study.trials[n].value)
        assert by_trial[n].data.params["train.lr"] == str(study.trials[n].params["lr"])
    assert parent.data.metrics["best_valid_psnr_gain"] == pytest.approx(best.value)
    assert parent.data.tags["best.lr"] == str(best.params["lr"])
    arts = {f.path for f in client.list_artifacts(result.parent_run_id, "study")}
    assert {"study/best.json", "study/trials.csv", "study/optimization_history.png",
            "study/param_importances.png"} <= arts


@pytest.mark.e2e
def test_two_workers_share_one_postgres_study(env, tracked, postgres_url):
    args = ["tune", "hparams", "--dataset", "tiny", "--trials", "4", "--epochs", "1", "--storage", postgres_url,
            "--study", "shared", "--tile-sizes", "32", "--max-batch", "4", "--pruner", "none", *SMALL_NET]
    workers = [subprocess.Popen([sys.executable, "-m", "bpho.cli", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [w.communicate(timeout=600) for w in workers]
    for w, (out, err) in zip(workers, outs):
        assert w.returncode == 0, err[-3000:]
    study = optuna.load_study(study_name="shared", storage=postgres_url)
    numbers = [t.number for t in study.trials]
    assert sorted(numbers) == list(range(len(numbers)))  # no duplicate trial numbers
    assert 4 <= len(numbers) <= 5  # the requested count (a worker may start one just before the other stops)
    assert all(t.state.is_finished() for t in study.trials)
    # both workers did trials, all under one parent run
    parent = study.user_attrs["mlflow_parent_run_id"]
    client = MlflowClient(tracked)
    children = client.search_runs([client.get_run(parent).info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(int(r.data.tags["bpho.optuna_trial"]) for r in children) == sorted(numbers)
    assert all("study shared on postgresql://bpho@127.0.0.1" in out for out, _ in outs)


def test_tune_refuses_bad_input_in_one_line(env):
    assert_one_line_error(run_bpho("tune", "fit", "--dataset", "nope"), "nope")
    assert_one_line_error(run_bpho("tune", "fit", "--dataset", "tiny", "--tile-sizes", "999"), "999")
    assert_one_line_error(run_bpho("tune", "fit", "--dataset", "no256"), "no training tiles of size [256]")
    assert_one_line_error(run_bpho("tune", "hparams", "--dataset", "tiny", "--storage", "postgresql://x@127.0.0.1:1/db"),
                          "cannot open study", "127.0.0.1:1")


@pytest.mark.e2e
def test_mlflow_run_tune_fit_entry_point(env, tmp_path):
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(repo), "-e", "tune", "--env-manager", "local",
         "-P", "mode=fit", "-P", "dataset=tiny", "-P", "memory_gb=2", "-P", "model_encoder=resnet18",
         "-P", "max_batch=4", "-P", "tile_sizes=32 64", "-P", "device=cpu"],
        capture_output=True, text=True, cwd=tmp_path,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    fit = json.loads(tune.fit_path("tiny").read_text())
    assert [(r["tile_size"], r["batch_size"]) for r in fit["recommended"]] == [(32, 4), (64, 4)]
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])  # not the process-wide URI an earlier test set
    run = client.search_runs([client.get_experiment_by_name("Default").experiment_id])[0]
    assert run.data.params["mode"] == "fit" and run.data.metrics["batch_t64_fp32"] == 4
