"""bpho against the tools users would pick instead, at equal wall-clock training budget.

    python benchmarks/peers.py [--budgets 120,300,600] [--methods bpho,careamics,pssr] [--real | --denoise]
                               [--set KEY=VALUE]
                               [--root BPHO_ROOT --dataset NAME] [--tile-size 128] [--out DIR]
                               [--venvs ~/.cache/bpho-peers] [--work DIR] [--peer-batch 16]

Same data for every method: the dataset's training tiles (default its smallest size) and its
whole **test** images (`bpho.evaluate.dataset_pairs(NAME, "test")`: held out by the recipe's
`test_fraction`, never tiled, seen by no method's training or choice), frame 0; every
prediction scored by `bpho.evaluate.score` (least-squares fit of scale and offset to the HR,
so output units do not matter), and nearest / bilinear / bicubic by
`bpho.evaluate.score_baselines`. The default data: the demo with 10 paired fields, split 6
train / 2 validation / 2 test (`--root/--dataset`: a dataset that has test images).

`--real`: real fluorescence microscopy instead of the demo (benchmarks/realdata.py, every
source: the ``tune`` group, which bpho's defaults may be chosen on, and the ``held_out`` group,
which no choice looks at), cut into fields of 128 HR px (`REAL_FIELD`; 52 fields), registered
as the datasource ``real_pairs`` and built as ``real_001`` by `bpho dataset make paired_001`
with `REAL_SPLIT` (64 px tiles, split seed 1, 15% validation and 30% test fields, whole fields
per split). Besides the overall table it prints the test PSNR per source and per group (tune
/ held_out), each method beside bicubic and bilinear on the same fields, so the table shows
how far the defaults travel. With bpho's default registration check about half of the 52
fields are left out (measured: 26; mostly fields of background noise around the neuron, and 11
of NCOA4's 12), which leaves 6 test fields (one held out); `--set register=false` keeps all
52 (16 test fields, 8 of them held out: 4 per source).

`--denoise`: scale-1 denoising instead of super-resolution: the demo's noisy single frames and
their clean means of 50 (`DEMO_FIELDS` fields of 256 px, split as the demo pairs), built as
``denoise_001`` by the denoise_001 recipe with `DEMO_SPLIT`. The methods default to bpho,
bpho-n2v (bpho's self-supervised mode), careamics (CARE: noisy -> clean) and n2v (CAREamics
Noise2Void, trained on the noisy training tiles alone: what a lab without clean images can
run); the baselines are the noisy input and
`bpho.evaluate`'s denoisers (Gaussian, non-local means, wavelet, BM3D where installed), each with
the parameters that score best on the dataset's validation images, as `bpho evaluate` chooses
them. Gains are over the best of them there (the `reference`, as in `bpho evaluate`).

`--set KEY=VALUE` (repeatable) adds recipe settings to the scratch dataset's build (after
DEMO_SPLIT / REAL_SPLIT, so they win), which is then rebuilt: e.g. `--set seed=2` for another
split, or `--set register=false` to keep every field (realdata's pairs are aligned by
construction; bpho's default registration check leaves out sparse fields).

Fair selection: **every method reports the weights of its last epoch**. CAREamics predicts
with the weights in memory (its early stopping does not restore the best ones) and PSSR2 has
no selection, so bpho's row uses the run's `last.pt`, not the registered best-validation epoch
(that one was chosen on the dataset's validation images, which no peer gets); its test score
is printed beside it for information (`registered`), never in the comparison. What steers
training stays each tool's default: CARE's early stopping and ReduceLROnPlateau watch its own
10% of the training tiles, PSSR2's exponential decay is per epoch, bpho's epochs are planned
from its pace (it validates inside its budget, at most a quarter of it). No method sees a test image
before it predicts it.

- bpho: `train(TrainConfig(dataset=NAME, minutes=budget / 60))`, its defaults and nothing else
  (`bpho train --minutes`: the epochs are planned from the pace of the first batches). Predicts
  through `load_model(...).predict` on the raw LR, as a user does, with the last epoch's weights.
- CAREamics 0.3.5 (benchmarks/peer_careamics.py): CARE, `create_care_config` defaults
  (depth-2 U-Net, MAE, Adam, ReduceLROnPlateau, early stopping), patch = the HR tile, trained
  on bicubic-upsampled LR -> HR (CARE works at HR size), stopped by Lightning's `max_time`;
  predicts the bicubic-upsampled whole test images.
- bpho-n2v: `bpho train --self-supervised --minutes` (Noise2Void in bpho's own loop, the noisy
  training tiles alone; `--denoise` data), otherwise as bpho.
- n2v: CAREamics 0.3.5 Noise2Void (peer_careamics.py --algorithm n2v; `create_n2v_config`
  defaults, in the careamics environment), trained on the LR (noisy) tiles only, no target.
- PSSR2 2.4.0 (benchmarks/peer_pssr.py): default `ResUNet` and default loss (MS-SSIM + L1
  mix, as its CLI), trained on the LR -> HR tile pairs, stopped at the budget; predicts the
  whole test LR images.

Peers get the tiles exactly as the bpho dataset holds them (percentile-normalised) and the
test LR normalised the same way (the manifest's `percentile_low/high` over each image).
"train s" is the wall clock of the training call; "samples/s" is training samples (tiles) seen
per second of it, validation and setup included; "pred s" is the whole-image prediction time
for all test images.

Peer environments: each peer runs as a subprocess in its own virtual environment under
--venvs (made once, reused): `python3.11 -m venv`, then bpho's own torch and torchvision
versions (2.14.1 / 0.29.1; pip takes them from local disk) first, then the peer with those
two pinned by a constraints file, so pip never fetches another torch; `pip show torch` is
checked afterwards.
- careamics 0.3.5 pins torch<2.14.0 and torchvision<=0.26.0, which excludes bpho's torch
  (pip would download torch 2.11 and its CUDA wheels). It is installed with --no-deps, after
  its other requirements (from its wheel metadata) are installed under the constraints; it
  runs on torch 2.14.1 (`pip check` still names the two pins).
- pssr 2.4.0 needs numpy<2 (both environments resolve to numpy 1.26.4; torch 2.14.1 runs on
  it); no conflict otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEMO_FIELDS = 10  # 6 to train on (as the default demo's paired_001), 2 to validate on, 2 to test on
DEMO_SPLIT = ["valid_fraction=0.2", "test_fraction=0.2"]
CEILING = "ceiling"  # the PSNR of a noise-free image against the test HR, estimated (metrics.noise_ceiling_psnr)
REAL_FIELD = 128  # HR px: 12 fields per neuron channel, 16 of the nuclei image (52 with every source)
REAL_SPLIT = ["tile_sizes=64", "seed=1", "valid_fraction=0.15", "test_fraction=0.3"]  # 52 fields: 28 / 8 / 16
PEERS = {
    "careamics": {"spec": "careamics==0.3.5", "runner": "peer_careamics.py", "no_deps": [
        "bioimageio-core>=0.9.0,<=0.11.0", "lightning>=2.2,<=2.6.6,!=2.6.2,!=2.6.3", "matplotlib<=3.11.2",
        "microssim<=0.0.5", "numpy>=1.21,<=2.4.6", "pillow<=13.0.0", "psutil<=7.2.2", "pydantic>=2.11,<=2.14.1",
        "pyyaml<=6.0.3,!=6.0.0", "scikit-image<=0.26.0", "tifffile<=2026.3.3", "torchmetrics>0.7.0,<1.9.0",
        "zarr>=3.0.0,<4.0.0"]},
    "pssr": {"spec": "pssr==2.4.0", "runner": "peer_pssr.py", "no_deps": None},
}
PEER_RUNS = {"careamics": ("careamics", []), "n2v": ("careamics", ["--algorithm", "n2v"]),
             "pssr": ("pssr", [])}  # method -> (its environment in PEERS, runner arguments)


def torch_pins() -> list:
    return [f"torch=={version('torch').split('+')[0]}", f"torchvision=={version('torchvision').split('+')[0]}"]


def ensure_venv(name: str, base: Path) -> Path:
    """The peer's virtual environment (made once): torch first, then the peer; returns its python."""
    peer, folder = PEERS[name], base / name
    py, done = folder / "bin" / "python", folder / ".bpho-peer"
    pins = torch_pins()
    if done.is_file() and done.read_text() == " ".join([peer["spec"], *pins]):
        return py
    print(f"[{name}] making its environment in {folder} (once)", flush=True)
    if not py.exists():
        subprocess.run([shutil.which("python3.11") or sys.executable, "-m", "venv", str(folder)], check=True)
    pip = [str(py), "-m", "pip", "install", "-q"]
    subprocess.run(pip + pins, check=True)
    constraints = folder / "torch-constraints.txt"
    constraints.write_text("\n".join(pins) + "\n")
    if peer["no_deps"] is not None:  # the peer's own torch pins exclude bpho's torch
        subprocess.run(pip + ["-c", str(constraints), *peer["no_deps"]], check=True)
        subprocess.run(pip + ["--no-deps", peer["spec"]], check=True)
    else:
        subprocess.run(pip + ["-c", str(constraints), peer["spec"]], check=True)
    shown = subprocess.run([str(py), "-m", "pip", "show", "torch"], capture_output=True, text=True).stdout
    got = next((line.split(":", 1)[1].strip() for line in shown.splitlines() if line.startswith("Version:")), None)
    if got is None or got.split("+")[0] != pins[0].split("==")[1]:
        sys.exit(f"[{name}] its environment has torch {got}, not {pins[0]}: remove {folder} and retry")
    done.write_text(" ".join([peer["spec"], *pins]))
    return py


