"""The MLflow project: `mlflow run . -e ENTRY --env-manager local` runs bpho's entry points."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from bpho import io

REPO = Path(__file__).resolve().parents[1]


def test_mlproject_declares_its_entry_points():
    spec = yaml.safe_load((REPO / "MLproject").read_text())
    assert spec["name"] == "bpho" and spec["conda_env"] == "conda.yaml"
    for name, entry in spec["entry_points"].items():
        module = entry["command"].split("-m ")[1].split()[0]
        assert (REPO / (module.replace(".", "/") + ".py")).is_file(), name
    conda = yaml.safe_load((REPO / "conda.yaml").read_text())
    pip = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert sorted(pip) == sorted(project)  # `mlflow run` builds the same environment as `pip install`


def test_mlproject_train_defaults_are_the_training_defaults():
    """`mlflow run . -e train` with no -P trains what `bpho train` does (one set of defaults)."""
    import dataclasses

    from bpho.train import TrainConfig

    params = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]["train"]["parameters"]
    fields = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    checked = 0
    for name, spec in params.items():
        if spec.get("default", "") != "" and fields.get(name, dataclasses.MISSING) is not dataclasses.MISSING:
            assert spec["default"].lower() == str(fields[name]).lower(), (name, spec["default"], fields[name])
            checked += 1
    assert checked >= 6


def test_mlflow_run_demo_data(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", "demo_data", "--env-manager", "local",
         "-P", f"out={out}", "-P", "paired_fields=1", "-P", "paired_size=64", "-P", "movies=1",
         "-P", "hr_only_fields=1", "-P", "denoise_fields=1"],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert io.read(out / "paired/hr/field_000.czi").shape[-1] == 64
    assert io.read(out / "paired/lr/field_000.czi").shape[-1] == 16
