"""Learning curve: how much is a real pair worth, and where is the plateau (issue #23, item 1).

    python benchmarks/learning_curve.py [--fields 3,6,12,24,48,96] [--held-out 8] [--size 512]
        [--methods real,fitted,physical,classic] [--arch unet[,rcan]] [--seeds 0,1]
        [--base-minutes 5] [--minutes-per-field 0.5 | --epochs E] [--device auto]
        [--root DIR] [--out DIR] [--smoke]

Data. One run of the demo generator (`--demo-seed`) writes max(--fields) + --held-out paired
fields of --size px HR into a scratch BPHO_ROOT. The last --held-out fields are the datasource
`lc_heldout`, which no choice ever sees: every model is scored on it as `bpho evaluate
--datasource lc_heldout` scores it (whole images, registered by evaluate's default transform),
and its noiseless truth (truth/paired_hr/, moved by the same registration) is the **ceiling**
row. The other fields are the pool.

Points. For each seed s (`--seeds`: the choice of subset, the dataset's split and tiles, and the
training seed) the pool is shuffled once by s; the N-field subset is its first N fields (nested
subsets). Per N in --fields and architecture (--arch; `model={"arch": A}`, every other setting
bpho's default):

- real: the N fields as their own paired datasource (hard links), built by the default recipe
  paired_001 with valid_fraction --valid-fraction (default: the recipe's 0.25), so the epoch
  is chosen on validation images of the subset itself (at least one, never a held-out field);
- fitted / physical / classic: the first 3 fields as real pairs (the real N=3 dataset: 2 train,
  1 validation) and the other N - 3 fields' HR alone (an `hr` datasource) made into synthetic
  pairs by that degradation (`fitted`: fitted on the 3 real pairs; `physical` and `classic`:
  their default parameters), trained with `--mix SYNTH=W` (as hard_demo.py's "pairs saved"
  table), W = synthetic tiles / real training tiles, so that an epoch draws every synthetic
  tile once. Validation stays on the real subset's validation image. At N=3 these methods are
  the real point.

Budget per point: --epochs E for all, or (default) minutes = max(--base-minutes,
--minutes-per-field x N): an epoch's length grows with N, so the budget does. Convergence
check: a point is "not converged" when a seed's best validation epoch falls in the last
quarter of its epochs (best epoch > 3/4 of the epochs); the table also gives the last quarter's
gain (best validation PSNR minus the best of the first three quarters, dB). Under the one-cycle
schedule the last epochs run at a small learning rate, so a slow final creep also lands the
best epoch there: the gain says whether it matters.

Table (stdout, --out/learning_curve.{md,csv,json}, --out/learning_curve.png): per N, method and
architecture: held-out PSNR (mean +- half the range over seeds), gain over bicubic, SSIM, the
training minutes (measured), the best epoch / epochs per seed, the fields trained / validated
on; the bicubic and ceiling rows. The plot: PSNR against training pairs (log x), one line per
method and architecture, ceiling and bicubic as horizontal lines.

The answer (one sentence per architecture; means over seeds):

- **worth**: for each fitted point N > 3 (3 real + N-3 synthetic pairs, PSNR P), the equivalent
  number of real pairs n_eq is where the real curve reaches P: linear interpolation of the real
  PSNRs against log2(N), on their running maximum (the fewest real pairs that reach P). Those
  N-3 synthetic pairs did the work of n_eq - 3 real ones, so one real pair is worth
  (N - 3) / (n_eq - 3) synthetic pairs at that point; the sentence gives the median over the
  fitted points (infinite where n_eq <= 3: synthetic pairs replaced no real pair; "at most" when
  every P is above the whole real curve, where n_eq is taken as its largest N).
- **plateau**: the real curve's PSNR at the largest N; it is reported as "X dB below the
  ceiling" (X = ceiling - that PSNR) when the last step of the curve (e.g. 48 -> 96 pairs) gained
  less than PLATEAU_DB = 0.1 dB; otherwise the sentence says the plateau is not reached yet and
  gives the last step's gain and the largest point's distance to the ceiling.

--smoke: fields 3,6 of 128 px, 2 held out, one seed, real and fitted, 3 epochs (--epochs) of
64 px tiles (8 per field): the script end to end in well under 2-3 minutes of a 2-core CPU.
Its numbers mean nothing: a U-Net this briefly trained still outputs about the bilinear
upsampling (its held-out gain over bicubic is bilinear's, about +1.2 dB).
The results of finished trainings are kept in ROOT/learning_curve_runs.jsonl: a rerun with the
same --root (and settings) trains only what is missing.

Side by side (a GPU machine): `--prepare-only --jobs J` makes the data in J processes (other fields
than --jobs 1) and the ceiling in one root; workers, each with its own root holding a hard-linked
copy of that demo (`cp -al ROOT/demo W/demo`), train their share (`--seeds`, `--methods`, `--arch`,
`--only-fields`); their caches appended to the first root's, `--cached-only` with every seed,
method and architecture makes the table of what was trained. `benchmarks/gpu_curve.sh` does that.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np

from scratch import out_dir, pick_device, scratch_root

PLATEAU_DB = 0.1  # a last step gaining less than this: the curve has reached its plateau
REAL_FIXED = 3  # real pairs kept by the synthetic methods
HELD_OUT = "lc_heldout"
METHODS = ("real", "fitted", "physical", "classic")


def csv_list(text: str, kind=str) -> list:
    return [kind(v) for v in text.replace(" ", "").split(",") if v]


# --- data -------------------------------------------------------------------------------------


def _demo_chunk(args: tuple) -> None:
    from bpho.config import DemoConfig
    from bpho.demo import make_demo_data

    folder, fields, size, seed = args
    make_demo_data(folder, DemoConfig(seed=seed, paired_fields=fields, paired_size=size, movies=0, hr_only_fields=0,
                                      denoise_fields=0), progress=False)


def make_demo(root: Path, fields: int, size: int, seed: int, jobs: int = 1) -> Path:
    """The demo's paired fields; with jobs > 1, made as `jobs` demos of seeds seed*1000+j side by side
    (other fields than one demo of `seed`: the `jobs` is part of what the root holds) and merged."""
    from concurrent.futures import ProcessPoolExecutor

    demo = root / "demo"
    want = {"seed": seed, "paired_fields": fields, "paired_size": size, "jobs": jobs}
    if demo.exists():
        have = json.loads((demo / "demo_truth.json").read_text())["config"]
        if any(have.get(k, 1 if k == "jobs" else None) != v for k, v in want.items()):
            raise SystemExit(f"{root} holds another demo ({have['paired_fields']} fields of {have['paired_size']} px, "
                             f"seed {have['seed']}, jobs {have.get('jobs', 1)}); use another --root")
        return demo
    tick = time.time()
    print(f"demo data: {fields} paired fields of {size} px HR (seed {seed}, {jobs} job(s)) ...", flush=True)
    if jobs == 1:
        _demo_chunk((demo, fields, size, seed))
    else:
        counts = [len(c) for c in np.array_split(np.arange(fields), jobs) if len(c)]
        chunks = [root / f"demo_chunk{j}" for j in range(len(counts))]
        with ProcessPoolExecutor(len(counts)) as pool:
            list(pool.map(_demo_chunk, [(c, n, size, seed * 1000 + j) for j, (c, n) in enumerate(zip(chunks, counts))]))
        truth, i = None, 0
        for chunk in chunks:
            part = json.loads((chunk / "demo_truth.json").read_text())
            truth = truth or {**part, "paired": {}}
            for name in sorted(part["paired"]):
                new = f"field_{i:03d}"
                for sub, ext in (("paired/lr", "czi"), ("paired/hr", "czi"), ("truth/paired_hr", "tif")):
                    (demo / sub).mkdir(parents=True, exist_ok=True)
                    (chunk / sub / f"{name}.{ext}").rename(demo / sub / f"{new}.{ext}")
                truth["paired"][new] = part["paired"][name]
                i += 1
            shutil.rmtree(chunk)
        truth["config"].update(want)
        (demo / "demo_truth.json").write_text(json.dumps(truth, indent=2))
    print(f"demo data: {time.time() - tick:.0f} s", flush=True)
    return demo


def link_files(files, folder: Path) -> None:
    """Hard links (copies where the file system refuses) of `files` in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        dest = folder / f.name
        if not dest.exists():
            try:
                os.link(f, dest)
            except OSError:
                shutil.copy(f, dest)