def setup_real(root: Path, name: str, extra=()) -> str:
    """realdata.py's fields (every source, `REAL_FIELD` px) as the datasource real_pairs, and the
    dataset `name` built from it by the paired_001 recipe with `REAL_SPLIT`."""
    from bpho import datasets, datasources
    from bpho.datasets import builder

    sys.path.insert(0, str(HERE))
    from realdata import SOURCES, make_real_pairs

    folder = root / f"real_{REAL_FIELD}"
    if not (folder / "realdata.json").is_file():
        print("making the real pairs ...", flush=True)
        make_real_pairs(folder, field_size=REAL_FIELD, sources=list(SOURCES), force=True)
    if "real_pairs" not in datasources.names():
        datasources.add("real_pairs", [folder], kind="paired", progress=False)
    if extra or name not in datasets.names() or not datasets.open(name).has_test_images:
        builder.make("paired_001", datasource="real_pairs", name=name, settings=REAL_SPLIT + list(extra), force=True)
    return name


def real_sources(root: Path) -> dict:
    """field name -> (source, group) of the real pairs in the scratch root."""
    meta = json.loads((root / f"real_{REAL_FIELD}" / "realdata.json").read_text())
    return {f["name"]: (f["source"], meta["sources"][f["source"]]["group"]) for f in meta["fields"]}


