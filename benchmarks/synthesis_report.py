"""Which synthesis is right? On the demo data, where the true degradation is known.

    python benchmarks/synthesis_report.py [--epochs 10] [--trials 100] [--tile-size 128] [--encoder resnet34]

Writes the default demo pairs (8 fields of 512 px HR) into a scratch BPHO_ROOT, registers
them, then prints two tables:

1. `fitted` against the truth the demo planted (demo_truth.json): the extra blur
   sqrt(FWHM_LR^2 - FWHM_HR^2), the gain, photons, and the LR noise standard deviation at
   the median and 99th-percentile LR intensity, with the relative error (target: 15%);
2. `bpho tune degradation-report`: the same U-Net and budget trained on the real pairs and
   on pairs synthesized by classic, physical (the best of --trials study trials; 0:
   their defaults) and fitted, all evaluated on the same held-out real pairs (target: fitted
   within 0.5 dB PSNR of real).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from scratch import scratch_root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--tile-size", type=int, default=128)
    ap.add_argument("--encoder", default="resnet34")
    ap.add_argument("--root", help="scratch BPHO_ROOT (default: a temporary folder)")
    args = ap.parse_args()
    root = scratch_root(args.root, "synth")

    from bpho import datasources, synthesize as sy, tune
    from bpho.degrade import fitted
    from bpho.config import DemoConfig
    from bpho.demo import make_demo_data

    demo = root / "demo"
    if not demo.exists():
        make_demo_data(demo, DemoConfig(movies=0, hr_only_fields=0, denoise_fields=0), progress=False)
    datasources.add("demo_pairs", [demo / "paired"], kind="paired", progress=False)
    truth = json.loads((demo / "demo_truth.json").read_text())
    lr_t, hr_t = truth["lr"], truth["hr"]

    pairs = sy.registered_pairs("demo_pairs", split="train")
    fit = fitted.fit(pairs, scale=truth["config"]["scale"])
    p = fit.params
    levels = np.percentile(np.concatenate([q.lr.ravel() for q in pairs]), (50, 99))
    true_std = [np.sqrt(lr_t["gain"] * (v - lr_t["offset"]) + lr_t["read_noise"] ** 2) for v in levels]
    rows = [("extra blur FWHM (nm)", np.sqrt(lr_t["fwhm_nm"] ** 2 - hr_t["fwhm_nm"] ** 2), p.psf_fwhm_nm),
            ("gain (ADU/photon)", lr_t["gain"], p.gain),
            ("photons at reference", lr_t["photons"], p.photons),
            (f"noise std at median LR ({levels[0]:.0f} ADU)", true_std[0], fit.noise_std(levels[0])),
            (f"noise std at 99th pct LR ({levels[1]:.0f} ADU)", true_std[1], fit.noise_std(levels[1]))]
    rows_truth = [t for _, t, _ in rows]
    print(f"fitted on {len(pairs)} training pairs (mapping explains {fit.explained:.1%} of LR variance)")
    print(f"{'parameter':38s} {'truth':>8s} {'fitted':>8s} {'error':>7s}")
    for name, t, f in rows:
        print(f"{name:38s} {t:8.2f} {f:8.2f} {100 * (f - t) / t:+6.1f}%")

    start = time.time()
    result = tune.report(tune.DegradationReportConfig("demo_pairs", epochs=args.epochs, tile_size=args.tile_size,
                                                      trials=args.trials, model={"encoder": args.encoder},
                                                      out=str(root / "report")), progress=False)
    print(f"\ntrained 4 models x {args.epochs} epochs ({args.encoder}, tile {args.tile_size}) in "
          f"{time.time() - start:.0f} s; evaluated on the held-out real pairs:")
    print(tune.report_table(result))
    rows = {r.training_pairs: r for r in result.rows}
    if args.trials:  # what the study found; gain and offset are not searched, so compare noise relative to signal
        q = rows["physical"].degradation["parameters"]
        print(f"searched physical ({args.trials} trials): extra blur {q['psf_fwhm_nm']:.0f} nm (truth {rows_truth[0]:.0f}), "
              f"photons {q['photons']:.1f} (truth {lr_t['photons']}), read noise / (gain x photons) "
              f"{q['read_noise'] / (q['gain'] * q['photons']):.4f} (truth "
              f"{lr_t['read_noise'] / (lr_t['gain'] * lr_t['photons']):.4f})")
    print(f"fitted - real: {rows['fitted'].psnr - rows['real'].psnr:+.2f} dB PSNR "
          f"(target: within 0.5 dB); figure: {root / 'report' / 'report.png'}")


if __name__ == "__main__":
    main()
