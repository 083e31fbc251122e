"""`bpho ui` as a person sees it (headless Chromium on the real MLflow UI), the `champion` alias
rule on real registered versions, and evaluations in the lineage (dataset input, judged version)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from mlflow import MlflowClient

from bpho import datasets, tracking
from bpho import io as bio
from bpho.config import TrainConfig
from bpho.train import train

from conftest import build_world, run_bpho, stop

NET = dict(model={"encoder": "resnet18", "decoder_widths": (32, 16, 16, 8, 8)}, batch_size=8, epochs=1)
TILES = ["tile_sizes=32", "tiles_per_image=8"]
NAME = "bpho-uiset"


@pytest.fixture(scope="module")
def store(demo, tmp_path_factory):
    """A BPHO_ROOT with two datasets of different digests (the same pairs, another seed) and the
    embedded MLflow store holding three trained versions of one registered model: `trained` (one
    epoch) and `untrained` (learning rate 1e-9: its initial weights) on `uiset`, `other` on `uiset_b`."""
    root = build_world(demo, tmp_path_factory.mktemp("ui-root"),
                       datasets=[("paired_001", "pairs", "uiset", TILES),
                                 ("paired_001", "pairs", "uiset_b", [*TILES, "seed=1"])])
    lines = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BPHO_ROOT", str(root))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        for key, dataset, lr in (("trained", "uiset", 2e-3), ("untrained", "uiset", 1e-9), ("other", "uiset_b", 2e-3)):
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                result = train(TrainConfig(dataset=dataset, lr=lr, model_name=NAME, **NET), progress=False)
            lines[key] = (result, next(line for line in out.getvalue().splitlines() if "champion" in line))
    return root, lines


@pytest.fixture
def embedded(store, monkeypatch):
    root, lines = store
    monkeypatch.setenv("BPHO_ROOT", str(root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return root, lines


def _gain(version) -> float:
    return float(version.tags["bpho.valid_psnr_gain"])


def test_champion_rule(embedded):
    """The first version is the champion; a version that does not beat it on the same dataset digest
    stays a plain version and says why; one on another digest does not compare; a better one takes it."""
    _, lines = embedded
    client = MlflowClient(tracking.embedded_uri())
    v = {k: client.get_model_version(NAME, r.registered_version) for k, (r, _) in lines.items()}
    first, second = v["trained"], v["untrained"]
    assert _gain(first) != _gain(second)  # else the two trainings cannot order anything
    assert lines["trained"][1] == (f"{NAME} version 1 is the champion: models:/{NAME}@champion, "
                                   f"{_gain(first):+.2f} dB over bicubic")
    better, worse = (first, second) if _gain(first) > _gain(second) else (second, first)
    if better is second:  # training moved the alias to the better version
        assert "version 2 is the champion (was version 1)" in lines["untrained"][1]
    else:
        assert lines["untrained"][1].startswith(f"{NAME} version 2 is not the champion: its validation gain over "
                                                "bicubic") and "does not beat version 1's" in lines["untrained"][1]
    # the version on another dataset never takes it, better or not, and the line names both datasets
    assert lines["other"][1].startswith(f"{NAME} version 3 is not the champion: version {better.version} is")
    assert "uiset" in lines["other"][1] and "uiset_b" in lines["other"][1] and "do not compare" in lines["other"][1]
    assert client.get_model_version_by_alias(NAME, "champion").version == better.version
    # the same rule judged afresh in the other order: the worse first, then the better takes it, the worse never
    client.delete_registered_model_alias(NAME, "champion")
    assert tracking.name_champion(NAME, worse.version).endswith(f"{_gain(worse):+.2f} dB over bicubic")
    assert f"is the champion (was version {worse.version})" in tracking.name_champion(NAME, better.version)
    assert "does not beat" in tracking.name_champion(NAME, worse.version)
    assert "do not compare" in tracking.name_champion(NAME, v["other"].version)
    assert client.get_model_version_by_alias(NAME, "champion").version == better.version


def test_versions_are_described(embedded):
    """Each version carries its dataset and digest, gains over bicubic and bilinear, FRC and its run,
    as tags and as a description, read from its training run's metrics."""
    _, lines = embedded
    client = MlflowClient(tracking.embedded_uri())
    for result, _ in lines.values():
        version = client.get_model_version(NAME, result.registered_version)
        run = client.get_run(result.run_id)
        metrics = run.data.metrics
        assert version.tags["bpho.run_id"] == result.run_id == version.run_id
        assert version.tags["bpho.dataset_digest"] == run.data.tags["bpho.dataset_digest"]
        assert version.tags["bpho.dataset"] == run.data.tags["bpho.dataset"]
        assert abs(_gain(version) - metrics["best_valid_psnr_gain"]) < 1e-4
        bilinear = float(version.tags["bpho.valid_psnr_gain_bilinear"])
        assert abs(bilinear - metrics["best_valid_psnr_gain_bilinear"]) < 1e-4
        assert f"{metrics['best_valid_psnr_gain']:+.2f} dB over bicubic" in version.description
        assert f"{metrics['best_valid_psnr_gain_bilinear']:+.2f} dB over bilinear" in version.description
        if "best_valid_frc_nm" in metrics:
            assert f"FRC resolution {metrics['best_valid_frc_nm']:.0f} nm" in version.description