def setup_data(a) -> str:
    """BPHO_ROOT and the dataset: --root/--dataset as given (it must have test images), the real
    fluorescence pairs (--real), the demo's noisy / clean fields (--denoise) or the demo pairs
    (10 fields) in a scratch root, built with a test split."""
    if a.root:
        os.environ["BPHO_ROOT"] = str(Path(a.root).resolve())
        from bpho import datasets

        if not datasets.open(a.dataset).has_test_images:
            sys.exit(f"dataset {a.dataset!r} has no test images: rebuild it with --set test_fraction=0.2 (the "
                     "benchmark scores images that no method trained or chose on)")
        return a.dataset
    root = Path(a.work) / "root"
    os.environ["BPHO_ROOT"] = str(root)
    if a.real:
        return setup_real(root, a.dataset, a.set)
    from bpho import datasets, datasources
    from bpho.datasets import builder
    from bpho.config import DemoConfig
    from bpho.demo import make_demo_data

    kind = "denoise" if a.denoise else "paired"
    demo = root / f"demo_{kind}_{DEMO_FIELDS}"
    if not demo.exists():
        print(f"making the demo {kind} fields ...", flush=True)
        n = {"paired_fields": 0, "denoise_fields": 0, f"{kind}_fields": DEMO_FIELDS}
        make_demo_data(demo, DemoConfig(movies=0, hr_only_fields=0, **n), progress=False)
    source = f"demo_{kind}_{DEMO_FIELDS}"
    if source not in datasources.names():
        datasources.add(source, [demo / kind], kind=kind, progress=False)
    if a.set or a.dataset not in datasets.names() or not datasets.open(a.dataset).has_test_images:
        builder.make(f"{kind}_001", datasource=source, name=a.dataset, settings=DEMO_SPLIT + a.set, force=True)
    return a.dataset


