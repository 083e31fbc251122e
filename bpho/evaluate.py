"""Evaluate a model on full held-out images against nearest / bilinear / bicubic upsampling.

Images: a dataset's test source images (held out by the recipe's ``test_fraction``: never
tiled, never seen by training or by any choice), else its validation images (they chose the
registered epoch, so their scores flatter the model; said so), or either split by name
(``split``); or every pair of a paired datasource never used in training (registered here).
Dataset images are kept whole in the dataset, the HR moved onto the LR by the dataset's
registration. Each LR image is super-resolved whole (tiled and blended); every method is
compared with the HR image by `bpho.metrics.compare` (PSNR, SSIM, MS-SSIM, NRMSE) and by FRC
against the HR (two independent acquisitions), on the interior the registration shift did
not invent. Every evaluation says which images it scored, from which split, and whether the
model's epoch selection (or its training) used any of them (`Provenance`).

Training validates every epoch with the same functions (`score_model`, `score_baselines`,
`summarize`) on the validation images, so its `valid_psnr` is this module's model PSNR with
``split="valid"``. Baseline scores depend only on the (immutable) dataset and the scoring
protocol, so `dataset_baselines` computes them once and keeps them under
``$BPHO_ROOT/cache/baselines/``.

Results: ``evaluation.csv`` (one row per image and method), a summary (means, and the
model's gain over bicubic with a 95% bootstrap interval over images), and figures
(LR | bicubic | model | HR crops with a zoomed inset, the error maps, FRC curves), all
logged to an MLflow evaluation run tagged with the model's training run and dataset digest.
"""

from __future__ import annotations

import csv
import hashlib
import inspect
import json
import tempfile
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
from tqdm import tqdm

from bpho import datasets, datasources, io, metrics, paths, tracking
from bpho.config import EvaluateConfig
from bpho.datasets.register import apply_registration, register_pair, upsample
from bpho.datasets.sources import plane_stack
from bpho.errors import BphoError
from bpho.inference import SuperResolver, load_model

BASELINES = {"nearest": 0, "bilinear": 1, "bicubic": 3}
METRICS = ("psnr", "ssim", "ms_ssim", "nrmse", "frc_px", "frc_nm")
SPLITS = ("test", "valid")  # what `--split` takes
SPLIT_WORDS = {"test": "test", "valid": "validation"}


Pair = datasets.ImagePair


def validation_pairs(dataset: str) -> List[Pair]:
    """The dataset's validation source images, whole, as the builder registered and stored them
    (the images training chooses its best epoch on)."""
    ds = datasets.open(dataset)
    if ds.validation_split != "valid":
        raise BphoError(f"dataset {dataset!r} holds no image out (valid_fraction=0); evaluate on a paired "
                        "--datasource never used in training instead")
    return ds.validation_images()


def dataset_pairs(dataset: str, split: Optional[str] = None) -> Tuple[List[Pair], str]:
    """The whole images of `dataset` to score and their split: ``split`` "test" or "valid", or by
    default the test images when the dataset has any (no choice has seen them), else the
    validation images. One-line BphoError for a split the dataset does not have."""
    ds = datasets.open(dataset)
    if split is None:
        split = "test" if ds.has_test_images else "valid"
    if split not in SPLITS:
        raise BphoError(f"split {split!r}: use test or valid")
    if split == "valid":
        return validation_pairs(dataset), split
    if not ds.has_test_images:
        raise BphoError(f"dataset {dataset!r} has no test images (built with test_fraction=0); rebuild it with "
                        "--set test_fraction=0.2 --force, or score its validation images with --split valid")
    return ds.test_images(), split


