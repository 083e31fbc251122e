"""Large images (#22) in several processes: Dask workers give the same bytes, also when one is killed; a full
disk and a killed run leave nothing that looks complete. (A file of its own so that the test workers share the
large-image tests.)"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tifffile

from bpho import io
from bpho.config import PredictConfig
from bpho.errors import BphoError
from bpho.predict import predict_files

from conftest import assert_one_line_error
from test_large_images import _czi, _in_memory, _read, models  # noqa: F401  (models: the module fixture)


def test_dask_workers_give_the_same_bytes_also_when_one_is_killed(tmp_path, models):
    from distributed import Client, LocalCluster

    src = _czi(tmp_path / "field.czi", (1, 1, 1, 160, 160))
    base = dict(device="cpu", tile=24, overlap=4, block=16, format="ome-tiff")
    [here] = predict_files(str(models["single"]), [src], tmp_path / "here", PredictConfig(**base), progress=False)
    expected = tifffile.imread(here)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        [spread] = predict_files(str(models["single"]), [src], tmp_path / "spread",
                                 PredictConfig(**base, dask=cluster.scheduler_address), progress=False)
        assert tifffile.imread(spread).tobytes() == expected.tobytes()

        pids = client.run(os.getpid)
        victim = sorted(pids.values())[0]
        part = tmp_path / "killed" / ".field.ome.tif.part"
        killed = threading.Event()

        def kill_when_writing():  # once blocks are being written, a worker dies
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not killed.is_set():
                if part.exists() and os.stat(part).st_blocks * 512 > 40_000:
                    os.kill(victim, signal.SIGKILL)
                    killed.set()
                time.sleep(0.02)

        watcher = threading.Thread(target=kill_when_writing, daemon=True)
        watcher.start()
        [survived] = predict_files(str(models["single"]), [src], tmp_path / "killed",
                                   PredictConfig(**base, dask=cluster.scheduler_address), progress=False)
        watcher.join()
        assert killed.is_set() and victim not in client.run(os.getpid).values()
        assert tifffile.imread(survived).tobytes() == expected.tobytes()


@pytest.mark.parametrize("fmt", ["ome-zarr"])  # TIFF: tests/test_faults.py
def test_full_disk_gives_one_line_and_no_image(tmp_path, models, fmt):
    """A file-size limit (what a full disk looks like to a writer) stops the run with one line; neither
    the image nor its part is left."""
    src = _czi(tmp_path / "big.czi", (1, 1, 1, 200, 200))
    out = tmp_path / "out"
    script = (f"import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
              f"resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000)); from bpho.cli import main; "
              f"sys.exit(main(['predict', '--model', {str(models['single'])!r}, {str(src)!r}, '--out', {str(out)!r}, "
              f"'--device', 'cpu', '--format', {fmt!r}]))")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=os.environ.copy())
    assert_one_line_error(proc, "while writing; nothing was kept", "Free space")
    assert not out.exists() or list(out.iterdir()) == []
    assert resource.getrlimit(resource.RLIMIT_FSIZE)[0] != 60_000  # the limit stayed in the child


def test_a_killed_run_leaves_only_a_hidden_part_and_the_next_run_completes(tmp_path, models):
    src = _czi(tmp_path / "slow.czi", (6, 1, 1, 96, 96))
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "bpho.cli", "predict", "--model", str(models["single"]), str(src), "--out", str(out),
            "--device", "cpu", "--format", "ome-zarr", "--block", "32", "--tile", "24", "--overlap", "4"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    part = out / ".slow.part"
    deadline = time.monotonic() + 120
    while not (part / "0" / "c").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert [p.name for p in out.iterdir()] == [".slow.part"]  # nothing under the final name
    with pytest.raises(BphoError, match="unknown file type|multiscales"):
        io.open_image(part)
    assert subprocess.run(argv, capture_output=True).returncode == 0
    assert sorted(p.name for p in out.iterdir()) == ["slow.ome.zarr", "slow.png"]
    np.testing.assert_array_equal(_read(out / "slow.ome.zarr"), _in_memory(models["single"], src, 32))