def paired_source(root: Path, demo: Path, name: str, stems) -> str:
    from bpho import datasources

    folder = root / "subsets" / name
    for side in ("lr", "hr"):
        link_files([demo / "paired" / side / f"{s}.czi" for s in stems], folder / side)
    datasources.add(name, [folder], kind="paired", progress=False)  # the same files again: no change
    return name


def hr_source(root: Path, demo: Path, name: str, stems) -> str:
    from bpho import datasources

    folder = root / "subsets" / name
    link_files([demo / "paired/hr" / f"{s}.czi" for s in stems], folder)
    datasources.add(name, [folder], kind="hr", progress=False)
    return name


def build(name: str, datasource: str, settings: list) -> str:
    from bpho import datasets
    from bpho.datasets import builder

    if name not in datasets.names():
        builder.make("paired_001", datasource=datasource, name=name, settings=settings, progress=False, track=False)
    return name


def train_tiles(dataset: str) -> int:
    from bpho import datasets

    ds = datasets.open(dataset)
    return len(ds.tiles(ds.tile_sizes[0], "train")[0])


def split_counts(dataset: str) -> tuple:
    from bpho import datasets

    ds = datasets.open(dataset)
    valid = sum(1 for r in ds.manifest["sources"] if "image" in r)
    return len(ds.manifest["sources"]) - valid, valid


