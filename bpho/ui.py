"""`bpho ui`: the MLflow UI, opened where a biologist wants it: on the training runs.

MLflow 3 opens an experiment in its GenAI mode (traces, token usage: all empty for bpho); the
runs table is in its Model-training mode, which the URL parameter ``workflowType`` chooses
(`tracking.UI_MODE`). With `MLFLOW_TRACKING_URI` set to a server, the UI is that server's and
this only prints (and opens) the address. Otherwise it serves the local store (the embedded one,
``$BPHO_ROOT/mlflow.db``) on 127.0.0.1 on a free port, in the foreground until Ctrl-C or
SIGTERM, and stops MLflow's whole process group as `bpho server` does.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
import webbrowser
from pathlib import Path
from typing import List, Optional

from bpho import tracking
from bpho.errors import BphoError
from bpho.server import foreground

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def command(port: int) -> List[str]:
    """The `mlflow server` command line serving the local store in use on 127.0.0.1:`port`."""
    uri = tracking.tracking_uri()
    argv = [sys.executable, "-m", "mlflow", "server", "--host", HOST, "--port", str(port),
            "--backend-store-uri", uri, "--workers", "1"]
    if uri.startswith("sqlite:///"):  # experiments made in the UI: files beside the store, not in ./mlartifacts
        argv += ["--artifacts-destination", str(Path(uri[len("sqlite:///"):]).absolute().parent / "mlartifacts")]
    return argv


def pages(address: str, run_id: Optional[str] = None) -> List[str]:
    """The addresses to show: the runs view of bpho-train (Model-training mode), and run `run_id`'s page."""
    return [address + tracking.train_view_path()] + ([address + tracking.run_path(run_id)] if run_id else [])


def _show(urls: List[str], open_browser: bool) -> None:
    print(f"training runs: {urls[0]}", flush=True)
    print(f"registered models: {urls[0].split('/#/')[0]}{tracking.models_path()}", flush=True)
    if len(urls) > 1:
        print(f"run: {urls[1]}", flush=True)
    if open_browser:
        webbrowser.open(urls[-1])


def _wait_healthy(proc: subprocess.Popen, address: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{address}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None:
            raise BphoError(f"ui: MLflow stopped before it answered (exit code {proc.returncode}; its messages are "
                            "above)")
        if time.monotonic() > deadline:
            raise BphoError(f"ui: MLflow did not answer on {address} within {timeout_s:.0f} s")
        time.sleep(0.3)


def serve(port: int = 0, open_browser: bool = False, run_id: Optional[str] = None, timeout_s: float = 180) -> int:
    """Show bpho's runs in the MLflow UI; returns an exit code.

    Parameters
    ----------
    port : int
        Where the local store is served (0: a free port). Unused with a tracking server.
    open_browser : bool
        Open the page in the default web browser (`webbrowser`).
    run_id : str, optional
        Also print (and open) this run's page.
    timeout_s : float
        How long MLflow may take to answer before giving up.
    """
    server = tracking.server_address()
    if server:  # the team's server serves its own UI
        _show(pages(server, run_id), open_browser)
        return 0
    uri = tracking.tracking_uri()
    if uri.startswith("sqlite:///"):  # a fresh BPHO_ROOT: MLflow makes an empty store, SQLite needs its folder
        Path(uri[len("sqlite:///"):]).absolute().parent.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    address = f"http://{HOST}:{port}"
    print(f"MLflow UI for {uri} starting on {address} (Ctrl-C stops it)", flush=True)
    urls = pages(address, run_id)  # asked of the store before MLflow starts on it
    # its own process group, as for `bpho server`: signals reach MLflow's workers through stop_group
    # and its messages on stderr: stdout holds bpho's lines (the addresses) only
    proc = subprocess.Popen(command(port), stdout=2, start_new_session=True)

    def ready() -> None:
        _wait_healthy(proc, address, timeout_s)
        _show(urls, open_browser)

    return foreground(proc, ready)
