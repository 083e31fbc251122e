"""Training choices judged on real data, on the sources defaults may be chosen on and nothing else.

    python benchmarks/real_choices.py [--minutes 2] [--seeds 0,1]
                                      [--variants '{"loss": "l1"}' '{"loss": "mse"}' ...] [--root DIR] [--out DIR]

`peers.py --real` reports bpho on `real_001`'s test fields; a default changed because of those
numbers would be chosen on them. Here the choice sees only the ``tune`` sources of
`realdata.py` (neuron F-actin, stardist's nuclei), cut into the same 128 px fields but split on
their own (`tune_001`: split seed 3, 30 % validation fields), and each variant (TrainConfig
fields as JSON, trained `--minutes` per seed) is scored by its **last epoch** (as peers.py
reports every method) on the validation fields of `tune_001` that are **not** test fields of
`real_001`, whole, by bpho's evaluation. Prints per variant and seed the PSNR, the mean over
seeds, and bicubic on the same fields.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from scratch import out_dir, scratch_root

HERE = Path(__file__).resolve().parent
SPLIT = ["tile_sizes=64", "seed=3", "valid_fraction=0.3"]


def last_epoch_psnr(run_id: str, pairs) -> float:
    """Mean PSNR of the run's last.pt over `pairs` (frame 0, whole images)."""
    import torch

    from bpho import evaluate, tracking
    from bpho.inference import load_model
    from bpho.train import checkpoint_path

    model = load_model(tracking.download_model(f"runs:/{run_id}/model"), device="cpu")
    last = torch.load(checkpoint_path(run_id, "last"), map_location="cpu", weights_only=True)
    model.net.load_state_dict(last["model"])
    return float(np.mean([evaluate.score(model.predict(p.lr[0]), p)["psnr"] for p in pairs]))


def main() -> None:
    """Build tune_001, train every variant for every seed, print and write the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--variants", nargs="+", default=['{}', '{"loss": "mse"}', '{"batch_size": 16}'],
                    help="TrainConfig fields as JSON, one variant each ({} : the defaults)")
    ap.add_argument("--root")
    ap.add_argument("--out")
    a = ap.parse_args()
    root = scratch_root(a.root, "real-choices")
    out = out_dir(a.out, "real-choices")

    sys.path.insert(0, str(HERE))
    from peers import REAL_FIELD, setup_real
    from realdata import DEFAULT_SOURCES, make_real_pairs

    from bpho import datasets, datasources, evaluate
    from bpho.config import TrainConfig
    from bpho.datasets import builder
    from bpho.train import train

    setup_real(root, "real_001")  # only to know which fields peers.py scores
    scored = {Path(p.name).name for p in datasets.open("real_001").test_images()}
    folder = root / f"tune_{REAL_FIELD}"
    if not (folder / "realdata.json").is_file():
        make_real_pairs(folder, field_size=REAL_FIELD, sources=list(DEFAULT_SOURCES), force=True)
    if "tune_pairs" not in datasources.names():
        datasources.add("tune_pairs", [folder], kind="paired", progress=False)
    if "tune_001" not in datasets.names():
        builder.make("paired_001", datasource="tune_pairs", name="tune_001", settings=SPLIT, progress=False,
                     track=False, force=True)
    pairs = [p for p in evaluate.dataset_pairs("tune_001", "valid")[0] if Path(p.name).name not in scored]
    bicubic = float(np.mean([r["psnr"] for r in evaluate.score_baselines(pairs, 4) if r["method"] == "bicubic"]))
    head = (f"tune sources only ({', '.join(DEFAULT_SOURCES)}), {a.minutes:g} min per run, last epoch, scored on "
            f"{len(pairs)} validation fields that are not real_001 test fields ({', '.join(p.name for p in pairs)}); "
            f"bicubic there {bicubic:.2f} dB")
    print(head, flush=True)
    seeds = [int(s) for s in a.seeds.split(",")]
    rows = []
    for spec in a.variants:
        kw = json.loads(spec)
        got = []
        for seed in seeds:
            result = train(TrainConfig(dataset="tune_001", minutes=a.minutes, **{"seed": seed, **kw}),
                           progress=False, register=False)
            got.append(last_epoch_psnr(result.run_id, pairs))
            print(f"{spec} seed {seed}: {got[-1]:.3f} dB ({int(result.metrics['epochs'])} epochs)", flush=True)
        rows.append({"variant": kw, "psnr": got, "mean": float(np.mean(got))})
    lines = [head, f"{'variant':40s} " + " ".join(f"{'seed ' + str(s):>8s}" for s in seeds) + f" {'mean':>8s}"]
    lines += [f"{json.dumps(r['variant']):40s} " + " ".join(f"{v:8.2f}" for v in r["psnr"]) + f" {r['mean']:8.2f}"
              for r in rows]
    text = "\n".join(lines)
    print("\n" + text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "real_choices.txt").write_text(text + "\n")
    (out / "real_choices.json").write_text(json.dumps({"bicubic": bicubic, "fields": [p.name for p in pairs],
                                                       "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
