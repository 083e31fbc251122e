"""What the benchmark scripts set up alike: a scratch BPHO_ROOT with its own MLflow store, an
output folder, and the device they train on."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional, Tuple


def scratch_root(root: Optional[str], name: str) -> Path:
    """`root`, or a new temporary folder ``bpho-bench-NAME-*``, made the BPHO_ROOT; MLflow tracks
    to its mlflow.db unless MLFLOW_TRACKING_URI says otherwise."""
    path = Path(root or tempfile.mkdtemp(prefix=f"bpho-bench-{name}-"))
    os.environ["BPHO_ROOT"] = str(path)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{path / 'mlflow.db'}")
    return path


def out_dir(out: Optional[str], name: str) -> Path:
    """`out`, or a new temporary folder ``bpho-NAME-*``, for the tables and figures."""
    return Path(out or tempfile.mkdtemp(prefix=f"bpho-{name}-"))


def pick_device(choice: str) -> Tuple[str, str]:
    """The device for `--device` (auto: CUDA when there is one) and its name for the tables."""
    import torch

    device = "cuda" if choice == "auto" and torch.cuda.is_available() else choice
    return device, torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
