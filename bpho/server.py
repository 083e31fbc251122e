"""`bpho server`: the group's MLflow tracking server, private by default.

Binds 127.0.0.1 unless another host is asked for. The run store is SQLite under
``$BPHO_ROOT/server`` or any backend URI (PostgreSQL for a team); artifacts (models, small
previews) are stored under ``$BPHO_ROOT/server/artifacts`` or a given folder and served by
the server itself, so clients need no access to that disk. ``--auth`` turns on MLflow's
basic-auth app; its users live in SQLite under ``$BPHO_ROOT/server`` or ``--auth-database-uri``.
The admin password is read from ``$BPHO_ADMIN_PASSWORD`` or a file, never
from the command line, where every user of the machine could read it in the process list. It
goes to MLflow in the child's environment, and MLflow uses it only when it creates the admin
user in an empty user store.
"""

from __future__ import annotations

import configparser
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional

from bpho import paths
from bpho.config import env_admin_password
from bpho.errors import BphoError

ADMIN_PASSWORD_ENV = "BPHO_ADMIN_PASSWORD"
PERMISSIONS = ("READ", "EDIT", "MANAGE", "NO_PERMISSIONS")


def _admin_password(password_file: Optional[Path]) -> str:
    if password_file:
        try:
            value = Path(password_file).read_text().strip()
        except OSError as exc:
            raise BphoError(f"{password_file}: cannot read the admin password file ({exc.strerror})") from None
    else:
        value = env_admin_password()
    if not value:
        raise BphoError(f"--auth: no admin password; set {ADMIN_PASSWORD_ENV} or give --admin-password-file FILE "
                        "(never on the command line)")
    if len(value) < 12:
        raise BphoError("--auth: the admin password is shorter than 12 characters; choose a longer one")
    return value


def _private_file(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def command(host: str = "127.0.0.1", port: int = 5000, backend_store_uri: Optional[str] = None,
            artifacts: Optional[Path] = None, auth: bool = False, admin_password_file: Optional[Path] = None,
            default_permission: str = "READ", workers: int = 2,
            auth_database_uri: Optional[str] = None) -> tuple[List[str], dict]:
    """The `mlflow server` command line and environment for these settings (files it needs are written)."""
    folder = paths.root() / "server"
    folder.mkdir(parents=True, exist_ok=True)
    backend = backend_store_uri or f"sqlite:///{folder / 'mlflow.db'}"
    store = Path(artifacts) if artifacts else folder / "artifacts"
    argv = [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port),
            "--backend-store-uri", backend, "--artifacts-destination", str(store), "--serve-artifacts",
            "--workers", str(workers)]
    env = dict(os.environ)
    if auth:
        if default_permission not in PERMISSIONS:
            raise BphoError(f"--default-permission {default_permission!r} (use {', '.join(PERMISSIONS)})")
        env["MLFLOW_AUTH_ADMIN_PASSWORD"] = _admin_password(admin_password_file)
        key = folder / "secret_key"
        if "MLFLOW_FLASK_SERVER_SECRET_KEY" not in env:
            if not key.exists():
                _private_file(key, secrets.token_hex(32))
            env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = key.read_text().strip()
        config = configparser.ConfigParser()
        config["mlflow"] = {
            "default_permission": default_permission,
            # users and permissions; MLflow keeps them in their own tables (alembic_version_auth),
            # so they may share the run store's PostgreSQL database
            "database_uri": auth_database_uri or f"sqlite:///{folder / 'basic_auth.db'}",
            "admin_username": "admin",
            "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
        }
        ini = folder / "basic_auth.ini"
        with open(ini, "w") as fh:
            config.write(fh)
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(ini)
        argv += ["--app-name", "basic-auth"]
    return argv, env


def serve(**kwargs) -> int:
    """Run the server in the foreground until interrupted; returns its exit code."""
    argv, env = command(**kwargs)
    host, port = kwargs.get("host", "127.0.0.1"), kwargs.get("port", 5000)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"bpho: warning: the server listens on {host}: other machines can reach it"
              f"{'' if kwargs.get('auth') else ' and, without --auth, read and write every run'}", file=sys.stderr)
    print(f"MLflow server for bpho on http://{host}:{port} ({'basic auth' if kwargs.get('auth') else 'no auth'}); "
          f"clients: export MLFLOW_TRACKING_URI=http://{host}:{port}", flush=True)
    # its own process group: MLflow starts uvicorn, a job runner and huey consumers, and
    # subprocess.call would pass none of our signals on to them
    return foreground(subprocess.Popen(argv, env=env, start_new_session=True))


def foreground(proc: subprocess.Popen, ready: Optional[Callable[[], None]] = None) -> int:
    """Wait for `proc` (started in its own process group) until it ends or we get SIGTERM, SIGINT
    or SIGHUP; `ready` runs first (a failure there stops it too). Its whole group is stopped on
    the way out; returns its exit code, or 128 + the signal."""

    def forward(signum, frame):
        raise _Stop(signum)

    previous = {sig: signal.signal(sig, forward) for sig in STOP_SIGNALS}
    try:
        if ready is not None:
            ready()
        return proc.wait()
    except _Stop as stop:
        return 128 + stop.signum
    except KeyboardInterrupt:
        return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        stop_group(proc)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class _Stop(Exception):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def stop_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM to the server's whole process group, SIGKILL to what is left after `grace_s`."""
    def signal_group(sig) -> bool:
        try:
            os.killpg(proc.pid, sig)
            return True
        except ProcessLookupError:
            return False  # nothing of the group is left

    if not signal_group(signal.SIGTERM):
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if proc.poll() is not None and not signal_group(0):
            return
        time.sleep(0.1)
    signal_group(signal.SIGKILL)
    proc.wait()