def ceiling(held_out: str, truth_dir: Path, scale: int, transform: str = "auto") -> dict:
    """The noiseless HR of each held-out field, moved by the registration `bpho evaluate
    --datasource` estimates for that pair (the same call on the same images), scored against the
    acquired HR as evaluate scores a model; and bicubic on the same pairs as a check."""
    from bpho import datasources, evaluate, io
    from bpho.datasets.register import apply_registration, register_pair, upsample
    from bpho.datasets.sources import plane_stack

    rows = []
    for pair in datasources.open(held_out).pairs:
        lr, hr = plane_stack(pair.lr), plane_stack(pair.hr)
        reg = register_pair(lr.mean(0), hr.mean(0), scale, transform)
        p = evaluate.Pair(pair.stem, lr, apply_registration(hr, reg), reg.margin, io.read(pair.hr).pixel_size[2])
        clean = io.read(truth_dir / f"{Path(pair.stem).name}.tif").data[:, 0, 0].astype(np.float32)
        rows.append((evaluate.score(apply_registration(clean, reg)[0], p),
                     evaluate.score(upsample(lr[0], scale, evaluate.BASELINES["bicubic"]), p)))
    return {"psnr": float(np.mean([c["psnr"] for c, _ in rows])), "ssim": float(np.mean([c["ssim"] for c, _ in rows])),
            "bicubic_psnr": float(np.mean([b["psnr"] for _, b in rows])), "images": len(rows)}


# --- one point --------------------------------------------------------------------------------