def export(ds, size: int, pairs, folder: Path) -> None:
    """What the peers read: training tiles (and their bicubic upsampling, for CARE) and the whole
    test LR images (frame 0), normalised as the dataset normalised its tiles."""
    from bpho.datasets.register import upsample

    lr, hr = ds.tiles(size, "train")
    if lr.shape[1] != 1:
        sys.exit(f"dataset {ds.name!r} has {lr.shape[1]}-frame tiles: the peers take single frames")
    scale = hr.shape[-1] // lr.shape[-1]
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "train_lr.npy", np.asarray(lr, np.float32))
    np.save(folder / "train_hr.npy", np.asarray(hr, np.float32))
    np.save(folder / "train_lr_up.npy", np.stack([upsample(t[0], scale, 3) for t in lr])[:, None])
    p = ds.manifest["parameters"]
    for i, pair in enumerate(pairs):
        lo, hi = np.percentile(pair.lr, (p["percentile_low"], p["percentile_high"]))
        image = ((pair.lr[0] - lo) / max(hi - lo, 1e-12)).astype(np.float32)
        np.save(folder / f"test_lr_{i:02d}.npy", image)
        np.save(folder / f"test_lr_up_{i:02d}.npy", upsample(image, scale, 3))


def run_peer(name: str, py: Path, data: Path, budget: float, out: Path, n: int, batch: int):
    """Train and predict in the peer's environment; returns (predictions, result dict) or None."""
    out.mkdir(parents=True, exist_ok=True)
    log = out / "log.txt"
    env, args = PEER_RUNS[name]
    cmd = [str(py), str(HERE / PEERS[env]["runner"]), "--data", str(data), "--budget", str(budget),
           "--out", str(out), "--batch-size", str(batch), *args]
    with open(log, "w") as fh:
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        print(f"[{name}] failed (exit {rc}); the end of {log}:\n" + "".join(open(log).readlines()[-15:]), flush=True)
        return None
    preds = [np.load(out / f"pred_{i:02d}.npy") for i in range(n)]
    return preds, json.loads((out / "result.json").read_text())


def run_bpho(dataset: str, size: int, budget: float, pairs, n_train: int, self_supervised: bool = False):
    """bpho's defaults with a time budget (`bpho train --minutes`: epochs planned from the pace
    of the first batches, one-cycle schedule over them), predicted as a user does, with the
    weights of the last epoch (as the peers report theirs); the registered model (the best
    validation epoch) is scored too, for information: `registered`. `self_supervised`: `bpho train
    --self-supervised` (Noise2Void in bpho's loop: the noisy tiles alone)."""
    import torch

    from bpho import evaluate, tracking
    from bpho.inference import load_model
    from bpho.config import TrainConfig
    from bpho.train import checkpoint_path, train

    start = time.perf_counter()
    result = train(TrainConfig(dataset=dataset, tile_size=size, minutes=budget / 60, self_supervised=self_supervised),
                   progress=False, register=False)
    train_s = time.perf_counter() - start
    model = load_model(tracking.download_model(result.model_uri), device="auto")
    registered = [evaluate.score(model.predict(pair.lr[0]), pair, t=0) for pair in pairs]
    last = torch.load(checkpoint_path(result.run_id, "last"), map_location="cpu", weights_only=True)
    model.net.load_state_dict(last["model"])
    start = time.perf_counter()
    preds = [model.predict(pair.lr[0]) for pair in pairs]
    predict_s = time.perf_counter() - start
    epochs = int(result.metrics["epochs"])
    return preds, {"train_s": train_s, "samples": epochs * n_train, "samples_per_s": epochs * n_train / train_s,
                   "epochs": epochs, "reported_epoch": int(last["epoch"]) + 1, "predict_s": predict_s,
                   "registered": {"epoch": int(result.metrics["best_epoch"]) + 1,
                                  **{k: mean(registered, k) for k in ("psnr", "ssim", "frc_nm")}}}


def mean(rows, key):
    vals = [r[key] for r in rows if r.get(key) is not None and np.isfinite(r[key])]
    return float(np.mean(vals)) if vals else None


