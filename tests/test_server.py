"""`bpho server`: bound to 127.0.0.1, basic auth with an admin password that never appears on the
command line, users with their own passwords; previews stay off the server when switched off."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import sys
import time
import urllib.error
import urllib.request

import pytest
from mlflow import MlflowClient

from bpho import server

from conftest import _free_port, assert_one_line_error, run_bpho, start_mlflow_server, stop

PASSWORD = "correct-horse-battery-staple"
# MLflow's job runner (GenAI jobs, 9 processes to start) is left out where a test is about auth or the store;
# the stopping test below keeps it (it stops MLflow's whole tree)
NO_JOB_RUNNER = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def _get(url: str, user: str | None = None, password: str | None = None) -> int:
    req = urllib.request.Request(url)
    if user:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.unit
def test_server_command_is_private_by_default(root):
    argv, env = server.command(port=5123)
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--backend-store-uri") + 1] == f"sqlite:///{root / 'server' / 'mlflow.db'}"
    assert argv[argv.index("--artifacts-destination") + 1] == str(root / "server" / "artifacts")
    assert "--app-name" not in argv


def test_auth_needs_a_password_from_the_environment_or_a_file(root, monkeypatch, tmp_path):
    monkeypatch.delenv(server.ADMIN_PASSWORD_ENV, raising=False)
    assert_one_line_error(run_bpho("server", "--auth", "--port", str(_free_port()), root=root),
                          server.ADMIN_PASSWORD_ENV)
    short = tmp_path / "pw"
    short.write_text("short\n")
    assert_one_line_error(run_bpho("server", "--auth", "--admin-password-file", short, root=root), "12 characters")
    assert "--admin-password" not in run_bpho("server", "--help").stdout.replace("--admin-password-file", "")


@pytest.mark.e2e
def test_auth_server_lets_no_one_in_without_a_password(root, tmp_path, monkeypatch):
    monkeypatch.setenv(server.ADMIN_PASSWORD_ENV, PASSWORD)
    port = _free_port()
    argv, env = server.command(port=port, auth=True, workers=1)
    assert PASSWORD not in " ".join(argv)  # not in the process list
    env = {**env, **NO_JOB_RUNNER}
    assert (root / "server" / "secret_key").stat().st_mode & 0o077 == 0
    proc = start_mlflow_server(root / "server", port, argv=argv, env=env)
    url = f"http://127.0.0.1:{port}"
    api = f"{url}/api/2.0/mlflow/experiments/search?max_results=5"
    try:
        assert _get(api) == 401
        assert _get(api, "admin", "wrong-password") == 401
        assert _get(api, "admin", PASSWORD) == 200
        # the admin adds a user with her own password; she logs runs with it
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
        import mlflow.server

        mlflow.server.get_app_client("basic-auth", tracking_uri=url).create_user("alice", "alice-own-password-1")
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "alice-own-password-1")
        client = MlflowClient(url)
        exp = client.create_experiment("alice-exp")
        run = client.create_run(exp)
        client.log_metric(run.info.run_id, "psnr", 31.5)
        assert client.get_run(run.info.run_id).data.metrics["psnr"] == 31.5
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "guess")
        with pytest.raises(Exception, match="401|Unauthorized|credentials"):
            MlflowClient(url).get_run(run.info.run_id)
    finally:
        stop(proc)


@pytest.mark.e2e
def test_team_server_keeps_runs_and_users_in_postgresql_across_a_restart(root, postgres_url, monkeypatch):
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as conn:  # a database of its own (Optuna's has tables too)
        conn.execute("CREATE DATABASE team")
    team = postgres_url.rsplit("/", 1)[0] + "/team"
    monkeypatch.setenv(server.ADMIN_PASSWORD_ENV, PASSWORD)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    argv, env = server.command(port=port, auth=True, workers=1, backend_store_uri=team, auth_database_uri=team)
    env = {**env, **NO_JOB_RUNNER}
    proc = start_mlflow_server(root / "server", port, argv=argv, env=env)
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
        import mlflow.server

        mlflow.server.get_app_client("basic-auth", tracking_uri=url).create_user("bob", "bob-own-password-22")
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "bob")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "bob-own-password-22")
        client = MlflowClient(url)
        run = client.create_run(client.create_experiment("bob-exp"))
        client.log_metric(run.info.run_id, "psnr", 30.25)
    finally:
        stop(proc)
    assert not (root / "server" / "basic_auth.db").exists() and not (root / "server" / "mlflow.db").exists()
    with psycopg.connect(team) as conn:
        assert conn.execute("SELECT username FROM users ORDER BY username").fetchall() == [("admin",), ("bob",)]
    proc = start_mlflow_server(root / "server", port, argv=argv, env=env)  # the machine restarts
    try:
        assert _get(f"{url}/api/2.0/mlflow/experiments/search?max_results=5", "bob", "bob-own-password-22") == 200
        assert MlflowClient(url).get_run(run.info.run_id).data.metrics["psnr"] == 30.25
    finally:
        stop(proc)


def test_previews_switch_keeps_pictures_of_the_data_off_the_server(demo, tmp_path, tracked, monkeypatch, root):
    from bpho.datasets import builder

    from conftest import add_demo

    add_demo(demo, tmp_path, "paired", "private_pairs", "paired")
    monkeypatch.setenv("BPHO_PREVIEWS", "off")
    ds = builder.make("paired_001", datasource="private_pairs", name="private", progress=False,
                      settings=["tile_sizes=64", "tiles_per_image=2"])
    assert list((ds.path / "qc").glob("*.png"))  # still written locally
    client = MlflowClient(tracked)
    run = client.search_runs([client.get_experiment_by_name("bpho-datasets").experiment_id],
                             filter_string="tags.`bpho.dataset` = 'private'")[0]
    logged = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert "manifest.json" in logged and not {"qc", "previews"} & logged
    assert run.data.tags["bpho.previews"] == "off"
    assert json.loads((ds.path / "manifest.json").read_text())["name"] == "private"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
@pytest.mark.e2e
def test_stopping_bpho_server_stops_every_process_and_frees_the_port(root, sig):
    """A signal to `bpho server` reaches MLflow's whole tree (server, uvicorn, job runner,
    consumers): within 15 s the port is free and none of them is left; a new server then starts there."""
    import psutil

    port = _free_port()
    argv = [sys.executable, "-m", "bpho.cli", "server", "--port", str(port), "--workers", "1"]
    proc = start_mlflow_server(root / "srv", port, argv=argv, env={**os.environ, "BPHO_ROOT": str(root)})
    tree = psutil.Process(proc.pid).children(recursive=True)
    try:
        assert tree, "MLflow's processes"
        os.kill(proc.pid, sig)  # the bpho process only, as `kill PID` does
        assert proc.wait(timeout=15) == 128 + sig
        deadline = time.time() + 15
        while time.time() < deadline and (_alive(tree) or not _port_free(port)):
            time.sleep(0.2)
        assert not _alive(tree) and _port_free(port)
        again = start_mlflow_server(root / "srv2", port, argv=argv, env={**os.environ, "BPHO_ROOT": str(root)})
        tree += psutil.Process(again.pid).children(recursive=True)
        os.kill(again.pid, signal.SIGINT)  # Ctrl-C in a terminal
        assert again.wait(timeout=15) == 128 + signal.SIGINT
    finally:
        for p in _alive(tree):  # never leave a server behind, even when the test fails
            p.kill()


def _alive(processes):
    import psutil

    return [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0
