"""Full-image quality of bpho's defaults against interpolation and against the limit.

    python benchmarks/quality.py [--minutes 2,5,10] [--arch unet[,rcan]] [--device auto] [--real] [--root DIR]
                                 [--out DIR]

Writes the demo data with 10 paired fields of 512 px HR (the default demo has 8) into a scratch
BPHO_ROOT and builds `paired_001` from them with a test split (`--set valid_fraction=0.2 --set
test_fraction=0.2`): 6 fields to train on, as the default demo's paired_001 has, 2 validation
fields (training scores them every epoch and registers the best epoch: they take part in a
choice) and 2 test fields that nothing trains or chooses on. For each budget it trains `bpho
train --minutes M` (`--arch NAME`, each of --arch) with every other setting at its default, then
scores the registered model with `bpho evaluate --dataset`'s default path: the whole **test**
images, through the model's own tiling and blending. It prints, on those images: PSNR / SSIM, their gain over bicubic and
over bilinear, FRC resolution in nm, and

- the **ceiling**: the same metrics for the noiseless HR render of the planted scene (the
  demo writes it to truth/paired_hr/): what a perfect model could output, since the acquired
  HR it is scored against is itself noisy;
- tiling: the 10-minute (last) model's PSNR with LR inference tiles of 32, 64, 128 and 256 px.

With --real it does the same (largest budget) on real fluorescence microscopy nobody here
wrote (benchmarks/realdata.py: F-actin of a neuron and stained nuclei, from PyPI wheels,
4x area-downsampled with Poisson-Gaussian noise; of its 6 fields 3 train, 1 validates and 2
are test fields, scored).

Targets (issue #13), demo, at most 10 minutes of 2-core CPU training: at least +4.5 dB
over bicubic, +3.5 dB over bilinear, FRC at most 280 nm, or within 0.5 dB of the ceiling.
The table and the evaluation figures go to --out (default: a temporary folder).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from scratch import out_dir, pick_device, scratch_root

HERE = Path(__file__).resolve().parent
DEMO_FIELDS = 10  # 6 to train on (as the default demo's paired_001), 2 to validate on, 2 to test on
DEMO_SPLIT = ["valid_fraction=0.2", "test_fraction=0.2"]
REAL_SPLIT = ["tile_sizes=64,128", "seed=1", "valid_fraction=0.17", "test_fraction=0.34"]  # 6 fields: 3 / 1 / 2


def ceiling(dataset: str, truth_dir: Path) -> dict:
    """The noiseless HR of each scored (test) image, moved as the dataset moved the HR, scored."""
    from bpho import datasets, evaluate, io
    from bpho.datasets.register import apply

    ds = datasets.open(dataset)
    shifts = {r["source"]: r.get("shift_hr_px", [0.0, 0.0]) for r in ds.manifest["sources"]}
    rows = []
    for pair in evaluate.dataset_pairs(dataset)[0]:
        clean = io.read(truth_dir / f"{Path(pair.name).name}.tif").data[:, 0, 0].astype(np.float32)
        dy, dx = shifts[pair.name]
        rows.append({"method": "model", **evaluate.score(apply(clean, (-dy, -dx))[0], pair)})
    return {k: float(np.mean([r[k] for r in rows])) for k in ("psnr", "ssim", "frc_nm")}


def tiling(model_uri: str, dataset: str, tiles=(32, 64, 128, 256)) -> dict:
    from bpho import evaluate, tracking
    from bpho.inference import load_model

    folder = tracking.download_model(model_uri)
    pairs = evaluate.dataset_pairs(dataset)[0]  # the test images, as `bpho evaluate --dataset` scores
    out = {}
    for t in tiles:
        rows, _ = evaluate.score_model(load_model(folder, device="cpu", tile=t, overlap=min(16, t // 2)), pairs)
        out[t] = float(np.mean([r["psnr"] for r in rows]))
    return out


def run(dataset: str, minutes: float, device: str, out: Path, arch: str = "unet") -> dict:
    """Train with the defaults for `minutes`, evaluate as `bpho evaluate --dataset` does (its test images)."""
    from bpho.evaluate import evaluate
    from bpho.config import TrainConfig
    from bpho.train import train

    start = time.time()
    result = train(TrainConfig(dataset=dataset, minutes=minutes, device=device, model={"arch": arch}),
                   progress=False, register=False)
    spent = time.time() - start
    ev = evaluate(result.model_uri, dataset=dataset, out_dir=out, device=device, progress=False, track=False)
    s = ev.summary
    if ev.provenance.split != "test" or ev.provenance.selection_used is not False:
        sys.exit(f"{dataset}: {ev.provenance.describe()}; the benchmark scores test images only")
    return {"minutes": minutes, "arch": arch, "scored": ev.provenance.describe(), "train_s": spent, "epochs": int(result.metrics["epochs"]),
            "best_epoch": int(result.metrics["best_epoch"]) + 1,
            "model": s["model"], "bicubic": s["bicubic"], "bilinear": s["bilinear"], "model_uri": result.model_uri}


def table(rows: list, ceil: dict | None) -> str:
    fmt = lambda v, f: format(v, f) if v is not None else "-"  # noqa: E731
    lines = [f"{'method':30s} {'PSNR':>6s} {'SSIM':>6s} {'dB/bicubic':>10s} {'dB/bilinear':>11s} "
             f"{'SSIM/bicubic':>12s} {'SSIM/bilinear':>13s} {'FRC nm':>7s}"]
    b, bl = rows[0]["bicubic"], rows[0]["bilinear"]
    entries = [("bicubic", b), ("bilinear", bl)]
    archs = {r.get("arch", "unet") for r in rows}
    entries += [(f"bpho{' ' + r['arch'] if len(archs) > 1 else ''} {r['minutes']:g} min, "
                 f"ep {r['best_epoch']}/{r['epochs']}", r["model"]) for r in rows]
    if ceil:
        entries.append(("ceiling (noiseless HR)", ceil))
    for name, m in entries:
        lines.append(f"{name:30s} {m['psnr']:6.2f} {m['ssim']:6.3f} {m['psnr'] - b['psnr']:+10.2f} "
                     f"{m['psnr'] - bl['psnr']:+11.2f} {m['ssim'] - b['ssim']:+12.3f} {m['ssim'] - bl['ssim']:+13.3f} "
                     f"{fmt(m['frc_nm'], '7.0f')}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", default="2,5,10", help="comma-separated training budgets")
    ap.add_argument("--arch", default="unet", help="architectures, comma-separated (e.g. unet,rcan): each trained "
                    "for every budget")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--real", action="store_true", help="also real fluorescence data (fetched with pip)")
    ap.add_argument("--root", help="scratch BPHO_ROOT (default: a temporary folder)")
    ap.add_argument("--out", help="folder for the table, JSON and figures (default: a temporary folder)")
    args = ap.parse_args()
    root = scratch_root(args.root, "quality")
    out = out_dir(args.out, "quality")

    from bpho import datasets, datasources
    from bpho.datasets import builder
    from bpho.demo import make_demo_data

    from bpho.config import DemoConfig

    demo = root / f"demo_{DEMO_FIELDS}"
    if not demo.exists():
        make_demo_data(demo, DemoConfig(paired_fields=DEMO_FIELDS), progress=False)
    if "demo_pairs_10" not in datasources.names():
        datasources.add("demo_pairs_10", [demo / "paired"], kind="paired", progress=False)
    if "paired_001" not in datasets.names() or not datasets.open("paired_001").has_test_images:
        builder.make("paired_001", datasource="demo_pairs_10", settings=DEMO_SPLIT, progress=False, track=False,
                     force=True)
    budgets = [float(m) for m in args.minutes.split(",")]
    device, where = pick_device(args.device)
    rows = [run("paired_001", m, device, out / f"demo_{a}_{m:g}min", a) for m in budgets for a in args.arch.split(",")]
    ceil = ceiling("paired_001", demo / "truth/paired_hr")
    tiles = tiling(rows[-1]["model_uri"], "paired_001")
    ds = datasets.open("paired_001")
    report = [f"demo paired_001 ({DEMO_FIELDS} fields), scored on {len(ds.test_images())} whole test images "
              f"({', '.join(p.name for p in ds.test_images())}; the epoch is chosen on "
              f"{len(ds.validation_images())} other validation images), training on {where}", table(rows, ceil),
              "inference tile (LR px) -> PSNR of the last model: "
              + ", ".join(f"{t}: {v:.2f}" for t, v in tiles.items()) + f" (spread {max(tiles.values()) - min(tiles.values()):.2f} dB)"]
    result = {"demo": rows, "ceiling": ceil, "tiling": tiles, "device": where}
    if args.real:
        sys.path.insert(0, str(HERE))
        from realdata import make_real_pairs

        if not (root / "real").exists():
            make_real_pairs(root / "real")
        meta = json.loads((root / "real/realdata.json").read_text())
        if "real_pairs" not in datasources.names():
            datasources.add("real_pairs", [root / "real"], kind="paired", progress=False)
        if "real_001" not in datasets.names() or not datasets.open("real_001").has_test_images:
            builder.make("paired_001", datasource="real_pairs", name="real_001", progress=False, track=False,
                         settings=REAL_SPLIT, force=True)
        real = [run("real_001", budgets[-1], device, out / "real")]
        sources = ", ".join(f"{s['package']} {s['version']} ({s['structure']})" for s in meta["sources"].values())
        report += [f"real fluorescence ({sources}), test fields (scored): "
                   + ", ".join(p.name for p in datasets.open("real_001").test_images()), table(real, None)]
        result["real"] = real
    text = "\n\n".join(report)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality.txt").write_text(text + "\n")
    (out / "quality.json").write_text(json.dumps(result, indent=2, default=str))
    print(f"\ntable, JSON and evaluation figures (crops, error maps, FRC) in {out}")


if __name__ == "__main__":
    main()