def table(rows, base, ref: str = "bicubic") -> str:
    """Each method's row and the baselines' (`base`: name -> means), gains over the baseline `ref`."""
    def f(v, fmt: str) -> str:
        return format(v, fmt) if v is not None else "-".rjust(len(format(0, fmt)))
    lines = [f"{'method':10s} {'budget s':>8s} {'train s':>8s} {'epochs':>6s} {'PSNR':>7s} {'SSIM':>6s} "
             f"{'FRC nm':>7s} {'samples/s':>9s} {'pred s':>7s} {'gain dB':>8s}"]
    for r in rows:
        gain = None if r["psnr"] is None else r["psnr"] - base[ref]["psnr"]
        lines.append(f"{r['method']:10s} {r['budget_s']:8.0f} {f(r.get('train_s'), '8.1f')} "
                     f"{f(r.get('epochs'), '6d')} {f(r['psnr'], '7.2f')} {f(r['ssim'], '6.3f')} "
                     f"{f(r['frc_nm'], '7.0f')} {f(r.get('samples_per_s'), '9.1f')} {f(r.get('predict_s'), '7.2f')} "
                     f"{f(gain, '+8.2f')}")
    for name, b in base.items():
        lines.append(f"{name:10s} {'-':>8s} {'-':>8s} {'-':>6s} {f(b['psnr'], '7.2f')} {f(b['ssim'], '6.3f')} "
                     f"{f(b['frc_nm'], '7.0f')} {'-':>9s} {'-':>7s} {f(b['psnr'] - base[ref]['psnr'], '+8.2f')}")
    return "\n".join(lines)


def by_source(rows, base_rows, budget, origin) -> str:
    """Test PSNR per source and per group (mean over that source's / group's test images) of each
    method at `budget` beside bicubic and bilinear, and each method's gain over bicubic there."""
    methods = [r for r in rows if r["budget_s"] == budget and r.get("images")]
    keys = sorted({origin[Path(r["image"]).name] for r in base_rows}, key=lambda k: (k[1] != "tune", k[0]))
    groups = sorted({g for _, g in keys}, key=lambda g: g != "tune")
    bases = [b for b in ("bicubic", "bilinear", CEILING) if any(r["method"] == b for r in base_rows)]
    cols = [b.split(" ")[0] for b in bases] + [r["method"] for r in methods]
    lines = [f"{'source':16s} {'group':8s} {'n':>2s} " + " ".join(f"{c:>9s}" for c in cols)
             + "".join(f" {r['method'][:6] + ' gain':>11s}" for r in methods)]

    def line(label, group, pick):
        images = {Path(r["image"]).name for r in base_rows if pick(origin[Path(r["image"]).name])}
        vals = [mean([r for r in base_rows if r["method"] == b and Path(r["image"]).name in images], "psnr")
                for b in bases]
        vals += [mean([s for s in r["images"] if Path(s["image"]).name in images], "psnr") for r in methods]
        gains = [None if v is None else v - vals[0] for v in vals[len(bases):]]
        return (f"{label:16s} {group:8s} {len(images):2d} " + " ".join("        -" if v is None else f"{v:9.2f}"
                                                                        for v in vals)
                + "".join("          -" if g is None else f" {g:+11.2f}" for g in gains))

    for key in keys:
        lines.append(line(key[0], key[1], lambda o, key=key: o == key))
    for g in groups:
        lines.append(line(f"all {g}", g, lambda o, g=g: o[1] == g))
    return "\n".join(lines)


