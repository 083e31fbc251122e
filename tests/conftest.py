"""Shared fixtures: an isolated BPHO_ROOT, a small demo data set (real CZI files), the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bpho.synthetic import DemoConfig, make_demo_data

SMALL = DemoConfig(seed=7, paired_fields=3, paired_size=256, movies=1, movie_frames=10, movie_size=64,
                   hr_only_fields=2, denoise_fields=2, denoise_size=64)


@pytest.fixture
def root(tmp_path, monkeypatch) -> Path:
    """A fresh BPHO_ROOT for one test."""
    path = tmp_path / "bpho-root"
    monkeypatch.setenv("BPHO_ROOT", str(path))
    return path


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> Path:
    """Small demo data, written once per test session as real CZI files (pylibCZIrw)."""
    return make_demo_data(tmp_path_factory.mktemp("demo") / "demo", SMALL, progress=False)


def run_bpho(*args, root: Path | None = None, check: bool = False) -> subprocess.CompletedProcess:
    """Run the installed `bpho` command in a subprocess, as a user would."""
    env = dict(os.environ)
    if root is not None:
        env["BPHO_ROOT"] = str(root)
    proc = subprocess.run([sys.executable, "-m", "bpho.cli", *map(str, args)], capture_output=True,
                          text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"bpho {' '.join(map(str, args))} failed:\n{proc.stderr}")
    return proc


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit code 2, one line on stderr naming the problem, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("bpho: error:")]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
