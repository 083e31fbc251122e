"""Shared fixtures: an isolated BPHO_ROOT, a small demo data set (real CZI files), the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bpho.config import DemoConfig
from bpho.demo import make_demo_data

SMALL = DemoConfig(seed=7, paired_fields=3, paired_size=256, movies=1, movie_frames=10, movie_size=64,
                   hr_only_fields=2, denoise_fields=2, denoise_size=64)


TIERS = ("unit", "integration", "e2e")


@pytest.hookimpl(tryfirst=True)  # before `-m` selects
def pytest_collection_modifyitems(config, items):
    """Each test is in one tier (pyproject's markers): `pytest.mark.unit` or `pytest.mark.e2e` on the
    test or its module (`pytestmark`), integration otherwise; two tiers on one test are refused."""
    wrong = []
    for item in items:
        tiers = sorted({m.name for m in item.iter_markers() if m.name in TIERS})
        if not tiers:
            item.add_marker(pytest.mark.integration)
        elif len(tiers) > 1:
            wrong.append(f"{item.nodeid}: {', '.join(tiers)}")
    if wrong:
        raise pytest.UsageError("a test is in one tier (unit, integration or e2e), not two:\n  " + "\n  ".join(wrong))


@pytest.fixture(autouse=True)
def _mlflow_env_restored(monkeypatch):
    """mlflow.set_tracking_uri / set_registry_uri write os.environ; undo that after each test."""
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        if var in os.environ:
            monkeypatch.setenv(var, os.environ[var])
        else:  # set first, so that teardown removes whatever MLflow sets during the test
            monkeypatch.setenv(var, "")
            monkeypatch.delenv(var)


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


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow_server(where: Path, port: int, argv: list | None = None, env: dict | None = None,
                        health_timeout: float = 120) -> subprocess.Popen:
    """Start a real MLflow tracking server on 127.0.0.1:`port` (SQLite backend and proxied artifacts
    under `where`, or the command line `argv`, with `env`, else without MLflow's job runner); returns
    once /health answers."""
    import time
    import urllib.request

    where.mkdir(parents=True, exist_ok=True)
    if env is None:  # MLflow's job runner (GenAI jobs: 9 more processes to start) is not what these tests use
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    argv = argv or [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                    "--backend-store-uri", f"sqlite:///{where / 'mlflow.db'}", "--artifacts-destination",
                    str(where / "artifacts"), "--workers", "1"]
    log = open(where / "server.log", "a")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=where, env=env, start_new_session=True)
    log.close()
    deadline = time.time() + health_timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise RuntimeError(f"mlflow server did not start:\n{(where / 'server.log').read_text()[-3000:]}")
        time.sleep(0.3)


def stop(proc: subprocess.Popen, sig: int = 15) -> None:
    """Stop a server and its worker processes (its whole process group)."""
    import signal

    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server on 127.0.0.1 (SQLite backend, proxied artifacts)."""
    port = _free_port()
    proc = start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"), port)
    yield f"http://127.0.0.1:{port}"
    stop(proc)


@pytest.fixture
def tracked(mlflow_server, monkeypatch) -> str:
    """Send this test's tracking to the real server."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    return mlflow_server


def add_demo(demo: Path, tmp_path: Path, sub: str, name: str, kind: str):
    """Add a private copy of part of the demo data as datasource `name`."""
    import shutil

    from bpho import datasources

    dst = tmp_path / "inputs" / name / sub
    shutil.copytree(demo / sub, dst)
    return datasources.add(name, [dst], kind=kind, progress=False)[0]


def _postgres_bin() -> Path | None:
    import glob
    import shutil

    found = shutil.which("initdb") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))[-1:]), None)
    return Path(found).resolve().parent if found else None


@pytest.fixture(scope="session")
def postgres_url():
    """A real PostgreSQL server on 127.0.0.1 (Debian's package; `.ci/run` installs it), one
    database, trust authentication; as root it runs as the `postgres` user, as it must."""
    import shutil
    import tempfile

    bindir = _postgres_bin()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed; .ci/run should have installed Debian's postgresql")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    data = Path(tempfile.mkdtemp(prefix="bpho-pg-"))
    prefix: list = []
    if os.geteuid() == 0:
        shutil.chown(data, "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    port = _free_port()

    def pg(*cmd):
        subprocess.run([*prefix, *cmd], check=True, capture_output=True, text=True, cwd=data)

    pg(str(bindir / "initdb"), "-D", str(data / "db"), "-U", "bpho", "--auth=trust", "-E", "UTF8")
    pg(str(bindir / "pg_ctl"), "-D", str(data / "db"), "-l", str(data / "log"), "-w", "-t", "60",
       "-o", f"-h 127.0.0.1 -p {port} -k {data}", "start")
    try:
        pg(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "bpho", "bpho_test")
        yield f"postgresql://bpho@127.0.0.1:{port}/bpho_test"
    finally:
        subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data / "db"), "-m", "fast", "-w", "stop"],
                       capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


def build_world(demo: Path, root: Path, sources=(("paired", "pairs", "paired"),), datasets=(),
                tracking_uri: str | None = None) -> Path:
    """A module's shared BPHO_ROOT: private copies of demo data added as datasources
    (`sources`: (demo subfolder, name, kind)) and small datasets built from them
    (`datasets`: (recipe, datasource, name, recipe settings)), untracked."""
    from bpho.datasets import builder

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BPHO_ROOT", str(root))
        mp.setenv("MLFLOW_TRACKING_URI", tracking_uri or f"sqlite:///{root / 'setup.db'}")
        for sub, name, kind in sources:
            add_demo(demo, root, sub, name, kind)
        for recipe, datasource, name, settings in datasets:
            builder.make(recipe, datasource=datasource, name=name, progress=False, track=False, settings=settings)
    return root


def use_world(monkeypatch, world: Path, tmp_path: Path) -> Path:
    """This test works in `world` with its own embedded MLflow store."""
    monkeypatch.setenv("BPHO_ROOT", str(world))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return world