def train_and_score(key: str, dataset: str, mix: tuple, arch: str, seed: int, budget: dict, device: str,
                    out: Path) -> dict:
    """Train bpho's defaults (architecture `arch`) on `dataset` (+ `mix`), score on the held-out datasource."""
    from bpho.config import TrainConfig
    from bpho.evaluate import evaluate
    from bpho.train import train

    curve = []
    log = out / "logs" / f"{key.replace('|', '_')}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig(dataset=dataset, model={"arch": arch}, seed=seed, device=device, mix=mix, **budget)
    tick = time.time()
    with open(log, "w") as fh, contextlib.redirect_stdout(fh):  # train's epoch lines go to the log
        result = train(cfg, progress=False, register=False,
                       on_epoch=lambda epoch, metrics, run_id: curve.append(float(metrics["valid_psnr"])))
    minutes = (time.time() - tick) / 60
    s = evaluate(result.model_uri, datasource=HELD_OUT, out_dir=out / "eval" / key.replace("|", "_"),
                 device=device, progress=False, track=False).summary
    epochs, best = int(result.metrics["epochs"]), int(result.metrics["best_epoch"]) + 1
    first = curve[:max(1, (3 * epochs) // 4)]
    return {"psnr": s["model"]["psnr"], "ssim": s["model"]["ssim"], "gain": s["gain_psnr"]["mean"],
            "bicubic_psnr": s["bicubic"]["psnr"], "bicubic_ssim": s["bicubic"]["ssim"], "minutes": minutes,
            "epochs": epochs, "best_epoch": best, "last_quarter": best > 0.75 * epochs,
            "last_quarter_gain": max(curve) - max(first) if curve else 0.0, "valid_psnr": curve,
            "model_uri": result.model_uri, "log": str(log)}


# --- the table and the answer -----------------------------------------------------------------


def spread(values) -> tuple:
    """Mean and half the range."""
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(np.ptp(v) / 2)


def aggregate(runs: list, archs: list) -> list:
    """One row per (arch, method, fields), in --arch order, then by fields and method: means and
    spreads over the seeds."""
    groups = {}
    for r in runs:
        groups.setdefault((r["arch"], r["method"], r["fields"]), []).append(r)
    rows = []
    for (arch, method, n), rs in sorted(groups.items(),
                                        key=lambda kv: (archs.index(kv[0][0]), kv[0][2], METHODS.index(kv[0][1]))):
        rs = sorted(rs, key=lambda r: r["seed"])
        psnr, psnr_sp = spread([r["psnr"] for r in rs])
        gain, gain_sp = spread([r["gain"] for r in rs])
        ssim, ssim_sp = spread([r["ssim"] for r in rs])
        rows.append({"arch": arch, "method": method, "fields": n, "seeds": len(rs), "psnr": psnr,
                     "psnr_spread": psnr_sp,
                     "gain": gain, "gain_spread": gain_sp, "ssim": ssim, "ssim_spread": ssim_sp,
                     "minutes": float(np.mean([r["minutes"] for r in rs])),
                     "best_epochs": " ".join(f"{r['best_epoch']}/{r['epochs']}" for r in rs),
                     "last_quarter_gain": max(r["last_quarter_gain"] for r in rs),
                     "converged": not any(r["last_quarter"] for r in rs), "trained_on": rs[0]["trained_on"],
                     "bicubic_psnr": float(np.mean([r["bicubic_psnr"] for r in rs])),
                     "bicubic_ssim": float(np.mean([r["bicubic_ssim"] for r in rs]))})
    return rows


COLUMNS = ("fields", "method", "PSNR dB", "gain dB", "SSIM", "minutes", "best epoch / epochs", "last-quarter dB",
           "converged", "trained on (train+valid real, synthetic)")


def table_cells(rows: list, ceil: dict, multi_arch: bool) -> list:
    out = []
    for r in rows:
        if r["method"] != "real" and r["fields"] <= REAL_FIXED:
            continue  # the real 3-pair point, repeated so that the plotted lines start there
        method = f"{r['method']} ({r['arch']})" if multi_arch else r["method"]
        out.append([str(r["fields"]), method, f"{r['psnr']:.2f} ± {r['psnr_spread']:.2f}",
                    f"{r['gain']:+.2f} ± {r['gain_spread']:.2f}", f"{r['ssim']:.3f} ± {r['ssim_spread']:.3f}",
                    f"{r['minutes']:.1f}", r["best_epochs"], f"{r['last_quarter_gain']:+.2f}",
                    "yes" if r["converged"] else "not converged", r["trained_on"]])
    b = rows[0]
    out.append(["-", "bicubic", f"{b['bicubic_psnr']:.2f}", "+0.00", f"{b['bicubic_ssim']:.3f}", "", "", "", "", ""])
    out.append(["-", "ceiling (noiseless HR)", f"{ceil['psnr']:.2f}", f"{ceil['psnr'] - b['bicubic_psnr']:+.2f}",
                f"{ceil['ssim']:.3f}", "", "", "", "", ""])
    return out


def text_table(cells: list) -> str:
    widths = [max(len(c) for c in col) for col in zip(COLUMNS, *cells)]
    line = lambda row: "  ".join(c.rjust(w) if i != 1 and i != 9 else c.ljust(w)  # noqa: E731
                                 for i, (c, w) in enumerate(zip(row, widths)))
    return "\n".join([line(COLUMNS)] + [line(r) for r in cells])


def markdown_table(cells: list) -> str:
    return "\n".join(["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
                     + ["| " + " | ".join(c or " " for c in r) + " |" for r in cells])


def curve(rows: list, arch: str, method: str) -> tuple:
    pts = sorted((r["fields"], r["psnr"]) for r in rows if r["arch"] == arch and r["method"] == method)
    return np.array([p[0] for p in pts], float), np.array([p[1] for p in pts], float)


def equivalent_real(n_real: np.ndarray, p_real: np.ndarray, psnr: float) -> tuple:
    """(n_eq, where): the real pairs that reach `psnr` on the real curve's running maximum,
    interpolated in log2 pairs; where: 'below' (not above the first point), 'inside', 'above'."""
    env = np.maximum.accumulate(p_real)
    if psnr <= env[0]:
        return float(n_real[0]), "below"
    if psnr > env[-1]:
        return float(n_real[-1]), "above"
    i = int(np.argmax(env >= psnr))  # first point reaching it; env[i-1] < psnr <= env[i]
    x0, x1 = np.log2(n_real[i - 1]), np.log2(n_real[i])
    t = (psnr - env[i - 1]) / (env[i] - env[i - 1])
    return float(2 ** (x0 + t * (x1 - x0))), "inside"


def answer(rows: list, ceil: dict, arch: str) -> tuple:
    """The one-sentence answer (see the module docstring) and its numbers."""
    n_real, p_real = curve(rows, arch, "real")
    parts, detail = [], {"arch": arch}
    n_fit, p_fit = curve(rows, arch, "fitted")
    worth = []
    for n, p in zip(n_fit, p_fit):
        if n <= REAL_FIXED or not len(n_real):
            continue
        n_eq, where = equivalent_real(n_real, p_real, p)
        w = math.inf if n_eq <= REAL_FIXED else (n - REAL_FIXED) / (n_eq - REAL_FIXED)
        worth.append({"fields": int(n), "psnr": float(p), "n_eq": n_eq, "where": where, "worth": w})
    detail["worth"] = worth
    if worth:
        ws = sorted(w["worth"] for w in worth)
        med = ws[len(ws) // 2] if len(ws) % 2 else 0.5 * (ws[len(ws) // 2 - 1] + ws[len(ws) // 2])
        detail["worth_median"] = med
        bound = "at most " if all(w["where"] == "above" for w in worth) else ""
        parts.append("synthetic pairs (fitted) replaced no real pair" if math.isinf(med) else
                     f"one real pair is worth {bound}{med:.1f} synthetic pairs (fitted)")
    else:
        parts.append("no fitted points beyond 3 real pairs to compare")
    if len(n_real) == 1:
        parts.append(f"one real point: no plateau measured ({int(n_real[0])} real pairs are "
                     f"{ceil['psnr'] - p_real[0]:.2f} dB below the ceiling)")
    elif len(n_real):
        gap = ceil["psnr"] - p_real[-1]
        step = p_real[-1] - p_real[-2]
        detail.update(plateau_psnr=float(p_real[-1]), below_ceiling=float(gap), last_step_gain=float(step),
                      plateau_reached=bool(step < PLATEAU_DB))
        if step < PLATEAU_DB:  # the plateau starts at the fewest real pairs within PLATEAU_DB of the last point
            start = int(n_real[np.argmax(p_real >= p_real[-1] - PLATEAU_DB)])
            parts.append(f"the plateau (from about {start} real pairs) is {gap:.2f} dB below the ceiling")
        else:
            parts.append(f"no plateau yet ({int(n_real[-2])} -> {int(n_real[-1])} real pairs still gained "
                         f"{step:+.2f} dB); {int(n_real[-1])} real pairs are {gap:.2f} dB below the ceiling")
    return f"{arch}: " + "; ".join(parts) + ".", detail


def plot(rows: list, ceil: dict, png: Path, fields: list) -> None:
    from bpho.plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = {"real": "o", "fitted": "s", "physical": "^", "classic": "v"}  # colour and marker: the method
    archs = list(dict.fromkeys(r["arch"] for r in rows))
    for a, arch in enumerate(archs):  # line style: the architecture
        for i, method in enumerate(METHODS):
            rs = sorted((r for r in rows if r["arch"] == arch and r["method"] == method), key=lambda r: r["fields"])
            if rs:
                label = f"{method} ({arch})" if len(archs) > 1 else method
                ax.errorbar([r["fields"] for r in rs], [r["psnr"] for r in rs], yerr=[r["psnr_spread"] for r in rs],
                            color=f"C{i}", marker=markers[method], ls=("-", "--", "-.", ":")[a % 4], capsize=3,
                            label=label)
    ax.axhline(ceil["psnr"], color="k", lw=1, label="ceiling (noiseless HR)")
    ax.axhline(rows[0]["bicubic_psnr"], color="grey", ls=":", lw=1, label="bicubic")
    ax.set_xscale("log", base=2)
    ax.set_xticks(fields)
    ax.set_xticklabels([str(f) for f in fields])
    ax.set_xlabel("training pairs (real, or 3 real + synthetic)")
    ax.set_ylabel("PSNR on held-out fields (dB)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


# --- main -------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fields", default="3,6,12,24,48,96", help="training-subset sizes (fields, train + valid)")
    ap.add_argument("--held-out", type=int, default=8, help="fields in the held-out datasource")
    ap.add_argument("--size", type=int, default=512, help="HR side of a field (px)")
    ap.add_argument("--methods", default="real,fitted,physical,classic")
    ap.add_argument("--arch", default="unet", help="architectures, e.g. unet,rcan")
    ap.add_argument("--seeds", default="0,1", help="subset / split / training seeds")
    ap.add_argument("--demo-seed", type=int, default=0, help="the demo generator's seed (one for all points)")
    ap.add_argument("--base-minutes", type=float, default=5.0, help="budget = max(BASE, PER_FIELD x fields)")
    ap.add_argument("--minutes-per-field", type=float, default=0.5)
    ap.add_argument("--epochs", type=int, help="a fixed number of epochs instead of the minutes rule")
    ap.add_argument("--valid-fraction", type=float, default=0.25, help="of each real subset (recipe valid_fraction)")
    ap.add_argument("--tile-sizes", help="recipe tile_sizes (default: the recipe's)")
    ap.add_argument("--tiles-per-image", type=int, help="recipe tiles_per_image (default: the recipe's)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--jobs", type=int, default=1, help="processes making the demo data (other fields than --jobs 1)")
    ap.add_argument("--only-fields", help="train only the points of these subset sizes (workers running side by "
                    "side, each with its own --root; then one run over all the caches makes the table)")
    ap.add_argument("--prepare-only", action="store_true", help="make the data and the ceiling, train nothing")
    ap.add_argument("--cached-only", action="store_true", help="train nothing: the table of the points in the "
                    "root's cache (learning_curve_runs.jsonl; the workers' caches appended to it)")
    ap.add_argument("--smoke", action="store_true", help="the tiniest run: the script end to end in 2-3 CPU minutes")
    ap.add_argument("--root", help="scratch BPHO_ROOT (default: a temporary folder); reruns reuse finished points")
    ap.add_argument("--out", help="folder for the tables, plot, logs and evaluations (default: a temporary folder)")
    args = ap.parse_args()
    if args.smoke:
        args.fields, args.held_out, args.size, args.seeds, args.methods = "3,6", 2, 128, "0", "real,fitted"
        args.epochs, args.tile_sizes, args.tiles_per_image = args.epochs or 3, "64", 8
    fields, seeds, archs = csv_list(args.fields, int), csv_list(args.seeds, int), csv_list(args.arch)
    methods = csv_list(args.methods)
    if sorted(fields)[0] != REAL_FIXED or not methods or any(m not in METHODS for m in methods):
        raise SystemExit(f"--fields must start at {REAL_FIXED}; --methods: any of {', '.join(METHODS)}")
    fields = sorted(set(fields))
    root = scratch_root(args.root, "curve")
    out = out_dir(args.out, "curve")
    out.mkdir(parents=True, exist_ok=True)

    device, where = pick_device(args.device)
    from bpho import datasets, synthesize as sy

    demo = make_demo(root, fields[-1] + args.held_out, args.size, args.demo_seed, args.jobs)
    stems = sorted(p.stem for p in (demo / "paired/lr").glob("*.czi"))
    pool, held = stems[:fields[-1]], stems[fields[-1]:]
    paired_source(root, demo, HELD_OUT, held)
    scale = json.loads((demo / "demo_truth.json").read_text())["config"]["scale"]
    ceil = ceiling(HELD_OUT, demo / "truth/paired_hr", scale)
    print(f"held out: {len(held)} fields ({held[0]} .. {held[-1]}); ceiling {ceil['psnr']:.2f} dB, "
          f"bicubic {ceil['bicubic_psnr']:.2f} dB", flush=True)

    tiles = ([f"tile_sizes={args.tile_sizes}"] if args.tile_sizes else []) + (
        [f"tiles_per_image={args.tiles_per_image}"] if args.tiles_per_image else [])
    minutes = lambda n: max(args.base_minutes, args.minutes_per_field * n)  # noqa: E731
    budget = (lambda n: {"epochs": args.epochs}) if args.epochs else (lambda n: {"minutes": minutes(n)})  # noqa: E731
    only = csv_list(args.only_fields, int) if args.only_fields else fields
    plan = [(n, s, a, m) for n in fields for s in seeds for a in archs for m in methods
            if (m == "real" or n > REAL_FIXED) and n in only and not args.prepare_only]
    if not args.epochs:
        total = sum(minutes(n) for n, *_ in plan)
        print(f"plan: {len(plan)} trainings, {total / 60:.1f} h of training budget (max({args.base_minutes:g}, "
              f"{args.minutes_per_field:g} x fields) minutes each) on {where}", flush=True)
    else:
        print(f"plan: {len(plan)} trainings of {args.epochs} epochs on {where}", flush=True)

    cache = root / "learning_curve_runs.jsonl"
    done = {}
    if cache.exists():
        for line in cache.read_text().splitlines():
            rec = json.loads(line)
            done[rec["key"]] = rec
    runs, degradations, started = [], {}, time.time()
    for i, (n, seed, arch, method) in enumerate(plan, 1):
        order = [str(x) for x in np.random.default_rng(seed).permutation(pool)]
        b = budget(n)
        length = f"{b['epochs']}ep" if "epochs" in b else f"{b['minutes']:g}min"
        key = f"{arch}|{method}|n{n}|s{seed}|{length}|{args.valid_fraction:g}|{','.join(tiles)}"
        if key in done:
            runs.append(done[key])
            continue
        if args.cached_only:
            continue
        settings = [f"valid_fraction={args.valid_fraction}", f"seed={seed}", *tiles]
        real_n = n if method == "real" else REAL_FIXED
        real = build(f"lc_s{seed}_real{real_n}",
                     paired_source(root, demo, f"lc_s{seed}_real{real_n}", order[:real_n]), settings)
        n_train, n_valid = split_counts(real)
        mix, trained_on = (), f"{n_train}+{n_valid}"
        if method != "real":
            if (seed, method) not in degradations:
                fit = {"fit_on": real, "recipe_settings": ["valid_fraction=0"]} if method == "fitted" else {}
                degradations[seed, method] = sy.degradation(method, **fit)
            synth = f"lc_s{seed}_{method}{n}"
            if synth not in datasets.names():
                src = hr_source(root, demo, f"lc_s{seed}_hr{n}", order[REAL_FIXED:n])
                sy.synthesize(src, degradations[seed, method], synth, progress=False, track=False,
                              recipe_settings=["valid_fraction=0", f"seed={seed}", *tiles])
            weight = train_tiles(synth) / train_tiles(real)
            mix, trained_on = (f"{synth}={weight:.4g}",), f"{trained_on}, +{n - REAL_FIXED} {method}"
        print(f"[{i}/{len(plan)}] {arch} {method} {n} fields, seed {seed}: training {length} "
              f"({time.time() - started:.0f} s so far) ...", flush=True)
        rec = train_and_score(key, real, mix, arch, seed, b, device, out)
        rec.update(key=key, arch=arch, method=method, fields=n, seed=seed, trained_on=trained_on, mix=list(mix),
                   device=where)
        flag = (f", not converged ({rec['last_quarter_gain']:+.2f} dB in the last quarter)"
                if rec["last_quarter"] else "")
        print(f"    held-out PSNR {rec['psnr']:.2f} dB ({rec['gain']:+.2f} over bicubic), SSIM {rec['ssim']:.3f}, "
              f"best epoch {rec['best_epoch']}/{rec['epochs']}{flag}, {rec['minutes']:.1f} min", flush=True)
        with open(cache, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
        runs.append(rec)
    if args.prepare_only or args.only_fields or not runs:
        print(f"{len(runs)} point(s) in {cache}; the table: a run with --cached-only over all the caches")
        return
    # the synthetic methods start from the real 3-pair point
    trained = {(r["arch"], r["method"]) for r in runs}
    runs += [{**r, "method": m, "key": f"{r['key']} (as {m})"} for r in runs
             if r["method"] == "real" and r["fields"] == REAL_FIXED for m in methods
             if m != "real" and (r["arch"], m) in trained]
    rows = aggregate(runs, archs)
    cells = table_cells(rows, ceil, len(archs) > 1)
    sentences = [answer(rows, ceil, a) for a in archs]
    where = ", ".join(sorted({r.get("device", where) for r in runs}))  # where the points were trained
    header = (f"learning curve on the demo (seed {args.demo_seed}, {args.size} px fields), scored on {len(held)} "
              f"held-out fields ({HELD_OUT}); {len(seeds)} seed(s) ({args.seeds}): mean ± half the range; "
              f"training on {where}; "
              + (f"{args.epochs} epochs" if args.epochs else
                 f"max({args.base_minutes:g}, {args.minutes_per_field:g} x fields) minutes") + " per point")
    text = "\n\n".join([header, text_table(cells), "\n".join(s for s, _ in sentences)])
    print("\n" + text)
    for arch, (_, d) in zip(archs, sentences):
        for w in d["worth"]:
            print(f"  {arch} fitted, {w['fields']} pairs ({w['psnr']:.2f} dB) = {w['n_eq']:.1f} real pairs "
                  f"({w['where']} the real curve): 1 real = {w['worth']:.1f} synthetic")
    (out / "learning_curve.txt").write_text(text + "\n")
    (out / "learning_curve.md").write_text(header + "\n\n" + markdown_table(cells) + "\n\n"
                                           + "\n".join(s for s, _ in sentences) + "\n")
    with open(out / "learning_curve.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "learning_curve.json").write_text(json.dumps(
        {"rows": rows, "ceiling": ceil, "answers": [d for _, d in sentences], "runs": runs, "device": where},
        indent=2, default=str))
    plot(rows, ceil, out / "learning_curve.png", fields)
    print(f"\ntable (txt, md, csv, json), plot, training logs and evaluations in {out}; scratch root {root}")


if __name__ == "__main__":
    main()