@dataclass(frozen=True)
class Provenance:
    """Which images an evaluation scored and what had seen them before.

    where: ``dataset:NAME`` or ``datasource:NAME``; split: test or valid, None for a datasource;
    images: their names; selected_on: those the model's epoch selection scored (its training's
    validation images); trained_on: those among the training images of the model's dataset
    (None: unknown, that dataset is not under this BPHO_ROOT; `--mix` datasets are not checked);
    selection_known: False for a model saved without the names of its validation images.
    """

    where: str
    split: Optional[str]
    images: List[str]
    selected_on: List[str] = field(default_factory=list)
    trained_on: Optional[List[str]] = None
    selection_known: bool = True

    @property
    def selection_used(self) -> Optional[bool]:
        """Whether any choice (the epoch selection) used the scored images (None: unknown)."""
        return bool(self.selected_on) if self.selection_known else None

    def describe(self) -> str:
        """One sentence for people: which images, from which split, and what saw them."""
        kind = f"{SPLIT_WORDS[self.split]} " if self.split else ""
        names = ", ".join(self.images[:6]) + (", ..." if len(self.images) > 6 else "")
        text = f"scored {len(self.images)} {kind}image(s) of {self.where.replace(':', ' ', 1)} ({names})"
        if self.trained_on:
            text += f"; the model was TRAINED on {len(self.trained_on)} of them: they are not held out"
        if self.selection_used:
            text += (f"; {len(self.selected_on)} of them chose the model's epoch (best validation PSNR), so these "
                     "numbers flatter it: for images no choice has seen, " + (
                         "build the dataset with a test split (--set test_fraction=0.2)" if self.split == "valid"
                         else "score images never used in training"))
        elif self.selection_used is None:
            text += ("; whether they chose the model's epoch is unknown (the model does not record its validation "
                     "images)")
        elif not self.trained_on:
            text += "; neither training nor any choice (epoch selection) saw them"
        return text


def provenance(meta: dict, where: str, split: Optional[str], pairs: List[Pair], datasource_digest: str) -> Provenance:
    """What had seen `pairs` before: the model's `meta` (as training saved it) names the images its
    epoch was chosen on and the dataset it was trained on; images are the same images when they come
    from the same datasource (same content digest) under the same name."""
    names = [p.name for p in pairs]
    if meta.get("datasource_digest") != datasource_digest:  # trained on other files altogether
        return Provenance(where, split, names, [], [])
    chosen = (meta.get("validation") or {}).get("images")
    trained = None
    own = _dataset_if_here(meta.get("dataset"), meta.get("dataset_digest"))
    if own is not None:
        train_names = {r["source"] for r in own.manifest["sources"] if r["split"] == "train" and r["included"]}
        trained = [n for n in names if n in train_names]
        if chosen is None:  # saved before models recorded it: their dataset's validation images chose
            chosen = [p.name for p in own.validation_images()] if "validation_images" in own.manifest else None
    if chosen is None:
        return Provenance(where, split, names, [], trained, selection_known=False)
    return Provenance(where, split, names, [n for n in names if n in set(chosen)], trained)


def _dataset_if_here(name: Optional[str], digest: Optional[str]):
    """The dataset `name` when it is under this BPHO_ROOT with that digest, else None."""
    if not name or name not in datasets.names():
        return None
    ds = datasets.open(name)
    return ds if ds.digest == digest else None


def _pairs_from_datasource(source: datasources.Datasource, scale: int, transform: str) -> List[Pair]:
    name = source.name
    if not source.pairs:
        raise BphoError(f"datasource {name!r} has no LR/HR pairs to evaluate on")
    out = []
    for pair in source.pairs:  # channel 0, z plane 0, as the default recipe reads them
        assert pair.lr is not None  # a datasource's pairs are pairs of files
        lr, hr = plane_stack(pair.lr), plane_stack(pair.hr)
        if hr.shape[1:] != (lr.shape[1] * scale, lr.shape[2] * scale):
            raise BphoError(f"{pair.lr}: LR {lr.shape[1:]} and HR {hr.shape[1:]} do not match the model's scale "
                            f"{scale}")
        reg = register_pair(lr.mean(0), hr.mean(0), scale, transform)
        out.append(Pair(pair.stem, lr, apply_registration(hr, reg), reg.margin,
                        io.read(pair.hr).pixel_size[2]))
    return out


def _interior(pair: Pair) -> tuple:
    """The HR pixels the registration shift did not invent: all but `margin` at each border."""
    m = pair.margin
    return slice(m, -m or None), slice(m, -m or None)


