"""Training on real demo tiles: the U-Net, learning, MLflow tracking and registry, resume, DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from bpho.datasets import builder
from bpho.errors import BphoError
from bpho.inference import load_model, save_model
from bpho.models import build_model
from bpho.train import TrainConfig, train

from conftest import assert_one_line_error, build_world, run_bpho, use_world

REPO = Path(__file__).resolve().parents[1]
SMALL_NET = dict(encoder="resnet18", decoder_widths=(64, 32, 16, 16, 8))
WIDTHS = "64,32,16,16,8"


@pytest.fixture(scope="module")
def world(demo, tmp_path_factory):
    """A BPHO_ROOT with the demo datasources and small datasets (64 px HR tiles) built once."""
    return build_world(demo, tmp_path_factory.mktemp("train-root"),
                       sources=[("paired", "pairs", "paired"), ("movie", "demo_movie", "movie")],
                       datasets=[("paired_001", "pairs", "tiny", ["tile_sizes=64", "tiles_per_image=150",
                                                                  "valid_fraction=0.34"]),
                                 ("movie_001", "demo_movie", "tiny_movie", ["tile_sizes=32", "tiles_per_image=4",
                                                                            "valid_fraction=0"])])


@pytest.fixture
def env(world, monkeypatch, tmp_path):
    return use_world(monkeypatch, world, tmp_path)


@pytest.mark.parametrize("mode", ["pre", "lr"])
@pytest.mark.parametrize("frames", [1, 5])
def test_unet_any_size(mode, frames):
    net = build_model({"encoder": "resnet18", "mode": mode, "frames": frames, "scale": 4}).eval()
    with torch.no_grad():
        out = net(torch.rand(2, frames, 25, 33))
    assert out.shape == (2, 1, 100, 132) and torch.isfinite(out).all()
    with pytest.raises(BphoError, match="not a timm model"):
        build_model({"encoder": "resnet_does_not_exist"})


def test_model_folder_roundtrip_rebuilds_without_guessing(tmp_path):
    net = build_model({"encoder": "resnet18", "mode": "lr", "frames": 1, "scale": 2, "decoder_widths": [32, 16, 8, 8, 8]})
    meta = {"model": net.config.to_dict(), "normalization": {"percentile_low": 1, "percentile_high": 99}}
    folder = save_model(tmp_path / "m", net, meta)
    loaded = load_model(folder, device="cpu", tile=16, overlap=4)
    image = np.random.default_rng(0).random((40, 52)).astype(np.float32)
    whole = load_model(folder, device="cpu", tile=64, overlap=0).predict(image)
    tiled = loaded.predict(image)
    assert tiled.shape == whole.shape == (80, 104)
    # even an untrained network gives nearly the same picture tiled as whole (seams: test_evaluate_predict)
    assert np.corrcoef(tiled.ravel(), whole.ravel())[0, 1] > 0.99
    assert loaded.meta == json.loads(json.dumps(meta))  # the config came back from disk as saved


def test_few_hundred_steps_beat_bicubic(env):
    result = train(TrainConfig(dataset="tiny", batch_size=4, epochs=4, lr=2e-3, panel_every=4, **SMALL_NET),
                   progress=False)
    steps = 4 * int(np.ceil(builder.open("tiny").manifest["tiles"]["64"]["train"] / 4))
    assert steps >= 200
    m = result.metrics
    assert m["valid_psnr"] > m["bicubic_psnr"] + 0.5, m
    assert m["valid_ssim"] > m["bicubic_ssim"], m


def test_small_card_options_train(env):
    cfg = TrainConfig(dataset="tiny", batch_size=4, epochs=1, amp=True, channels_last=True, grad_checkpointing=True,
                      accumulate=3, loss="l1+ssim", model_name="options", **SMALL_NET)
    result = train(cfg, progress=False)
    assert np.isfinite(result.metrics["train_loss"]) and result.registered_version == "1"


def test_multiframe_movie_model_predicts_stacks(env):
    result = train(TrainConfig(dataset="tiny_movie", batch_size=8, epochs=1, **SMALL_NET), progress=False)
    import mlflow

    model = mlflow.pyfunc.load_model(f"models:/{result.registered_name}/latest")
    stack = np.random.default_rng(1).poisson(30, (7, 21, 19)).astype(np.uint16)
    out = model.predict(stack)
    assert out.shape == (7, 84, 76) and np.isfinite(out).all()
    with pytest.raises(Exception, match="frames"):
        model.predict(stack[0])


def test_mlflow_run_train_on_server_registers_a_loadable_model(env, tracked, tmp_path):
    env_vars = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", "train", "--env-manager", "local",
         "-P", "dataset=tiny", "-P", "epochs=1", "-P", "encoder=resnet18", "-P", f"decoder_widths={WIDTHS}",
         "-P", "batch_size=16", "-P", "model_name=served"],
        capture_output=True, text=True, env=env_vars, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(tracked, registry_uri=tracked)
    version = client.search_model_versions("name='served'")[0]
    run = client.get_run(version.run_id)
    ds = builder.open("tiny")
    assert run.data.tags["bpho.dataset"] == "tiny" and run.data.tags["bpho.dataset_digest"] == ds.digest
    assert run.data.tags["bpho.datasource_digest"] == ds.manifest["datasource"]["digest"]
    assert run.data.tags["bpho.recipe"] == "paired_001" and "bpho.git_commit" in run.data.tags
    assert run.data.params["train.encoder"] == "resnet18" and run.data.params["train.tile_size"] == "64"
    assert {"train_loss", "valid_loss", "valid_psnr", "valid_ssim", "bicubic_psnr", "bicubic_ssim"} <= set(run.data.metrics)
    assert any(i.dataset.name == "tiny" for i in run.inputs.dataset_inputs)
    assert {a.path for a in client.list_artifacts(run.info.run_id, "panels")} == {"panels/epoch_001.png"}
    # a fresh process loads the model by name and super-resolves an odd-sized image
    code = ("import mlflow, numpy as np; m = mlflow.pyfunc.load_model('models:/served/latest');"
            "x = (np.random.default_rng(0).poisson(40, (97, 131)) + 100).astype(np.uint16);"
            "y = m.predict(x); print(y.shape, bool(np.isfinite(y).all()), y.dtype)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={**env_vars, "MLFLOW_TRACKING_URI": tracked})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "(388, 524) True float32"
    import mlflow

    mlflow.set_tracking_uri(tracked)
    mlflow.set_registry_uri(tracked)
    local = Path(mlflow.artifacts.download_artifacts(f"models:/served/{version.version}", dst_path=str(tmp_path / "dl")))
    files = {p.name for p in local.rglob("*") if p.is_file()}
    assert {"weights.safetensors", "bpho_model.json", "pyfunc_model.py", "MLmodel"} <= files
    assert not any(name.endswith((".pkl", ".pickle")) for name in files)  # models-from-code: nothing pickled


def test_resume_after_sigkill_continues_the_same_run(env, tmp_path):
    args = ["train", "--dataset", "tiny", "--epochs", "3", "--encoder", "resnet18", "--decoder-widths", WIDTHS,
            "--batch-size", "16", "--model-name", "resumed"]
    checkpoints = env / "checkpoints"
    before = set(checkpoints.glob("*/last.pt"))
    proc = subprocess.Popen([sys.executable, "-m", "bpho.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=os.environ.copy())
    deadline = time.time() + 300
    while not set(checkpoints.glob("*/last.pt")) - before and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(0.3)  # into the second epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    (new,) = set(checkpoints.glob("*/last.pt")) - before
    run_id = new.parent.name
    done = run_bpho(*args, "--resume", run_id)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"], registry_uri=os.environ["MLFLOW_TRACKING_URI"])
    steps = [m.step for m in client.get_metric_history(run_id, "valid_psnr")]
    assert sorted(steps) == [0, 1, 2], steps
    assert client.get_run(run_id).info.status == "FINISHED"
    assert client.search_model_versions("name='resumed'")[0].run_id == run_id


def test_resume_refuses_a_checkpoint_with_pickled_code(env, tmp_path):
    bad = env / "checkpoints" / "evil" / "last.pt"
    bad.parent.mkdir(parents=True)
    torch.save({"model": {}, "payload": os.system}, bad)  # a function object: only unpickling could build it
    proc = run_bpho("train", "--dataset", "tiny", "--resume", "evil")
    assert_one_line_error(proc, "refusing to load")


def test_torchrun_two_cpu_processes(env, tmp_path):
    from conftest import _free_port

    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
         "-m", "bpho.cli", "train", "--dataset", "tiny", "--epochs", "1", "--encoder", "resnet18",
         "--decoder-widths", WIDTHS, "--batch-size", "8", "--model-name", "ddp", "--device", "cpu"],
        capture_output=True, text=True, env=os.environ.copy(), cwd=tmp_path, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"], registry_uri=os.environ["MLFLOW_TRACKING_URI"])
    version = client.search_model_versions("name='ddp'")[0]
    run = client.get_run(version.run_id)
    assert run.data.params["train.world_size"] == "2"
    assert len(client.search_runs([run.info.experiment_id], filter_string="tags.`bpho.model_name` = 'ddp'")) == 1


@pytest.mark.parametrize("args, needle", [
    (["--dataset", "nope"], "nope"),
    (["--dataset", "tiny", "--tile-size", "256"], "no tile size 256"),
    (["--dataset", "tiny", "--encoder", "resnet_does_not_exist"], "resnet_does_not_exist"),
    (["--dataset", "tiny", "--frames", "5"], "--frames 5"),
])
def test_train_bad_input_one_line(env, args, needle):
    assert_one_line_error(run_bpho("train", *args), needle)
