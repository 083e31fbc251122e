"""Movies: one frame or five? A 1-frame and a 5-frame model at equal budget (issue #26, item 2).

    python benchmarks/movies.py [--realism easy,hard] [--movies 6] [--frames 12] [--size 256] [--tiles-per-image 16]
        [--epochs 40] [--seeds 0] [--device auto] [--root DIR] [--out DIR] [--smoke]

Data. For each realism (`easy`: the demo movie, slow drift and bleaching; `hard`: the hard
demo's movie, fast drift along a turning path, fast bleaching, scan-line jitter, hot pixels)
one run of the demo generator writes --movies LR/HR time-lapses of --frames frames into a
scratch BPHO_ROOT, with each movie's HR without detector noise (truth/movie_hr/). The last
movie is the datasource `REALISM_heldout`, which no choice sees; the others are the datasource
the recipe movie_001 builds from (valid_fraction 1/(movies-1): one validation movie, which picks
the epoch; the rest train).

Models. Per realism and seed: the same recipe with frames=1 and frames=5 (t-2..t+2), bpho's
default U-Net, the same --epochs (the wall-clock minutes of each are measured and reported).
Both datasets have the same tiles per epoch: every frame is a centre, the 5-frame window
reflected at the movie's ends as prediction pads it.

Scores, on the held-out movie (every frame, whole):

- as `bpho evaluate --datasource REALISM_heldout` scores (registered, against the acquired HR
  movie, which has detector noise): per-frame PSNR and SSIM (means over frames) and flicker
  (`bpho.metrics.flicker`: RMSE of the frame-to-frame changes against the acquired HR's, in
  units of its range). Against a noisy reference neither is 0 for a perfect output: the
  **limit** row is the noiseless HR (truth/movie_hr/, moved by the same registration) scored
  the same way: the best PSNR and the lowest flicker any model can reach there;
- against the noiseless truth (the same registration and interior): PSNR and flicker, where a
  perfect model has flicker 0 and PSNR infinite.

Baselines: bicubic and bilinear upsampling of each LR frame.

Output (stdout, --out/movies.{md,json,png}): the table per realism (mean ± half the range over
seeds), the minutes and best epoch of each training, per-frame PSNR and per-transition flicker
against the truth over time (the plot), and bpho evaluate's own figures (temporal_NN.png,
kymographs) under --out/eval/.

Defaults: 6 movies of 12 frames (4 train, 1 validation, 1 held out), 16 tiles per frame and
size, 40 epochs: about 17 minutes on 2 idle CPU cores. Finished trainings are kept in
ROOT/movies_runs.jsonl: a rerun with the same --root trains only what is missing.

--smoke: 3 movies of 8 frames, 128 px, 2 epochs of 64 px tiles: the script end to end in
under a minute of a 2-core CPU. Its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from scratch import out_dir, pick_device, scratch_root

FRAMES = (1, 5)
METHODS = ("1-frame", "5-frame", "bicubic", "bilinear")


def make_demo(root: Path, realism: str, movies: int, frames: int, size: int) -> Path:
    """The demo movies of `realism` (no other demo data) in ROOT/demo_REALISM, made once."""
    from bpho.config import DemoConfig
    from bpho.demo import make_demo_data

    demo = root / f"demo_{realism}"
    if not demo.exists():
        make_demo_data(demo, DemoConfig(realism=realism, paired_fields=0, movies=movies, movie_frames=frames,
                                        movie_size=size, hr_only_fields=0, denoise_fields=0), progress=False)
    return demo


def movie_source(root: Path, demo: Path, name: str, stems: list) -> str:
    """A movie datasource `name` of the demo movies `stems` (LR and HR linked into lr/ and hr/)."""
    from bpho import datasources

    folder = root / "subsets" / name
    for side in ("lr", "hr"):
        (folder / side).mkdir(parents=True, exist_ok=True)
        for stem in stems:
            dest = folder / side / f"{stem}.czi"
            if not dest.exists():
                os.link(demo / "movie" / side / f"{stem}.czi", dest)
    datasources.add(name, [folder], kind="movie", progress=False)
    return name


def truth_pairs(held_out: str, demo: Path, scale: int) -> list:
    """(evaluate.Pair, registered noiseless truth (T, Y, X)) per held-out movie, registered as
    `bpho evaluate --datasource` registers it (the same call on the same images)."""
    from bpho import datasources, evaluate, io
    from bpho.datasets.register import apply_registration, register_pair
    from bpho.datasets.sources import plane_stack

    out = []
    for pair in datasources.open(held_out).pairs:
        lr, hr = plane_stack(pair.lr), plane_stack(pair.hr)
        reg = register_pair(lr.mean(0), hr.mean(0), scale, evaluate.EvaluateConfig.transform)
        clean = io.read(demo / "truth/movie_hr" / f"{Path(pair.stem).name}.tif").data[:, 0, 0].astype(np.float32)
        out.append((evaluate.Pair(pair.stem, lr, apply_registration(hr, reg), reg.margin, None),
                    apply_registration(clean, reg)))
    return out


def against(stack: np.ndarray, pair, clean: np.ndarray) -> dict:
    """A (T, Y, X) HR-sized movie against the acquired HR (as evaluate scores) and against the
    noiseless truth, on the registration's interior: mean per-frame PSNR / SSIM, flicker, and
    per frame the PSNR and per transition the flicker against the truth (for the plot)."""
    from bpho import evaluate, metrics

    inner = (slice(None), *evaluate._interior(pair))
    p, hr, tr = stack[inner], pair.hr[inner], clean[inner]
    acq = [metrics.compare(f, h) for f, h in zip(p, hr)]
    tru = [metrics.compare(f, h) for f, h in zip(p, tr)]
    steps = [metrics.flicker(p[t:t + 2], tr[t:t + 2]) for t in range(len(p) - 1)]
    return {"psnr": float(np.mean([a["psnr"] for a in acq])), "ssim": float(np.mean([a["ssim"] for a in acq])),
            "flicker": metrics.flicker(p, hr), "truth_psnr": float(np.mean([a["psnr"] for a in tru])),
            "truth_ssim": float(np.mean([a["ssim"] for a in tru])), "truth_flicker": metrics.flicker(p, tr),
            "truth_psnr_t": [float(a["psnr"]) for a in tru], "truth_flicker_t": steps}


def score(model_uri, pairs: list, device: str) -> tuple:
    """`against` of the model's prediction of each held-out movie, and of the baselines'."""
    from bpho import tracking
    from bpho.datasets.register import upsample
    from bpho.evaluate import BASELINES
    from bpho.inference import load_model

    model = load_model(tracking.download_model(model_uri), device=device)
    mine = [against(np.stack(list(model.predict_frames(p.lr))), p, clean) for p, clean in pairs]
    base = {m: [against(np.stack([upsample(f, model.scale, BASELINES[m]) for f in p.lr]), p, clean)
                for p, clean in pairs] for m in ("bicubic", "bilinear")}
    return mine, base


def mean_rows(rows: list) -> dict:
    """The mean over movies of `against` dicts (lists: element-wise)."""
    return {k: (np.mean([r[k] for r in rows], axis=0).tolist() if isinstance(rows[0][k], list)
                else float(np.mean([r[k] for r in rows]))) for k in rows[0]}


def spread(values, digits: int = 2) -> str:
    """Mean, and ± half the range over several seeds."""
    v = np.asarray(values, float)
    return f"{v.mean():.{digits}f}" + (f" ± {np.ptp(v) / 2:.{digits}f}" if len(v) > 1 else "")


COLUMNS = ("realism", "method", "PSNR dB", "SSIM", "flicker", "PSNR vs truth", "flicker vs truth", "minutes",
           "best epoch / epochs")


def table_rows(results: dict) -> list:
    """Cells per realism and method: means (± half the range) over seeds; the limit row last."""
    cells = []
    for realism, res in results.items():
        for method in METHODS:
            runs = res["runs"][method]
            cells.append([realism, method, spread([r["psnr"] for r in runs]), spread([r["ssim"] for r in runs], 3),
                          spread([r["flicker"] for r in runs], 4), spread([r["truth_psnr"] for r in runs]),
                          spread([r["truth_flicker"] for r in runs], 4),
                          " ".join(f"{r['minutes']:.1f}" for r in runs) if "minutes" in runs[0] else "",
                          " ".join(f"{r['best_epoch']}/{r['epochs']}" for r in runs) if "epochs" in runs[0] else ""])
        lim = res["limit"]
        cells.append([realism, "limit (noiseless HR)", f"{lim['psnr']:.2f}", f"{lim['ssim']:.3f}",
                      f"{lim['flicker']:.4f}", "inf", "0", "", ""])
    return cells


def markdown(cells: list) -> str:
    """The table in markdown."""
    return "\n".join(["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
                     + ["| " + " | ".join(c or " " for c in r) + " |" for r in cells])


def text(cells: list) -> str:
    """The table in plain text, columns aligned."""
    widths = [max(len(c) for c in col) for col in zip(COLUMNS, *cells)]
    return "\n".join("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                     for row in [COLUMNS, *cells])


def plot(results: dict, png: Path) -> None:
    """Per realism: PSNR against the truth per frame, and flicker against the truth per transition."""
    from bpho.plots import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(2, len(results), figsize=(5 * len(results), 6), squeeze=False)
    for j, (realism, res) in enumerate(results.items()):
        for i, method in enumerate(METHODS):
            runs = res["runs"][method]
            psnr = np.mean([r["truth_psnr_t"] for r in runs], axis=0)
            flick = np.mean([r["truth_flicker_t"] for r in runs], axis=0)
            axes[0, j].plot(psnr, marker="o", ms=3, color=f"C{i}", label=method)
            axes[1, j].plot(np.arange(len(flick)) + 0.5, flick, marker="o", ms=3, color=f"C{i}", label=method)
        axes[0, j].set_title(f"{realism}: held-out movie")
        axes[0, j].set_ylabel("PSNR vs noiseless truth (dB)")
        axes[1, j].set_ylabel("flicker vs truth, per transition")
        axes[1, j].set_xlabel("frame")
        axes[0, j].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)


def main() -> None:
    """Parse the arguments, make the data, train, score, write the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--realism", default="easy,hard")
    ap.add_argument("--movies", type=int, default=6, help="movies per realism: the last is held out, one validates")
    ap.add_argument("--frames", type=int, default=12, help="frames per movie")
    ap.add_argument("--size", type=int, default=256, help="HR side of a movie (px)")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--seeds", default="0", help="training seeds, e.g. 0,1")
    ap.add_argument("--tiles-per-image", type=int, default=16, help="recipe tiles_per_image")
    ap.add_argument("--tile-sizes", help="recipe tile_sizes (default: the recipe's)")
    ap.add_argument("--recipe-set", action="append", default=[], metavar="KEY=VALUE",
                    help="more recipe settings for both models")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--smoke", action="store_true", help="the tiniest run: end to end in 2-3 CPU minutes")
    ap.add_argument("--root", help="scratch BPHO_ROOT (default: a temporary folder)")
    ap.add_argument("--out", help="folder for the table, JSON, plot and evaluations (default: a temporary folder)")
    args = ap.parse_args()
    if args.smoke:
        args.movies, args.frames, args.size, args.epochs = 3, 8, 128, 2
        args.tile_sizes, args.tiles_per_image = args.tile_sizes or "64", 4
    realisms = [r for r in args.realism.split(",") if r]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    if any(r not in ("easy", "hard") for r in realisms) or not realisms or not seeds:
        raise SystemExit("movies.py: --realism takes easy and/or hard, --seeds at least one integer")
    if args.movies < 3 or args.frames < max(FRAMES):
        raise SystemExit(f"movies.py: --movies must be >= 3 (train, valid, held out), --frames >= {max(FRAMES)}")
    root = scratch_root(args.root, "movies")
    out = out_dir(args.out, "movies")
    out.mkdir(parents=True, exist_ok=True)

    from bpho import datasets
    from bpho.config import TrainConfig
    from bpho.datasets import builder
    from bpho.evaluate import evaluate
    from bpho.train import train

    device, where = pick_device(args.device)
    settings = [f"valid_fraction={1 / (args.movies - 1):.4f}", *args.recipe_set]
    settings += [f"tile_sizes={args.tile_sizes}"] if args.tile_sizes else []
    settings += [f"tiles_per_image={args.tiles_per_image}"] if args.tiles_per_image else []
    cache = root / "movies_runs.jsonl"  # finished trainings: a rerun with the same --root trains only what is missing
    lines = cache.read_text().splitlines() if cache.exists() else []
    done = {rec["key"]: rec for rec in map(json.loads, lines)}
    results, started = {}, time.time()
    for realism in realisms:
        demo = make_demo(root, realism, args.movies, args.frames, args.size)
        scale = json.loads((demo / "demo_truth.json").read_text())["config"]["scale"]
        stems = sorted(p.stem for p in (demo / "movie/lr").glob("*.czi"))
        pool = movie_source(root, demo, f"{realism}_movies", stems[:-1])
        held = movie_source(root, demo, f"{realism}_heldout", stems[-1:])
        pairs = truth_pairs(held, demo, scale)
        limit = mean_rows([{k: v for k, v in against(clean, p, clean).items() if not k.startswith("truth")}
                           for p, clean in pairs])
        runs: dict = {m: [] for m in METHODS}
        for seed in seeds:
            for frames in FRAMES:
                name = f"{realism}_{frames}f_s{seed}"
                key = f"{name}|{args.epochs}ep|{','.join(settings)}"
                if key in done:
                    runs[f"{frames}-frame"].append(done[key])
                    base = done[key]["baselines"]
                    continue
                if name not in datasets.names():
                    builder.make("movie_001", datasource=pool, name=name, settings=[*settings, f"frames={frames}",
                                                                                     f"seed={seed}"],
                                 progress=False, track=False)
                print(f"[{time.time() - started:5.0f} s] {realism} {frames}-frame seed {seed}: training "
                      f"{args.epochs} epochs on {where} ...", flush=True)
                tick = time.time()
                result = train(TrainConfig(dataset=name, epochs=args.epochs, seed=seed, device=device),
                               progress=False, register=False)
                minutes = (time.time() - tick) / 60
                summary = evaluate(result.model_uri, datasource=held, out_dir=out / "eval" / name, device=device,
                                   progress=False, track=False).summary
                mine, by_method = score(result.model_uri, pairs, device)
                base = {m: mean_rows(rows) for m, rows in by_method.items()}
                rec = {**mean_rows(mine), "minutes": minutes, "epochs": int(result.metrics["epochs"]),
                       "best_epoch": int(result.metrics["best_epoch"]) + 1, "seed": seed,
                       "evaluate": {k: summary[k] for k in ("model", "bicubic", "bilinear")},
                       "model_uri": result.model_uri, "key": key, "baselines": base}
                # what bpho evaluate reports and this script's own scoring are the same numbers
                assert abs(rec["psnr"] - summary["model"]["psnr"]) < 1e-3, (rec["psnr"], summary["model"]["psnr"])
                with open(cache, "a") as fh:
                    fh.write(json.dumps(rec) + "\n")
                runs[f"{frames}-frame"].append(rec)
                print(f"    PSNR {rec['psnr']:.2f} dB, flicker {rec['flicker']:.4f} (vs truth "
                      f"{rec['truth_psnr']:.2f} dB, {rec['truth_flicker']:.4f}), best epoch "
                      f"{rec['best_epoch']}/{rec['epochs']}, {minutes:.1f} min", flush=True)
            for m in ("bicubic", "bilinear"):
                runs[m].append(base[m])
        results[realism] = {"runs": runs, "limit": limit, "movies": {"train+valid": stems[:-1], "held_out": stems[-1:]}}
    cells = table_rows(results)
    header = (f"held-out demo movie(s) ({args.movies - 2} training, 1 validation (picks the epoch), 1 held out, "
              f"{args.frames} frames of {args.size} px HR); {args.epochs} epochs each, seeds {args.seeds}; "
              f"training on {where}. PSNR, SSIM (per-frame means) and flicker as `bpho evaluate --datasource` "
              "scores them: against the acquired HR movie (detector noise); 'vs truth': against the noiseless HR.")
    print("\n" + header + "\n\n" + text(cells))
    (out / "movies.md").write_text(header + "\n\n" + markdown(cells) + "\n")
    (out / "movies.json").write_text(json.dumps({"settings": vars(args), "device": where, "recipe_settings": settings,
                                                 "results": results}, indent=2, default=str))
    plot(results, out / "movies.png")
    print(f"\ntable (md), JSON, plot and evaluate's figures in {out}; scratch root {root}")


if __name__ == "__main__":
    main()