def score(img: np.ndarray, pair: Pair, t: int = 0) -> dict:
    """One (Y, X) HR-sized image against frame `t` of the pair's HR, on the interior the
    registration did not invent: `metrics.compare` (PSNR, SSIM, MS-SSIM, NRMSE) and FRC in nm."""
    inner = _interior(pair)
    hr = pair.hr[t][inner]
    values: Dict[str, Optional[float]] = dict(metrics.compare(img[inner], hr))
    curve = metrics.frc(img[inner], hr)
    values["frc_px"] = curve.resolution_px  # HR pixels: defined without a pixel size too
    values["frc_nm"] = curve.resolution_nm(pair.pixel_um)
    return values


def score_model(model: SuperResolver, pairs: List[Pair], progress: bool = False):
    """Every frame of every pair super-resolved whole (the model's tiling and blending) and
    scored; returns the rows and, per pair, its frame-0 prediction for the figures."""
    rows, first = [], []
    for pair in tqdm(pairs, desc="evaluate", unit="image", disable=not progress):
        if pair.lr.shape[0] < model.frames:
            raise BphoError(f"{pair.name}: {pair.lr.shape[0]} frames, but the model takes {model.frames}")
        for t, pred in enumerate(model.predict_frames(pair.lr)):
            rows.append({"image": pair.name, "t": t, "method": "model", **score(pred, pair, t)})
            if t == 0:
                first.append(pred)
    return rows, first


def score_baselines(pairs: List[Pair], scale: int) -> List[dict]:
    """The same rows for nearest, bilinear and bicubic upsampling of each LR frame."""
    return [{"image": pair.name, "t": t, "method": name, **score(upsample(pair.lr[t], scale, order), pair, t)}
            for pair in pairs for t in range(pair.lr.shape[0]) for name, order in BASELINES.items()]


_SCORING_CODE = (score, score_baselines, _interior)  # what baseline scores are computed by (baseline_protocol)


def baseline_protocol(pairs: List[Pair], scale: int) -> dict:
    """What baseline scores depend on besides the images' pixels: the methods, the metrics, the
    scale, the images (by name and shape), the code that computes the scores (its source text:
    a change to it is a new protocol, no version number to forget) and the numeric libraries."""
    from bpho.datasets import register

    code = "".join(inspect.getsource(f) for f in (*_SCORING_CODE, register.upsample))
    code += Path(metrics.__file__).read_text()
    libs: Dict[str, Optional[str]] = {}
    for lib in ("numpy", "scipy", "scikit-image", "piq", "torch"):
        try:
            libs[lib] = version(lib)
        except PackageNotFoundError:
            libs[lib] = None
    return {"methods": BASELINES, "metrics": list(METRICS), "scale": int(scale),
            "images": [[p.name, list(p.lr.shape), list(p.hr.shape), int(p.margin), p.pixel_um] for p in pairs],
            "code_sha256": hashlib.sha256(code.encode()).hexdigest(), "libraries": libs}


def baselines_cache_path(ds: datasets.Dataset, protocol: dict) -> Path:
    """``$BPHO_ROOT/cache/baselines/<dataset digest>-<protocol digest>.json``."""
    key = hashlib.sha256(json.dumps(protocol, sort_keys=True).encode()).hexdigest()[:16]
    return paths.root() / "cache" / "baselines" / f"{ds.digest}-{key}.json"


def dataset_baselines(ds: datasets.Dataset, pairs: List[Pair], scale: int) -> List[dict]:
    """`score_baselines(pairs, scale)` for whole images of the dataset `ds`, computed once per
    dataset and scoring protocol (`baseline_protocol`) and read back afterwards: a dataset never
    changes under its digest, so neither do its baseline scores. The cache file is written
    atomically; an unreadable one is computed again and replaced."""
    protocol = baseline_protocol(pairs, scale)
    path = baselines_cache_path(ds, protocol)
    try:
        cached = json.loads(path.read_text())
        if cached["dataset_digest"] == ds.digest and cached["protocol"] == json.loads(json.dumps(protocol)):
            return cached["rows"]
    except (OSError, ValueError, KeyError, TypeError):
        pass  # absent or unreadable: computed below
    rows = [{k: (float(v) if isinstance(v, np.floating) else v) for k, v in row.items()}
            for row in score_baselines(pairs, scale)]
    with paths.atomic_file(path, suffix=".json") as tmp:
        tmp.write_text(json.dumps({"dataset": ds.name, "dataset_digest": ds.digest, "protocol": protocol,
                                   "rows": rows}, indent=1))
    return rows