def test_champion_uri_in_evaluate_and_predict(embedded, tmp_path, demo):
    """models:/NAME@champion loads the champion's model; `bpho evaluate` logs the dataset it scored
    as a dataset input and the registered version it judged, and its "see it" line names its run."""
    from bpho.predict import predict_files

    root, _ = embedded
    client = MlflowClient(tracking.embedded_uri())
    champion = client.get_model_version_by_alias(NAME, "champion")
    folder = tracking.download_model(f"models:/{NAME}@champion")
    assert json.loads((folder / "bpho_model.json").read_text())["run_id"] == champion.run_id
    proc = run_bpho("evaluate", "--model", f"models:/{NAME}@champion", "--dataset", "uiset_b", "--out",
                    tmp_path / "eval", root=root, check=True)
    see_it = re.search(r"^see it: bpho ui --run (\w+)  \(the page /#/experiments/\d+/runs/(\w+)\?workflowType="
                       r"machine_learning\)$", proc.stdout, re.M)
    assert see_it and see_it.group(1) == see_it.group(2), proc.stdout
    run = client.get_run(see_it.group(1))
    assert run.info.experiment_id == client.get_experiment_by_name(tracking.EVALUATE_EXPERIMENT).experiment_id
    assert run.data.tags["bpho.model_name"] == NAME and run.data.tags["bpho.model_version"] == str(champion.version)
    inputs = [(d.dataset.name, d.dataset.digest, {t.key: t.value for t in d.tags}) for d in run.inputs.dataset_inputs]
    assert inputs == [("uiset_b", datasets.open("uiset_b").digest[:36],
                       {"mlflow.data.context": "evaluation", "split": "valid"})]
    assert f"#/models/{NAME}/versions/{champion.version}" in run.data.tags["mlflow.note.content"]
    lr = demo / "paired/lr/field_000.czi"
    written = predict_files(f"models:/{NAME}@champion", [lr], tmp_path / "pred", progress=False)
    hr = [p for p in written if Path(p).suffix == ".tif"]
    assert len(hr) == 1 and bio.read(hr[0]).data.shape[-2:] == tuple(4 * n for n in bio.read(lr).data.shape[-2:])


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is not installed; .ci/run should have installed Debian's chromium")
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    return found


def dump_dom(chromium: str, url: str, needles, profile: Path) -> str:
    """The page's DOM after the MLflow UI (a JavaScript app) has filled it: `--dump-dom` with a
    growing virtual-time budget until every needle is in it (the last DOM is returned either way)."""
    dom = ""
    for budget in (4000, 12000, 30000):
        proc = subprocess.run([chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                               f"--user-data-dir={profile}", f"--virtual-time-budget={budget}", "--dump-dom", url],
                              capture_output=True, text=True, timeout=120)
        dom = proc.stdout
        if all(n in dom for n in needles):
            break
    return dom


