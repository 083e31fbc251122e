"""Realism: registration and synthesis on demo pairs with effects no degradation model contains.

    python benchmarks/hard_demo.py [--fields 12] [--size 512] [--minutes 2] [--seed 0] [--root DIR] [--skip-training]

Writes the hard demo (`bpho demo-data --realism hard`: the sample turns, grows and deforms
between the acquisitions; aberrated anisotropic LR PSF, bleaching, scan-line jitter, saturation,
hot pixels; the planted truth in demo_truth.json and truth/paired_map/) into a scratch
BPHO_ROOT and prints:

1. registration against the planted truth, per transform: the error of the estimated mapping
   at every LR pixel (HR px, interior) against the motion map, and against it corrected for the
   PSF side lobe's centroid offset (on all pixels, and on pixels with structure), the worst
   pair's median (corrected), the truth-free residual the dataset builder measures, how many
   pairs it keeps (the recipe's max_residual_hr_px) and the worst corrected median of a kept
   pair; plus an oracle row with the planted scan-line jitter undone, which shows what the
   jitter costs. Target: median error under 0.5 HR px, no kept pair over 1.5 px;
2. how many pairs synthesis saves: the same U-Net and minutes trained on 2, 4 and 8 real
   pairs, alone and with synthetic pairs (`fitted` on those real pairs, applied to 6 HR-only
   fields; `--mix synth=1`), evaluated on the same 3 held-out real pairs (registered by flow).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

from scratch import scratch_root


def registration_table(demo: Path, scale: int) -> None:
    from scipy import ndimage

    from bpho import io
    from bpho.datasets.recipe import Recipe
    from bpho.datasets.register import (apply_registration, downsample, normalize, percentile_range, register_pair,
                                        residual)

    limit = Recipe.max_residual_hr_px
    truth = json.loads((demo / "demo_truth.json").read_text())["paired"]
    print("\n1. registration against the planted truth (HR px, LR pixels of the interior). Truth: the motion map;\n"
          "   corrected: minus the PSF side lobe's centroid offset (what content-based registration can see);\n"
          "   structure: pixels near something to register (HR smoothed over 2 LR px above 15 % of its bright level)")
    print(f"{'transform':22s} {'median':>6s} {'p90':>5s} {'corrected':>9s} {'structure':>9s} {'worst pair':>10s} "
          f"{'residual':>8s} {f'kept (<= {limit})':>14s} {'worst kept':>10s}")
    files = sorted((demo / "paired/lr").glob("*.czi"))
    rows = [(t, t, False) for t in ("translation", "similarity", "flow", "auto")]
    rows.append(("flow, jitter undone *", "flow", True))
    for label, transform, dejitter in rows:
        errors, corrected, structure, medians, residuals = [], [], [], [], []
        for lr_path in files:
            lr = io.read(lr_path).data[0, 0, 0].astype(np.float32)
            hr = io.read(demo / "paired/hr" / lr_path.name).data[0, 0, 0].astype(np.float32)
            record = truth[lr_path.stem]
            if dejitter:  # oracle: the planted scan-line jitter undone, to show what it costs
                lr = np.stack([ndimage.shift(row, -d, order=3, mode="nearest")
                               for row, d in zip(lr, record["jitter_lr_px"])])
            motion = np.load(demo / "truth/paired_map" / f"{lr_path.stem}.npy")
            lr_n, hr_n = (normalize(a, *percentile_range(a, 2, 99.8)) for a in (lr, hr))
            reg = register_pair(lr_n, hr_n, scale, transform)
            est = reg.lr_map(lr.shape) * scale + (scale - 1) / 2
            b = max(2, -(-reg.margin // scale))  # LR px: the border the registration makes up
            inner = (slice(None), slice(b, -b), slice(b, -b))
            err = np.hypot(*(est - motion)[inner])
            offset = np.asarray(record["psf"]["centroid_offset_hr_px"])[:, None, None]
            err_c = np.hypot(*(est - motion + offset)[inner])
            smooth = ndimage.gaussian_filter(downsample(hr_n, scale), 2.0)
            near = (smooth > 0.15 * np.percentile(smooth, 99.5))[inner[1:]]
            errors.append(err.ravel())
            corrected.append(err_c.ravel())
            structure.append(err_c[near])
            medians.append(float(np.median(err_c)))
            residuals.append(residual(lr_n, apply_registration(hr_n[None], reg)[0], scale)["median_hr_px"])
        e = np.concatenate(errors)
        kept = [m for m, r in zip(medians, residuals) if r is not None and r <= limit]
        worst = f"{max(kept):10.2f}" if kept else f"{'-':>10s}"
        c, near_c = np.concatenate(corrected), np.concatenate(structure)
        print(f"{label:22s} {np.median(e):6.2f} {np.percentile(e, 90):5.2f} {np.median(c):9.2f} "
              f"{np.median(near_c):9.2f} {max(medians):10.2f} {np.median(residuals):8.2f} "
              f"{len(kept):>8d} of {len(files)} {worst}")
    print("* an oracle, not something bpho can do: the LR's planted per-line jitter shifted back before registering")


def pairs_saved_table(demo: Path, root: Path, minutes: float) -> None:
    from bpho import datasources, synthesize as sy
    from bpho.datasets import builder
    from bpho.evaluate import evaluate
    from bpho.config import TrainConfig
    from bpho.train import train

    files = sorted(p.stem for p in (demo / "paired/lr").glob("*.czi"))
    valid, train_stems = files[:3], files[3:]

    def subset(name, stems):
        folder = root / "subsets" / name
        for side in ("lr", "hr"):
            (folder / side).mkdir(parents=True, exist_ok=True)
            for stem in stems:
                shutil.copy(demo / "paired" / side / f"{stem}.czi", folder / side)
        datasources.add(name, [folder], kind="paired", progress=False)

    subset("hard_valid", valid)
    datasources.add("hard_hr_only", [demo / "hr_only"], kind="hr", progress=False)
    flow = ["transform=flow", "tile_sizes=128", "tiles_per_image=48", "valid_fraction=0"]
    rows = []
    for n in (2, 4, 8):
        name = f"hard_{n}"
        subset(name, train_stems[:n])
        builder.make("paired_001", datasource=name, name=name, settings=flow, progress=False, track=False)
        deg = sy.degradation("fitted", fit_on=name, recipe_settings=["transform=flow", "valid_fraction=0"])
        sy.synthesize("hard_hr_only", deg, f"synth_{n}", recipe_settings=flow[1:], force=True, progress=False,
                      track=False)  # synthetic LR is made in register with its HR: translation
        for mix in ((), (f"synth_{n}=1",)):
            result = train(TrainConfig(dataset=name, minutes=minutes, mix=mix, model_name=f"{name}{'-mix' if mix else ''}"),
                           progress=False)
            s = evaluate(result.model_uri, datasource="hard_valid", transform="flow", progress=False, track=False).summary
            rows.append((n, "real + synthetic" if mix else "real", s["model"]["psnr"], s["model"]["ssim"],
                         s["gain_psnr"]["mean"], s["bicubic"]["psnr"]))
            print(f"   {rows[-1]}", flush=True)
    print(f"\n2. pairs saved by synthesis ({minutes:g} min each, evaluated on 3 held-out real pairs, registered by flow)")
    print(f"{'real pairs':>10s} {'trained on':18s} {'PSNR':>7s} {'SSIM':>6s} {'gain':>7s} {'bicubic':>8s}")
    for n, what, psnr, ssim, gain, bic in rows:
        print(f"{n:10d} {what:18s} {psnr:7.2f} {ssim:6.3f} {gain:+7.2f} {bic:8.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fields", type=int, default=12)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--root", help="scratch BPHO_ROOT (default: a temporary folder)")
    ap.add_argument("--seed", type=int, default=0, help="the demo generator's seed (1: a second hard demo)")
    ap.add_argument("--skip-training", action="store_true")
    args = ap.parse_args()
    root = scratch_root(args.root, "hard")
    from bpho.config import DemoConfig
    from bpho.demo import make_demo_data

    demo = root / "demo"
    if not demo.exists():
        make_demo_data(demo, DemoConfig(seed=args.seed, realism="hard", paired_fields=args.fields,
                                        paired_size=args.size, movies=0, hr_only_fields=6, denoise_fields=0),
                       progress=False)
    truth = json.loads((demo / "demo_truth.json").read_text())
    registration_table(demo, truth["config"]["scale"])
    if not args.skip_training:
        pairs_saved_table(demo, root, args.minutes)
    print(f"\nscratch root: {root}")


if __name__ == "__main__":
    main()