def summarize(rows: List[dict]) -> Dict[str, float]:
    """Flat means for tracking: ``valid_<metric>`` for the model, ``<baseline>_<metric>``, and
    the model's PSNR / SSIM gains over bicubic and bilinear (NaN-free: uncalibrated FRC is left out)."""
    means = _means(rows)
    out = {f"{'valid' if method == 'model' else method}_{k}": v
           for method, values in means.items() for k, v in values.items() if v is not None}
    for base, suffix in (("bicubic", ""), ("bilinear", "_bilinear")):
        for k in ("psnr", "ssim"):
            out[f"valid_{k}_gain{suffix}"] = out[f"valid_{k}"] - out[f"{base}_{k}"]
    return out


def _means(rows: List[dict]) -> Dict[str, Dict[str, Optional[float]]]:
    return {method: {k: _mean([r[k] for r in rows if r["method"] == method]) for k in METRICS}
            for method in ("model", *BASELINES)}


def bootstrap_ci(values: np.ndarray, seed: int = 0) -> tuple:
    """95% bootstrap interval of the mean over images (scipy); undefined (None, None) for one image."""
    from scipy.stats import bootstrap

    values = np.asarray(values, dtype=float)
    if values.size < 2:
        return None, None
    if np.ptp(values) == 0:
        return float(values.mean()), float(values.mean())
    res = bootstrap((values,), np.mean, confidence_level=0.95, n_resamples=2000, random_state=seed)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


@dataclass
class Evaluation:
    """What `evaluate` measured and where its files are.

    `summary` maps each method (model, bicubic, bilinear, nearest) to its mean metrics
    (psnr, ssim, ms_ssim, nrmse, frc_px, frc_nm; None where undefined), and ``gain_psnr`` /
    ``gain_ssim`` to the model's mean gain over bicubic with its 95% bootstrap interval over
    images (``mean``, ``ci95_low``, ``ci95_high``; None with one image).
    """

    model: str  # the model URI evaluated
    training_run: Optional[str]
    summary: Dict[str, dict]
    out: Path  # evaluation.csv and the figures
    images: int
    dataset_digest: Optional[str]  # of the dataset the model was trained on
    provenance: Optional[Provenance] = None  # which images were scored, from which split, what saw them
    ensemble: bool = False  # the model's predictions were averaged over 8 flips and rotations
    run_id: Optional[str] = None  # its MLflow run in bpho-evaluate (when tracked)


