"""What whole-image validation costs on large fields, with and without `--valid-share`.

    python benchmarks/validation_share.py [--fields 6] [--size 2048] [--minutes 2] [--shares 1,0.25]
                                          [--device auto] [--root DIR] [--out DIR]

Writes demo pairs of `--size` px HR into a scratch BPHO_ROOT and builds `paired_001` from them
with 2 validation fields and 1 test field (whole images, as the recipe keeps them), then trains
bpho's defaults for `--minutes` once per `--valid-share` value and prints, per run: the epochs,
how many of them were validated, the seconds in training steps and in validation (the run's own
`time_steps_s` / `time_validation_s`), validation's share of the two, the best validation epoch
and the registered model's PSNR on the test field (`bpho evaluate --dataset`), beside bicubic.
Issue #23 measured 29.8 s of validation against 24.5 s of steps per epoch on 2048 px fields.
The limit: validation's share at most the `--valid-share` asked for (plus the last epoch's).
"""

from __future__ import annotations

import argparse
import json
import time

from scratch import out_dir, pick_device, scratch_root


def run(dataset: str, minutes: float, share: float, device: str, out) -> dict:
    """Train for `minutes` with `valid_share` = `share`; the run's timings and its test score."""
    from mlflow import MlflowClient

    from bpho.config import TrainConfig
    from bpho.evaluate import evaluate
    from bpho.train import train

    start = time.time()
    result = train(TrainConfig(dataset=dataset, minutes=minutes, valid_share=share, device=device), progress=False,
                   register=False)
    spent = time.time() - start
    client = MlflowClient()
    metrics = client.get_run(result.run_id).data.metrics
    validated = len(client.get_metric_history(result.run_id, "valid_psnr"))
    ev = evaluate(result.model_uri, dataset=dataset, out_dir=out / f"share_{share:g}", device=device, progress=False,
                  track=False)
    steps, valid = metrics["time_steps_s"], metrics["time_validation_s"]
    return {"share": share, "train_s": spent, "epochs": int(result.metrics["epochs"]), "validated": validated,
            "steps_s": steps, "validation_s": valid, "validation_share": valid / (steps + valid),
            "best_epoch": int(result.metrics["best_epoch"]) + 1, "test_psnr": ev.summary["model"]["psnr"],
            "bicubic_psnr": ev.summary["bicubic"]["psnr"], "scored": ev.provenance.describe()}


def table(rows: list) -> str:
    """One line per run."""
    lines = [f"{'valid share':>11s} {'train s':>8s} {'epochs':>6s} {'validated':>9s} {'steps s':>8s} {'valid s':>8s} "
             f"{'valid/time':>10s} {'best ep':>7s} {'test PSNR':>9s} {'bicubic':>8s}"]
    for r in rows:
        lines.append(f"{r['share']:11g} {r['train_s']:8.1f} {r['epochs']:6d} {r['validated']:9d} {r['steps_s']:8.1f} "
                     f"{r['validation_s']:8.1f} {r['validation_share']:10.0%} {r['best_epoch']:7d} "
                     f"{r['test_psnr']:9.2f} {r['bicubic_psnr']:8.2f}")
    return "\n".join(lines)


def main() -> None:
    """Make the demo and dataset once, run every share, print and write the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fields", type=int, default=6, help="demo pairs: 3 train, 2 validate, 1 is the test field")
    ap.add_argument("--size", type=int, default=2048, help="HR px per side")
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--shares", default="1,0.25", help="--valid-share values, comma-separated")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--root")
    ap.add_argument("--out")
    a = ap.parse_args()
    root = scratch_root(a.root, "validation-share")
    out = out_dir(a.out, "validation-share")

    from bpho import datasets, datasources
    from bpho.config import DemoConfig
    from bpho.datasets import builder
    from bpho.demo import make_demo_data

    demo = root / f"demo_{a.fields}x{a.size}"
    if not demo.exists():
        print(f"making {a.fields} demo pairs of {a.size} px ...", flush=True)
        make_demo_data(demo, DemoConfig(paired_fields=a.fields, paired_size=a.size, movies=0, hr_only_fields=0,
                                        denoise_fields=0), progress=False)
    if "big_pairs" not in datasources.names():
        datasources.add("big_pairs", [demo / "paired"], kind="paired", progress=False)
    valid, test = 2 / a.fields, 1 / a.fields
    if "paired_001" not in datasets.names():
        builder.make("paired_001", datasource="big_pairs", progress=False, track=False, force=True,
                     settings=[f"valid_fraction={valid:.4f}", f"test_fraction={test:.4f}"])
    ds = datasets.open("paired_001")
    device, where = pick_device(a.device)
    head = (f"demo paired_001: {len(ds.validation_images())} validation and {len(ds.test_images())} test field(s) of "
            f"{a.size} px HR, {a.minutes:g} min of training each, on {where}")
    print(head, flush=True)
    rows = [run("paired_001", a.minutes, float(s), device, out) for s in a.shares.split(",")]
    text = head + "\n" + table(rows)
    print("\n" + text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "validation_share.txt").write_text(text + "\n")
    (out / "validation_share.json").write_text(json.dumps({"device": where, "rows": rows}, indent=1))
    print(f"wrote {out / 'validation_share.txt'}")


if __name__ == "__main__":
    main()
