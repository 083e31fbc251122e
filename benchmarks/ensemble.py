"""8-fold flip/rotation self-ensembling at prediction (`--ensemble`): its gain and its cost.

    python benchmarks/ensemble.py [--minutes 2 | --epochs N] [--model URI] [--device auto] [--repeat 3] [--root DIR] [--out DIR]

Builds the demo data and `paired_001` exactly as benchmarks/quality.py does (10 paired fields
of 512 px HR: 6 train, 2 validation fields that choose the epoch, 2 test fields nothing trains
or chooses on), trains `bpho train --minutes M` (or `--epochs N`: the same model whatever the
machine's load) with the defaults, or takes `--model` (a model URI on MLFLOW_TRACKING_URI
trained on that dataset), then scores the **test** images with
`bpho.evaluate.evaluate` twice: the plain prediction and `ensemble=True` (each inference tile
predicted in its 8 flips and 90-degree rotations, turned back, averaged). It prints PSNR,
SSIM, their gain over bicubic (with the 95% bootstrap interval over images), FRC, the
prediction time in seconds per HR megapixel (the model's own tiling and blending, the median
of `--repeat` timed passes over the test images after a warm-up, scoring excluded) and the
ratio of the times, with bicubic and the ceiling (the noiseless HR render, quality.py's) beside.
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
sys.path.insert(0, str(HERE))
from quality import DEMO_FIELDS, DEMO_SPLIT, ceiling  # noqa: E402

DATASET = "paired_001"


def prepare(root: Path) -> Path:
    """quality.py's demo data and test split under `root`; returns the demo folder."""
    from bpho import datasets, datasources
    from bpho.config import DemoConfig
    from bpho.datasets import builder
    from bpho.demo import make_demo_data

    demo = root / f"demo_{DEMO_FIELDS}"
    if not demo.exists():
        make_demo_data(demo, DemoConfig(paired_fields=DEMO_FIELDS), progress=False)
    if "demo_pairs_10" not in datasources.names():
        datasources.add("demo_pairs_10", [demo / "paired"], kind="paired", progress=False)
    if DATASET not in datasets.names() or not datasets.open(DATASET).has_test_images:
        builder.make(DATASET, datasource="demo_pairs_10", settings=DEMO_SPLIT, progress=False, track=False, force=True)
    return demo


def seconds_per_megapixel(model_uri: str, device: str, ensemble: bool, repeat: int) -> float:
    """Median over `repeat` passes of the time to predict every test frame, per HR megapixel."""
    import torch

    from bpho import evaluate, tracking
    from bpho.inference import load_model

    model = load_model(tracking.download_model(model_uri), device=device, ensemble=ensemble)
    pairs = evaluate.dataset_pairs(DATASET, "test")[0]
    megapixels = sum(p.lr.size for p in pairs) * model.scale ** 2 / 1e6
    model.predict(pairs[0].lr[:, :32, :32] if model.frames > 1 else pairs[0].lr[0, :32, :32])  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        for pair in pairs:
            for _frame in model.predict_frames(pair.lr):
                pass
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) / megapixels


