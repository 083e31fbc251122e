"""Dataset build throughput on demo pairs at a realistic size, against plain read + write.

    python benchmarks/dataset_build.py [--fields 20] [--size 2048] [--work DIR]

Prints input MB/s and tiles/s of `bpho dataset make paired_001` (one process with figures, the
default of a process per core, and --no-png, with their digests, which must agree), the time of a plain
read of the same CZI files plus a plain write of the same number of output bytes, and
their ratio (1.0 would mean the build costs no more than its I/O). The demo files are
generated once into --work and reused.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fields", type=int, default=20)
    p.add_argument("--size", type=int, default=2048, help="HR side in pixels")
    p.add_argument("--tiles-per-image", type=int, default=16)
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "bpho-bench-dataset"))
    a = p.parse_args()

    work = Path(a.work) / f"{a.fields}x{a.size}"
    os.environ["BPHO_ROOT"] = str(work / "root")
    from bpho import datasources, io
    from bpho.datasets import builder
    from bpho.datasets.register import register_pair
    from bpho.paths import remove_tree
    from bpho.config import DemoConfig
    from bpho.demo import make_demo_data

    demo = work / "demo"
    if not demo.exists():
        t = time.perf_counter()
        make_demo_data(demo, DemoConfig(paired_fields=a.fields, paired_size=a.size, movies=0, hr_only_fields=0,
                                        denoise_fields=0))
        print(f"(generated {a.fields} demo pairs of {a.size} px HR in {time.perf_counter() - t:.0f} s)")
    if "bench" not in datasources.names():
        datasources.add("bench", [demo / "paired"], kind="paired")
    files = datasources.open("bench").files
    in_mb = sum(f.stat().st_size for f in files) / 1e6

    remove_tree(work / "root/datasets")
    variants = {}  # name -> (seconds, digest): one process with figures (bpho 0.2.0), the default, no figures
    for label, kwargs in (("1 process, PNGs", {"workers": 1}), ("default (a process per core), PNGs", {}),
                          ("default, --no-png", {"pngs": False})):
        t = time.perf_counter()
        ds = builder.make("paired_001", datasource="bench", settings=[f"tiles_per_image={a.tiles_per_image}"],
                          progress=False, track=False, force=True, **kwargs)
        variants[label] = (time.perf_counter() - t, ds.digest)
    build = variants["default (a process per core), PNGs"][0]
    tiles = sum(i["train"] + i["valid"] for i in ds.manifest["tiles"].values())
    out_bytes = sum(f.stat().st_size for f in (ds.path / "tiles").rglob("*.npy"))

    t = time.perf_counter()
    for f in files:
        io.read(f)
    read = time.perf_counter() - t
    t = time.perf_counter()
    with open(work / "plain_write.bin", "wb") as fh:
        fh.write(np.zeros(out_bytes, np.uint8).tobytes())
        fh.flush()
        os.fsync(fh.fileno())
    write = time.perf_counter() - t
    (work / "plain_write.bin").unlink()

    pair = datasources.open("bench").pairs[0]
    lr, hr = io.read(pair.lr).data[0, 0, 0].astype(np.float32), io.read(pair.hr).data[0, 0, 0].astype(np.float32)
    t = time.perf_counter()
    register_pair(lr, hr, 4)
    reg = time.perf_counter() - t

    print(f"\ndataset build, {a.fields} pairs, HR {a.size}x{a.size}, LR {a.size // 4}x{a.size // 4}, "
          f"tile sizes {ds.tile_sizes}, {a.tiles_per_image} tiles/image/size")
    rows = [
        ("input (CZI, LR+HR)", f"{in_mb:.1f} MB"),
        ("output tiles", f"{tiles} tiles, {out_bytes / 1e6:.1f} MB"),
        ("build time", f"{build:.2f} s"),
        ("build throughput", f"{in_mb / build:.1f} MB/s in, {tiles / build:.0f} tiles/s"),
        ("plain read of the inputs", f"{read:.2f} s"),
        ("plain write of the output bytes", f"{write:.2f} s"),
        ("build / (read + write)", f"{build / (read + write):.2f}x"),
        ("registration of one pair", f"{reg:.2f} s ({reg * a.fields / build:.0%} of the build for all pairs)"),
    ]
    serial = variants["1 process, PNGs"][0]
    for label, (seconds, digest) in variants.items():
        rows.append((f"build: {label}", f"{seconds:.2f} s, {in_mb / seconds:.1f} MB/s, {serial / seconds:.2f}x "
                                          f"the 1-process build, digest {digest[:12]}"))
    rows.append(("same digest whatever the workers and figures", str(len({d for _, d in variants.values()}) == 1)))
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


if __name__ == "__main__":
    main()