def plot(rows, base, budgets, methods, png: Path, ref: str = "bicubic") -> None:
    from bpho.plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(3.5 + 0.6 * len(budgets) * max(len(methods), 1), 4))
    width = 0.8 / max(len(methods), 1)
    for j, m in enumerate(methods):
        ys = [next((r["psnr"] for r in rows if r["method"] == m and r["budget_s"] == b), None) for b in budgets]
        xs = [i + (j - (len(methods) - 1) / 2) * width for i in range(len(budgets))]
        ax.bar(xs, [np.nan if y is None else y for y in ys], width, label=m)
    for name, style in zip(base, ("--", ":", "-.", (0, (1, 3)), (0, (5, 5)), (0, (3, 1, 1, 1)))):
        ax.axhline(base[name]["psnr"], color="k", ls=style, lw=1, label=name)
    ax.set_xticks(range(len(budgets)), [f"{b:g} s" for b in budgets])
    ax.set_xlabel("training budget (wall clock)")
    ax.set_ylabel("PSNR (dB), test images")
    lo = min([b["psnr"] for b in base.values()] + [r["psnr"] for r in rows if r["psnr"] is not None])
    hi = max([base[ref]["psnr"]] + [r["psnr"] for r in rows if r["psnr"] is not None])
    ax.set_ylim(lo - 1, hi + 0.5)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budgets", default="120,300,600", help="training seconds, comma-separated")
    p.add_argument("--methods", help="default bpho,careamics,pssr (--denoise: bpho,bpho-n2v,careamics,n2v)")
    p.add_argument("--root", help="an existing BPHO_ROOT (default: the demo pairs in a scratch root under --work)")
    p.add_argument("--real", action="store_true",
                   help="real fluorescence (benchmarks/realdata.py, every source) instead of the demo; "
                        "prints the scores per source and per group too")
    p.add_argument("--denoise", action="store_true",
                   help="scale-1 denoising: the demo's noisy / clean fields, against N2V, CARE and classic denoisers")
    p.add_argument("--dataset", default="paired_001")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a recipe setting for the scratch dataset (repeatable; rebuilds it), e.g. seed=2")
    p.add_argument("--tile-size", type=int, help="HR tile size (default: the dataset's smallest)")
    p.add_argument("--peer-batch", type=int, default=16, help="batch size of CAREamics and PSSR2 (PSSR2's CLI default)")
    p.add_argument("--venvs", default=str(Path.home() / ".cache" / "bpho-peers"))
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "bpho-bench-peers"))
    p.add_argument("--out", help="results folder (default: a new temporary folder)")
    a = p.parse_args()
    if (a.real or a.set) and a.root:
        p.error("--real and --set build their own data in a scratch root under --work; leave out --root")
    if a.real and a.denoise:
        p.error("--real is super-resolution data; --denoise the demo's denoising data: choose one")
    if a.real and a.dataset == "paired_001":
        a.dataset = "real_001"
    if a.denoise and a.dataset == "paired_001":
        a.dataset = "denoise_001"
    budgets = [float(b) for b in a.budgets.split(",")]
    methods = [m.strip() for m in (a.methods or ("bpho,bpho-n2v,careamics,n2v" if a.denoise else "bpho,careamics,pssr"))
               .split(",") if m.strip()]
    unknown = set(methods) - {"bpho", "bpho-n2v", *PEER_RUNS}
    if unknown:
        p.error(f"unknown methods {sorted(unknown)}: use bpho, bpho-n2v, {', '.join(PEER_RUNS)}")
    out = Path(a.out or tempfile.mkdtemp(prefix="bpho-peers-"))
    out.mkdir(parents=True, exist_ok=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{Path(tempfile.mkdtemp(prefix='bpho-peers-mlflow-')) / 'mlflow.db'}"

    pythons = {m: ensure_venv(PEER_RUNS[m][0], Path(a.venvs)) for m in methods if m in PEER_RUNS}
    name = setup_data(a)
    from bpho import datasets
    from bpho.evaluate import (_interior, baseline_methods, dataset_pairs, score, score_baselines, score_methods,
                               tune_denoisers)
    from bpho.metrics import noise_ceiling_psnr

    ds = datasets.open(name)
    size = a.tile_size or min(ds.tile_sizes)
    pairs, _ = dataset_pairs(name, "test")
    exchange = Path(tempfile.mkdtemp(prefix="bpho-peers-data-"))
    export(ds, size, pairs, exchange)
    lr, hr = ds.tiles(size, "train")
    scale, n_train = hr.shape[-1] // lr.shape[-1], len(lr)
    if scale == 1:  # denoising: the input and the denoisers, parameters chosen on the validation images
        print("choosing the denoisers' parameters on the validation images ...", flush=True)
        tuned = tune_denoisers(dataset_pairs(name, "valid")[0])
        ref = max(tuned, key=lambda m: tuned[m]["psnr"])
        base_rows = [r for r in score_methods(pairs, baseline_methods(1, tuned)) if r["t"] == 0]
    else:
        tuned, ref = {}, "bicubic"
        base_rows = [r for r in score_baselines(pairs, scale) if r["t"] == 0]
        base_rows += [{"image": pair.name, "t": 0, "method": CEILING, "psnr": noise_ceiling_psnr(pair.hr[0][_interior(pair)]),
                       "ssim": None, "frc_nm": None} for pair in pairs]
    names = list(dict.fromkeys(r["method"] for r in base_rows))
    base = {m: {k: mean([r for r in base_rows if r["method"] == m], k) for k in ("psnr", "ssim", "frc_nm")}
            for m in names}
    shown = {m: base[m] for m in (("bicubic", "bilinear", CEILING) if scale > 1 else names)}  # in tables and plot
    origin = real_sources(Path(os.environ["BPHO_ROOT"])) if a.real else None
    if tuned:
        print("denoisers (parameters best on the validation images): " + ", ".join(
            f"{m} {tuned[m]['params']} ({tuned[m]['psnr']:.2f} dB there)" for m in tuned) + f"; reference {ref}")
    if scale > 1:
        print(f"{CEILING}: what a noise-free image would score against the test HR, estimated from the HR's own "
              "pixel noise (bpho.metrics.noise_ceiling_psnr; within 0.16 dB of the true ceiling on demo fields)")
    print(f"dataset {name}: {n_train} training tiles of {size} px (HR, x{scale}), {len(pairs)} test images "
          f"({', '.join(p.name for p in pairs)}: no method trains or chooses on them); every method reports its "
          "last epoch; "
          f"methods {', '.join(methods)}; budgets {', '.join(f'{b:g}' for b in budgets)} s", flush=True)

    rows = []
    for budget in budgets:
        for m in methods:
            print(f"== {m}, budget {budget:g} s", flush=True)
            if m in ("bpho", "bpho-n2v"):
                got = run_bpho(name, size, budget, pairs, n_train, self_supervised=m == "bpho-n2v")
            else:
                got = run_peer(m, pythons[m], exchange, budget, out / f"{m}_{budget:g}", len(pairs), a.peer_batch)
            row = {"method": m, "budget_s": budget, "psnr": None, "ssim": None, "frc_nm": None}
            if got is not None:
                preds, info = got
                scores = [{"image": pair.name, **score(pred, pair, t=0)} for pred, pair in zip(preds, pairs)]
                row.update(info, **{k: mean(scores, k) for k in ("psnr", "ssim", "frc_nm")}, images=scores)
                row["gain_db"] = row["psnr"] - base[ref]["psnr"]
                print(f"[{m}] train {info['train_s']:.1f} s, PSNR {row['psnr']:.2f} dB "
                      f"({row['gain_db']:+.2f} over {ref}), SSIM {row['ssim']:.3f}", flush=True)
                if "registered" in info:
                    reg = info["registered"]
                    print(f"[{m}] for information, not compared: the registered model (best validation epoch "
                          f"{reg['epoch']} of {info['epochs']}) scores {reg['psnr']:.2f} dB on the same test images",
                          flush=True)
            rows.append(row)
        print(f"\nbudget {budget:g} s ({name}, tile {size}, {len(pairs)} test images, last epochs):")
        print(table([r for r in rows if r["budget_s"] == budget], shown, ref) + "\n", flush=True)
        if origin:
            print(f"per source and group, test PSNR (dB), budget {budget:g} s (tune: defaults may be chosen on "
                  "them; held_out: no choice looked at them):")
            print(by_source(rows, base_rows, budget, origin) + "\n", flush=True)

    report = {"dataset": name, "digest": ds.digest, "settings": a.set, "tile_size": size, "scale": scale,
              "train_tiles": n_train,
              "test_images": [pair.name for pair in pairs], "reported": "last epoch of every method",
              "budgets_s": budgets, "methods": methods,
              "peer_batch": a.peer_batch, "baselines": base, "reference": ref, "rows": rows}
    if tuned:
        report.update(denoisers={m: tuned[m]["params"] for m in tuned}, baseline_images=base_rows,
                      denoisers_tuned_on=[pair.name for pair in dataset_pairs(name, "valid")[0]])
    if origin:
        report.update(real_split=REAL_SPLIT + a.set, real_field_px=REAL_FIELD,
                      test_origin={p.name: list(origin[Path(p.name).name]) for p in pairs},
                      baseline_images=base_rows)
    (out / "peers.json").write_text(json.dumps(report, indent=1, default=float))
    plot(rows, shown, budgets, methods, out / "peers.png", ref)
    shutil.rmtree(exchange, ignore_errors=True)
    print(f"wrote {out / 'peers.json'} and {out / 'peers.png'}")


if __name__ == "__main__":
    main()