def evaluate(model_uri: str, dataset: Optional[str] = None, datasource: Optional[str] = None,
             out_dir: Optional[Path] = None, device: str = EvaluateConfig.device, progress: bool = True,
             track: bool = True, transform: str = EvaluateConfig.transform, split: Optional[str] = None,
             ensemble: bool = False) -> Evaluation:
    """Score a model on whole held-out images against nearest, bilinear and bicubic upsampling.

    Parameters
    ----------
    model_uri : str
        ``runs:/ID/model``, ``models:/NAME/VERSION`` or ``models:/NAME/latest``.
    dataset, datasource : str, optional
        Exactly one: a dataset's held-out images (see `split`), or a paired datasource of whole
        images never used in training (registered here with `transform`).
    split : str, optional
        With `dataset`: "test" or "valid"; by default its test images when it has any (no
        choice has seen them), else its validation images (they chose the model's epoch: the
        result says so).
    out_dir : path, optional
        Where evaluation.csv and the figures go (default: a new temporary folder).
    device : str
        auto, cpu or cuda.
    ensemble : bool
        Average the model's predictions of each tile in its 8 flips and 90-degree rotations.
    track : bool
        Log the table, the figures and the metrics as an MLflow run in bpho-evaluate.

    Returns
    -------
    Evaluation
    """
    if (dataset is None) == (datasource is None):
        raise BphoError("evaluate: give exactly one of --dataset or --datasource")
    if split is not None and dataset is None:
        raise BphoError("evaluate: --split chooses among a --dataset's images; a --datasource is scored whole")
    source = datasources.open(datasource) if datasource else None  # files verified before anything else
    pairs, split = dataset_pairs(dataset, split) if dataset else (None, None)
    ds = datasets.open(dataset) if dataset else None
    folder = tracking.download_model(model_uri)
    model = load_model(folder, device=device, ensemble=ensemble)
    s = model.scale
    if source is not None:  # exactly one of dataset, datasource
        pairs, source_digest = _pairs_from_datasource(source, s, transform), source.digest
    else:
        assert pairs is not None and ds is not None
        source_digest = ds.manifest["datasource"]["digest"]
    where = f"dataset:{dataset}" if dataset else f"datasource:{datasource}"
    seen = provenance(model.meta, where, split, pairs, source_digest)
    rows, figures_input = score_model(model, pairs, progress)
    rows += dataset_baselines(ds, pairs, s) if ds is not None else score_baselines(pairs, s)
    summary = _summary(rows)
    out = Path(out_dir or tempfile.mkdtemp(prefix="bpho-eval-"))
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(out / "evaluation.csv", rows)
    _figures(out, pairs[:3], figures_input[:3], s)
    meta = model.meta
    result = Evaluation(model=model_uri, training_run=meta.get("run_id"), summary=summary, out=out, images=len(pairs),
                        dataset_digest=meta.get("dataset_digest"), provenance=seen, ensemble=ensemble)
    if track:
        used = {True: "true", False: "false", None: "unknown"}[seen.selection_used]
        tags = {"bpho.model_uri": model_uri, "bpho.model_run_id": str(meta.get("run_id")),
                "bpho.dataset_digest": str(meta.get("dataset_digest")), "bpho.dataset": str(meta.get("dataset")),
                "bpho.evaluated_on": where, "bpho.evaluated_split": str(split or "none"),
                "bpho.evaluated_images": ",".join(seen.images)[:4000], "bpho.selection_used": used,
                "bpho.trained_on_scored": "unknown" if seen.trained_on is None else str(len(seen.trained_on))}
        if ds is not None:
            tags["bpho.evaluated_dataset_digest"] = ds.digest
        judged = tracking.model_version(model_uri)  # the registered version the URI stands for now
        if judged:
            tags.update({"bpho.model_name": judged[0], "bpho.model_version": judged[1]})
        with tracking.run(tracking.EVALUATE_EXPERIMENT, run_name=f"eval-{dataset or datasource}", tags=tags) as active:
            result.run_id = active.info.run_id
            scored = ds if ds is not None else source
            assert scored is not None  # one of them, checked above
            tracking.log_dataset_input(scored.name, scored.digest, scored.path, context="evaluation",
                                       tags={"split": str(split or "none")})
            tracking.describe_run(f"bpho evaluate: {model_uri}{ENSEMBLE_NOTE if ensemble else ''}"
                                  + (f" ([{judged[0]} version {judged[1]}](#/models/{judged[0]}/versions/{judged[1]}))"
                                     if judged else "")
                                  + f"; {seen.describe()}. `gain_*`: model minus bicubic, "
                                  "with a 95% bootstrap interval over images (`*_ci95_low/high`).\n\n"
                                  + tracking.METRIC_UNITS)
            # `evaluated_split`, not `split`: `mlflow run -e evaluate` logs the requested split ("" = default)
            tracking.log_params({"model_uri": model_uri, "images": len(pairs), "evaluated_on": where,
                                 "evaluated_split": str(split or "none"), "selection_used": used,
                                 "ensemble": str(ensemble).lower()})
            tracking.log_metrics({k: v for k, v in _flat(summary).items() if v is not None and np.isfinite(v)})
            tracking.log_artifacts([out / "evaluation.csv"])
            tracking.log_previews(sorted(out.glob("*.png")))
    return result


ENSEMBLE_NOTE = " with the 8-fold flip/rotation ensemble (--ensemble)"


def _summary(rows: List[dict]) -> Dict[str, dict]:
    summary: Dict[str, dict] = _means(rows)
    for k in ("psnr", "ssim"):
        gains = np.array([m[k] - b[k] for m, b in zip([r for r in rows if r["method"] == "model"],
                                                       [r for r in rows if r["method"] == "bicubic"])])
        lo, hi = bootstrap_ci(gains)
        summary[f"gain_{k}"] = {"mean": float(gains.mean()), "ci95_low": lo, "ci95_high": hi}
    return summary


