"""Faults a group meets: the tracking server goes away mid-training, a build is killed, a
registered file changes on disk, the disk fills up. (A training process killed mid-epoch and
resumed: tests/test_train.py::test_resume_after_sigkill_continues_the_same_run.)"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time

import pytest
from mlflow import MlflowClient

from bpho import datasets

from conftest import (_free_port, assert_one_line_error, build_world, add_demo, run_bpho, start_mlflow_server,
                      stop, use_world)

pytestmark = pytest.mark.e2e

NET = ["--model-encoder", "resnet18", "--model-decoder-widths", "32,16,16,8,8"]


@pytest.fixture(scope="module")
def world(demo, tmp_path_factory):
    return build_world(demo, tmp_path_factory.mktemp("faults-root"), datasets=[
        ("paired_001", "pairs", "tiny", ["tile_sizes=64", "tiles_per_image=60", "valid_fraction=0.34"])])


@pytest.fixture
def env(world, monkeypatch, tmp_path):
    return use_world(monkeypatch, world, tmp_path)


def _wait(condition, timeout: float, what: str, proc=None):
    deadline = time.time() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process ended first:\n{proc.stderr.read()[-12000:]}")
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_training_survives_a_tracking_server_outage(env, tmp_path, monkeypatch):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_mlflow_server(tmp_path / "server", port)
    proc = subprocess.Popen(
        [sys.executable, "-m", "bpho.cli", "train", "--dataset", "tiny", "--epochs", "4", "--batch-size", "4",
         "--valid-share", "1", *NET],
        env={**os.environ, "MLFLOW_TRACKING_URI": url, "BPHO_TRACKING_WAIT": "180"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = MlflowClient(url)
    runs = []

    def first_epoch_logged():
        exp = client.get_experiment_by_name("bpho-train")
        runs[:] = client.search_runs([exp.experiment_id]) if exp else []
        return bool(runs) and client.get_metric_history(runs[0].info.run_id, "valid_psnr")

    try:
        _wait(first_epoch_logged, 300, "the first epoch's metrics on the server", proc)
        run_id = runs[0].info.run_id
        stop(server, signal.SIGKILL)  # the server dies mid-training
        spool = env / "checkpoints" / run_id / "pending.jsonl"
        _wait(lambda: spool.exists() and len(spool.read_text().splitlines()) >= 2, 300,
              "two epochs kept back while the server is away", proc)
        assert proc.poll() is None  # training did not crash
        server = start_mlflow_server(tmp_path / "server", port)  # and comes back, same store
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        assert "unreachable" in err  # the user was told, once
        history = client.get_metric_history(run_id, "valid_psnr")
        assert sorted(m.step for m in history) == [0, 1, 2, 3]  # no gap, no duplicate
        run = client.get_run(run_id)
        assert "logged after a tracking server outage" in run.data.tags["bpho.logged_late"]
        assert run.info.status == "FINISHED"
        from bpho import tracking

        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        assert (tracking.download_model(f"runs:/{run_id}/model") / "bpho_model.json").is_file()  # the model arrived
        assert (env / "checkpoints" / run_id / "last.pt").is_file() and not spool.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
        stop(server)


def test_a_server_dying_mid_answer_counts_as_unreachable(mlflow_server):
    """A server killed while it answers breaks the connection mid-body (what CI once met in the
    outage test above): that is an outage to wait out, while a refused request is not."""
    import socket
    import threading

    from mlflow.exceptions import MlflowException

    from bpho.tracking import unreachable

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def answer_half():
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n")
        conn.close()  # dies before the body

    threading.Thread(target=answer_half, daemon=True).start()
    with pytest.raises(MlflowException) as broken:
        MlflowClient(f"http://127.0.0.1:{listener.getsockname()[1]}").get_experiment("0")
    listener.close()
    assert "Connection broken" in str(broken.value) and unreachable(broken.value)

    with pytest.raises(MlflowException) as refused:
        MlflowClient(mlflow_server).get_run("no-such-run")
    assert not unreachable(refused.value)


def test_a_killed_dataset_build_leaves_no_dataset(env):
    folder = env / "datasets"
    proc = subprocess.Popen([sys.executable, "-m", "bpho.cli", "dataset", "make", "paired_001", "--datasource", "pairs",
                             "--name", "killed", "--set", "tile_sizes=64", "--set", "tiles_per_image=400"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    import psutil

    _wait(lambda: any(folder.glob(".killed.tmp-*/tiles")) and psutil.Process(proc.pid).children(), 120,
          "the build to start its workers and write", proc)
    workers = psutil.Process(proc.pid).children()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert workers  # the build prepares images in forked workers; killed with it, none is left behind
    _wait(lambda: not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers), 15,
          "the workers to end")
    assert not (folder / "killed").exists()
    assert "killed" not in run_bpho("dataset", "list").stdout
    run_bpho("dataset", "make", "paired_001", "--datasource", "pairs", "--name", "killed", "--set", "tile_sizes=64",
             "--set", "tiles_per_image=4", check=True)
    assert datasets.open("killed").manifest["tiles"]["64"]["train"] > 0
    assert not list(folder.glob(".killed.tmp-*"))  # the dead build's leftovers were cleared


def test_a_changed_datasource_file_is_refused_by_every_stage(env, demo, tmp_path):
    add_demo(demo, tmp_path, "paired", "changed", "paired")
    from bpho import datasources

    victim = sorted((datasources.open("changed").path).rglob("lr/*.czi"))[0]
    victim.chmod(0o644)
    with open(victim, "r+b") as fh:  # one byte, deep inside the pixel data
        fh.seek(victim.stat().st_size // 2)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0xFF]))
    name = victim.name
    assert run_bpho("datasource", "verify", "changed").returncode == 1
    for argv in (["dataset", "make", "paired_001", "--datasource", "changed", "--name", "x"],
                 ["synthesize", "--datasource", "changed", "--degradation", "physical", "--dataset", "y"],
                 ["synthesize", "--datasource", "pairs", "--degradation", "fitted", "--fit-on", "changed",
                  "--dataset", "z"],
                 ["tune", "degradation", "--datasource", "changed", "--degradation", "classic", "--trials", "1"],
                 ["evaluate", "--model", "runs:/0123456789abcdef/model", "--datasource", "changed"]):
        proc = run_bpho(*argv)
        assert_one_line_error(proc, name)
    for folder in ("x", "y", "z"):
        assert not (env / "datasets" / folder).exists()


def _file_size_limit(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_disk_full_while_writing_tiles_or_predictions(env, demo, tmp_path):
    cmd = [sys.executable, "-m", "bpho.cli", "dataset", "make", "paired_001", "--datasource", "pairs", "--name", "full",
           "--set", "tile_sizes=64", "--set", "tiles_per_image=200"]
    proc = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=_file_size_limit(400_000))
    assert_one_line_error(proc, "File too large", "nothing was kept")
    assert not (env / "datasets" / "full").exists() and not list((env / "datasets").glob(".full.tmp-*"))

    # a model far smaller than the limit, an HR output far larger (256 px LR -> 1024 px float32 HR, 4 MiB)
    run_bpho("train", "--dataset", "tiny", "--epochs", "1", "--model-name", "full-disk", "--model-encoder", "test_resnet",
             "--model-decoder-widths", "16,8,8,8,8", check=True)
    lr = tmp_path / "big_lr.tif"
    import numpy as np
    import tifffile

    tifffile.imwrite(lr, (np.random.default_rng(0).random((256, 256)) * 1000).astype(np.uint16))
    out = tmp_path / "predictions"
    proc = subprocess.run([sys.executable, "-m", "bpho.cli", "predict", "--model", "models:/full-disk/latest",
                           str(lr), "--out", str(out)], capture_output=True, text=True,
                          preexec_fn=_file_size_limit(3_000_000))
    assert_one_line_error(proc, "while writing; nothing was kept")
    assert not out.exists() or not any(out.iterdir())  # no half-written TIFF, no temporary file
