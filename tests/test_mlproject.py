"""The MLflow project: `mlflow run . -e ENTRY --env-manager local` runs bpho's entry points."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bpho import io

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.unit
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


# entry point -> (its stage's config in bpho/config.py, parameters that are not config fields)
CONFIGS = {"train": ("TrainConfig", set()), "demo_data": ("DemoConfig", {"out", "force"}),
           "predict": ("PredictConfig", {"model", "inputs", "out"})}


def disagreements(entry_points: dict) -> list:
    """Where MLproject and the configs disagree: a parameter that is no config field, one the
    command does not pass on, or a default other than the config's."""
    import dataclasses

    from bpho import config

    problems = []
    for entry, (cls_name, extras) in CONFIGS.items():
        flags = config.flag_defaults(getattr(config, cls_name))
        spec = entry_points[entry]
        for name, param in spec["parameters"].items():
            if name not in flags and name not in extras:
                problems.append(f"{entry}: parameter {name} is not a {cls_name} field")
            if f"{{{name}}}" not in spec["command"]:
                problems.append(f"{entry}: the command does not pass {name}")
            default, field_default = param.get("default", ""), flags.get(name, dataclasses.MISSING)
            if default != "" and field_default is not dataclasses.MISSING:
                want = ",".join(map(str, field_default)) if isinstance(field_default, tuple) else str(field_default)
                if default.lower() != want.lower():
                    problems.append(f"{entry}: {name} defaults to {default!r}, {cls_name} to {want!r}")
    return problems


@pytest.mark.unit
def test_mlproject_parameters_are_the_configs_fields_and_defaults():
    """`mlflow run . -e train` with no -P trains what `bpho train` does (one set of defaults)."""
    entry_points = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]
    assert disagreements(entry_points) == []
    entry_points["train"]["parameters"]["batch_size"]["default"] = "16"  # the check can fail
    entry_points["train"]["parameters"]["model_encoder"]["default"] = "resnet18"
    entry_points["demo_data"]["parameters"]["colour"] = {"type": "string", "default": ""}
    assert disagreements(entry_points) == ["train: batch_size defaults to '16', TrainConfig to '8'",
                                           "train: model_encoder defaults to 'resnet18', TrainConfig to 'resnet34'",
                                           "demo_data: parameter colour is not a DemoConfig field",
                                           "demo_data: the command does not pass colour"]


@pytest.mark.unit
def test_mlproject_argv_follows_the_config_types():
    from bpho.config import TrainConfig, mlproject_argv

    argv = mlproject_argv(TrainConfig, ["--dataset", "d", "--epochs", "", "--amp", "true", "--channels-last", "false",
                                        "--mix", "a=1 b=0.5", "--model_decoder_widths", "32,16", "--grad_checkpointing", "true"])
    assert argv == ["--dataset", "d", "--amp", "--mix", "a=1", "--mix", "b=0.5", "--model-decoder-widths", "32,16",
                    "--grad-checkpointing"]


@pytest.mark.e2e
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