def _mean(values) -> Optional[float]:
    vals = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def _flat(summary: dict) -> Dict[str, float]:
    return {f"{name}_{k}": v for name, d in summary.items() for k, v in d.items()}


def _write_csv(path: Path, rows: List[dict]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["image", "t", "method", *METRICS])
        writer.writeheader()
        writer.writerows(rows)


def side_by_side(pair: Pair, pred: np.ndarray, scale: int, bicubic: Optional[np.ndarray] = None) -> list:
    """(name, HR-sized image) for LR (pixels repeated) | bicubic | model | HR, frame 0."""
    bicubic = upsample(pair.lr[0], scale, BASELINES["bicubic"]) if bicubic is None else bicubic
    return [("LR", np.kron(pair.lr[0], np.ones((scale, scale)))), ("bicubic", bicubic), ("model", pred),
            ("HR", pair.hr[0])]


def zoom_box(shape) -> tuple:
    """The middle quarter (each side) of an image of `shape`: where the figures zoom in."""
    h, w = shape
    return slice(h // 2 - h // 8, h // 2 + h // 8), slice(w // 2 - w // 8, w // 2 + w // 8)


def _figures(out: Path, pairs: List[Pair], preds: List[np.ndarray], scale: int) -> None:
    from bpho.plots import pyplot

    plt = pyplot()

    for i, (pair, pred) in enumerate(zip(pairs, preds)):
        inner = _interior(pair)
        cand = {"model": pred, **{k: upsample(pair.lr[0], scale, o) for k, o in BASELINES.items()}}
        hr = metrics.normalize_target(pair.hr[0][inner])
        fig, axes = plt.subplots(2, 4, figsize=(14, 7))
        h, w = hr.shape
        zoom = zoom_box(hr.shape)
        for col, (name, img) in enumerate(side_by_side(pair, pred, scale, cand["bicubic"])):
            shown = np.clip(metrics.fit_to(img[inner], hr), 0, 1)
            axes[0, col].imshow(shown, cmap="magma", vmin=0, vmax=1)
            axes[0, col].add_patch(plt.Rectangle((zoom[1].start, zoom[0].start), w // 4, h // 4, fill=False, color="c"))
            axes[0, col].set_title(name)
            axes[1, col].imshow(shown[zoom], cmap="magma", vmin=0, vmax=1, interpolation="nearest")
            axes[1, col].set_title(f"{name}, zoom")
        for ax in axes.ravel():
            ax.axis("off")
        fig.suptitle(pair.name)
        fig.tight_layout()
        fig.savefig(out / f"crops_{i:02d}.png", dpi=72)
        plt.close(fig)

        fig, axes = plt.subplots(1, 3, figsize=(13, 4.4))
        for ax, name in zip(axes, ("bilinear", "bicubic", "model")):
            err = np.clip(metrics.fit_to(cand[name][inner], hr), 0, 1) - np.clip(hr, 0, 1)
            im = ax.imshow(err, cmap="RdBu_r", vmin=-0.5, vmax=0.5)
            ax.set_title(f"{name} - HR (RMSE {np.sqrt(np.mean(err ** 2)):.3f})")
            ax.axis("off")
        fig.colorbar(im, ax=axes, shrink=0.8)
        fig.savefig(out / f"error_{i:02d}.png", dpi=72)
        plt.close(fig)

        fig, ax = plt.subplots(figsize=(6, 4))
        px = pair.pixel_um
        for name in ("bicubic", "model"):
            curve = metrics.frc(cand[name][inner], pair.hr[0][inner])
            x = curve.frequencies / px if px else curve.frequencies
            ax.plot(x, curve.curve, label=name)
        ax.axhline(metrics.FRC_THRESHOLD, color="k", ls="--", lw=0.8, label="1/7")
        ax.set_xlabel("spatial frequency (1/um)" if px else "spatial frequency (1/pixel)")
        ax.set_ylabel("FRC against HR")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / f"frc_{i:02d}.png", dpi=80)
        plt.close(fig)
