"""Large images: `bpho predict` on LR images of 2048, 4096 and 8192 px square and a long movie, with the
peak resident memory of the whole process tree beside the output's size.

    python benchmarks/big_predict.py [--sizes 2048,4096,8192] [--movie 1024x300] [--scale 4]
                                     [--formats ome-zarr] [--workers 2048:1,2048:2] [--model FOLDER]

Each case writes a uint16 TIFF as input (read lazily, memory-mapped), runs
`bpho predict` in a subprocess and samples the resident memory of it and all its children (Dask
workers included) every 50 ms. Printed per case: HR output size (float32), wall time (model
load and process start included), HR megapixels per second, peak resident memory, peak / output
size, and how far bpho's percentiles of the input (exact up to 16.8 M pixels, else a subsample)
are from the exact ones, in % of the exact 2-99.8 % span. Target: the 8192 px image (4.3 GB of
float32 HR at scale 4) under 1.5 GB peak. Memory follows `--block`, not the network; the default
network here is a small RCAN (random weights) so that the CPU gets through 8192 px in minutes:
MP/s is that network's, pass --model for a trained one.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import tifffile

TARGET_GB = {8192: 1.5}


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc] + proc.children(recursive=True):
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run(argv: list) -> tuple:
    """(wall seconds, peak RSS bytes of the process tree) of `argv`; its stderr on failure."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ps, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(ps))
        time.sleep(0.05)
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"{' '.join(map(str, argv))} failed:\n{proc.stderr.read()[-3000:]}")  # type: ignore[union-attr]
    return wall, peak


def make_input(path: Path, frames: int, side: int, seed: int = 0) -> Path:
    """A uint16 TIFF of `frames` x side x side: shot noise on a gradient with bright spots,
    written frame by frame (the benchmark itself never holds more than one frame)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(100, 1500, side, dtype=np.float32)

    def frames_():
        for _ in range(frames):
            frame = rng.poisson(ramp[None, :] * np.ones((side, 1), np.float32)).astype(np.uint16)
            spots = rng.integers(0, side, (side // 8, 2))
            frame[spots[:, 0], spots[:, 1]] = 20000
            yield frame

    tifffile.imwrite(path, frames_(), shape=(frames, side, side), dtype=np.uint16,
                     metadata={"axes": "TYX"}, bigtiff=True)
    return path


def percentile_error(path: Path) -> float:
    """|bpho's percentiles - exact| as % of the exact span, the worse of the two ends."""
    from bpho import io
    from bpho.predict import normalisation

    img = io.open_image(path)
    series = img.data[:, 0, 0]
    lo, span = normalisation(series, 2, 99.8)
    exact = np.percentile(np.asarray(series), (2, 99.8))
    return 100 * max(abs(lo - exact[0]), abs(lo + span - exact[1])) / (exact[1] - exact[0])


def model_folder(work: Path, scale: int) -> Path:
    from bpho.inference import save_model
    from bpho.models import build_model
    from bpho.models.rcan_config import RCANConfig

    cfg = RCANConfig(scale=scale, features=8, groups=1, blocks=1, reduction=4).to_dict()
    return save_model(work / "model", build_model(cfg), {"model": cfg, "normalization": {
        "percentile_low": 2, "percentile_high": 99.8}})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="2048,4096,8192", help="LR sides of single images")
    p.add_argument("--movie", default="1024x300", help="SIDExFRAMES of the movie; '' for none")
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--formats", default="ome-zarr", help="comma-separated: ome-zarr, ome-tiff, imagej")
    p.add_argument("--workers", default="2048:1,2048:2", help="SIZE:N cases run with --dask local:N")
    p.add_argument("--model", help="a bpho model folder (default: a small random RCAN at --scale)")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    a = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bpho-big-"))
    model = Path(a.model) if a.model else model_folder(work, a.scale)
    import json

    scale = json.loads((model / "bpho_model.json").read_text())["model"]["scale"]
    cases = [(int(s), 1, f, None) for s in a.sizes.split(",") if s for f in a.formats.split(",")]
    if a.movie:
        side, frames = (int(v) for v in a.movie.split("x"))
        cases.append((side, frames, a.formats.split(",")[0], None))
    cases += [(int(s), 1, a.formats.split(",")[0], int(n)) for s, n in (c.split(":") for c in a.workers.split(",") if c)]
    print(f"model: {model}, scale {scale}; block {1024} LR px; cpu count {psutil.cpu_count()}; "
          f"{psutil.virtual_memory().total / 2 ** 30:.0f} GiB RAM")
    head = (f"{'input (LR)':>16s} {'format':>9s} {'dask':>5s} {'output GB':>9s} {'wall s':>7s} {'MP/s':>6s} "
            f"{'peak GB':>8s} {'peak/out':>8s} {'target GB':>9s} {'pct err %':>9s}")
    print(head)
    print("-" * len(head))
    for side, frames, fmt, workers in cases:
        src = work / f"lr_{side}_{frames}.tif"
        if not src.exists():
            make_input(src, frames, side)
        out = work / "out"
        shutil.rmtree(out, ignore_errors=True)
        argv = [sys.executable, "-m", "bpho.cli", "predict", "--model", str(model), str(src), "--out", str(out),
                "--format", fmt, "--device", "cpu"] + (["--dask", f"local:{workers}"] if workers else [])
        wall, peak = run(argv)
        hr_px = frames * (side * scale) ** 2
        out_gb = hr_px * 4 / 1e9
        target = TARGET_GB.get(side) if frames == 1 and not workers else None
        name = f"{side}x{side}" + (f" x{frames}" if frames > 1 else "")
        print(f"{name:>16s} {fmt:>9s} {workers or '-':>5} {out_gb:9.2f} {wall:7.1f} {hr_px / 1e6 / wall:6.2f} "
              f"{peak / 1e9:8.2f} {peak / 1e9 / out_gb:8.2f} {target or '-':>9} {percentile_error(src):9.3f}",
              flush=True)
        shutil.rmtree(out, ignore_errors=True)
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