def start_ui(*args, env: dict) -> tuple:
    """`bpho ui` in a subprocess; returns it and the address lines it printed once MLflow answers."""
    proc = subprocess.Popen([sys.executable, "-m", "bpho.cli", "ui", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env, start_new_session=True)
    printed = {}
    deadline = time.time() + 180
    for line in proc.stdout:
        key, _, value = line.strip().partition(": ")
        printed[key] = value
        if "training runs" in printed and "registered models" in printed and ("run" in printed or "--run" not in args):
            break
        if time.time() > deadline:
            break
    return proc, printed


def test_ui_shows_runs_datasets_and_champion(embedded, tmp_path):
    """`bpho ui` serves the embedded store; in Chromium the runs view (Model-training mode, not the
    GenAI overview) lists the run, its page shows the run and its dataset, the registry page the
    version's gains and the champion alias; Ctrl-C stops it and frees the port."""
    chromium = _chromium()
    root, lines = embedded
    result = lines["trained"][0]
    client = MlflowClient(tracking.embedded_uri())
    run_name = client.get_run(result.run_id).info.run_name
    champion = client.get_model_version_by_alias(NAME, "champion")
    gains = re.search(r"PSNR [+-]\d+\.\d\d dB over bicubic, [+-]\d+\.\d\d dB over bilinear",
                      champion.description).group(0)
    env = {**os.environ, "BPHO_ROOT": str(root)}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc, printed = start_ui("--run", result.run_id, env=env)
    tree = psutil.Process(proc.pid).children(recursive=True)  # MLflow's server, uvicorn, job runner...
    try:
        runs_view, models, run_page = printed["training runs"], printed["registered models"], printed["run"]
        address = models.split("/#/")[0]
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", address)
        experiment = client.get_experiment_by_name(tracking.TRAIN_EXPERIMENT).experiment_id
        assert runs_view == f"{address}/#/experiments/{experiment}/runs?workflowType=machine_learning"
        assert run_page == f"{address}/#/experiments/{experiment}/runs/{result.run_id}?workflowType=machine_learning"
        dom = dump_dom(chromium, runs_view, [run_name, "uiset"], tmp_path / "profile")
        assert run_name in dom and "uiset" in dom
        assert "No data available" not in dom  # the GenAI overview's empty panels
        dom = dump_dom(chromium, run_page, [run_name, "uiset", "valid_psnr_gain"], tmp_path / "profile")
        assert run_name in dom and "uiset" in dom
        assert models == f"{address}/#/models?workflowType=machine_learning"
        dom = dump_dom(chromium, f"{address}/#/models/{NAME}?workflowType=machine_learning", ["champion", gains],
                       tmp_path / "profile")
        assert "champion" in dom  # the alias, on the champion's row
        assert gains in dom  # in the registered model's description, which names the champion
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            assert proc.wait(timeout=30) == 130
        finally:
            stop(proc)
            left = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
            for p in left:  # never leave a server behind, even when the test fails
                p.kill()
    assert tree and not left
    with socket.socket() as s:  # nobody listens on the port any more
        assert s.connect_ex(("127.0.0.1", int(address.rsplit(":", 1)[1]))) != 0


def test_see_it_lines_name_the_run_page(embedded, mlflow_server, monkeypatch, capsys):
    """On the embedded store a run's "see it" line says to start `bpho ui` and gives the page's path;
    with a tracking server it is the page there, and `bpho ui` prints the server's runs view."""
    from bpho.ui import serve

    run_id = embedded[1]["trained"][0].run_id
    experiment = MlflowClient(tracking.embedded_uri()).get_run(run_id).info.experiment_id
    assert tracking.run_url(run_id) == (f"bpho ui --run {run_id}  (the page /#/experiments/{experiment}/runs/"
                                        f"{run_id}?workflowType=machine_learning)")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    with tracking.run(tracking.TRAIN_EXPERIMENT, run_name="see-it") as active:
        on_server = active.info.run_id
    experiment = MlflowClient(mlflow_server).get_run(on_server).info.experiment_id
    page = f"{mlflow_server}/#/experiments/{experiment}/runs/{on_server}?workflowType=machine_learning"
    assert tracking.run_url(on_server) == page
    capsys.readouterr()
    assert serve(run_id=on_server) == 0  # nothing to serve: the server has its UI
    assert capsys.readouterr().out.splitlines() == [
        f"training runs: {mlflow_server}/#/experiments/{experiment}/runs?workflowType=machine_learning",
        f"registered models: {mlflow_server}/#/models?workflowType=machine_learning", f"run: {page}"]