def table(scores: dict, speed: dict, ceil: dict) -> str:
    b = scores[False]["bicubic"]
    lines = [f"{'method':22s} {'PSNR':>6s} {'SSIM':>6s} {'dB/bicubic (95% CI)':>22s} {'SSIM/bicubic':>12s} "
             f"{'FRC nm':>7s} {'s/MP':>7s} {'time':>6s}"]

    def row(name, m, gain="", s_mp=None, ratio=None):
        frc = f"{m['frc_nm']:7.0f}" if m.get("frc_nm") is not None else f"{'-':>7s}"
        lines.append(f"{name:22s} {m['psnr']:6.2f} {m['ssim']:6.3f} {gain or format(m['psnr'] - b['psnr'], '+.2f'):>22s} "
                     f"{m['ssim'] - b['ssim']:+12.3f} {frc} {'-' if s_mp is None else format(s_mp, '.2f'):>7s} "
                     f"{'-' if ratio is None else format(ratio, '.1f') + 'x':>6s}")

    row("bicubic", b)
    for ens, name in ((False, "bpho"), (True, "bpho --ensemble")):
        s, g = scores[ens], scores[ens]["gain_psnr"]
        ci = f" ({g['ci95_low']:+.2f}..{g['ci95_high']:+.2f})" if g["ci95_low"] is not None else ""
        row(name, s["model"], f"{g['mean']:+.2f}{ci}", speed[ens], speed[ens] / speed[False])
    row("ceiling (noiseless HR)", ceil)
    plain, ens = scores[False]["model"], scores[True]["model"]
    lines.append(f"ensemble gain: {ens['psnr'] - plain['psnr']:+.3f} dB PSNR, {ens['ssim'] - plain['ssim']:+.4f} SSIM, "
                 f"for {speed[True] / speed[False]:.1f}x the prediction time")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=2.0, help="training budget (ignored with --model)")
    ap.add_argument("--epochs", type=int, help="train this many epochs instead of --minutes")
    ap.add_argument("--model", help="a model URI trained on the demo's paired_001 (default: train one)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeat", type=int, default=3, help="timed passes over the test images (median)")
    ap.add_argument("--root", help="scratch BPHO_ROOT (default: a temporary folder)")
    ap.add_argument("--out", help="folder for the table, JSON and figures (default: a temporary folder)")
    args = ap.parse_args()
    root = scratch_root(args.root, "ensemble")
    out = out_dir(args.out, "ensemble")

    from bpho import datasets
    from bpho.config import TrainConfig
    from bpho.evaluate import evaluate
    from bpho.train import train

    demo = prepare(root)
    device, where = pick_device(args.device)
    model_uri, trained = args.model, ""
    if model_uri is None:
        start = time.time()
        budget = {"epochs": args.epochs} if args.epochs else {"minutes": args.minutes}
        result = train(TrainConfig(dataset=DATASET, device=device, **budget), progress=False, register=False)
        model_uri = result.model_uri
        given = f"--epochs {args.epochs}" if args.epochs else f"--minutes {args.minutes:g}"
        trained = (f", trained {time.time() - start:.0f} s ({given}, best epoch "
                   f"{int(result.metrics['best_epoch']) + 1} of {int(result.metrics['epochs'])})")
    scores, speed, scored = {}, {}, ""
    for ensemble in (False, True):
        ev = evaluate(model_uri, dataset=DATASET, out_dir=out / ("ensemble" if ensemble else "plain"), device=device,
                      progress=False, track=False, ensemble=ensemble)
        if ev.provenance.split != "test" or ev.provenance.selection_used is not False:
            sys.exit(f"{DATASET}: {ev.provenance.describe()}; the benchmark scores test images only")
        scores[ensemble], scored = ev.summary, ev.provenance.describe()
        speed[ensemble] = seconds_per_megapixel(model_uri, device, ensemble, args.repeat)
    ceil = ceiling(DATASET, demo / "truth/paired_hr")
    test = datasets.open(DATASET).test_images()
    text = (f"demo {DATASET} ({DEMO_FIELDS} fields), {len(test)} test images ({', '.join(p.name for p in test)}); "
            f"{scored}\nmodel {model_uri}{trained}; inference on {where}, default tiles; s/MP: seconds of "
            f"prediction per HR megapixel, median of {args.repeat}\n\n{table(scores, speed, ceil)}")
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ensemble.txt").write_text(text + "\n")
    (out / "ensemble.json").write_text(json.dumps({"model": model_uri, "device": where, "ceiling": ceil,
                                                   "scores": {str(k).lower(): v for k, v in scores.items()},
                                                   "seconds_per_megapixel": {str(k).lower(): v for k, v in speed.items()}},
                                                  indent=2, default=str))
    print(f"\ntable, JSON and evaluation figures in {out}")


if __name__ == "__main__":
    main()
