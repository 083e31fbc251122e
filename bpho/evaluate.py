"""Evaluate a model on full held-out images against the baselines people use.

Baselines: nearest / bilinear / bicubic upsampling for a super-resolution model; for a scale-1
(denoising) model the noisy input itself and the denoisers people compare with (`DENOISERS`:
Gaussian filtering, non-local means, wavelet denoising, BM3D where the `bm3d` package is installed),
each with the parameters of a small grid that score best on the dataset's validation images, never
on the scored test images (`tune_denoisers`).

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

Movies (images of more than one frame) are judged as movies too: every frame is scored (the
``t`` column), and each method's `bpho.metrics.flicker` (the error of its frame-to-frame changes
against the HR's) goes to ``temporal.csv`` and the summary; PSNR and SSIM over time and a
kymograph with frame differences of HR, model and bicubic (scale 1: the input) are drawn.

Results: ``evaluation.csv`` (one row per image, frame and method), a summary (means, and the
model's gain over the reference baseline, bicubic or the best denoiser on the validation images,
with a 95% bootstrap interval over images), and figures (input | reference | model | HR crops with
a zoomed inset, the error maps, FRC curves), all logged to an MLflow evaluation run tagged with
the model's training run and dataset digest.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import inspect
import json
import tempfile
from dataclasses import dataclass, field
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from bpho import datasets, datasources, io, metrics, paths, tracking
from bpho.config import EvaluateConfig
from bpho.datasets.register import apply_registration, register_pair, upsample
from bpho.datasets.sources import plane_stack
from bpho.errors import BphoError
from bpho.inference import SuperResolver, load_model

BASELINES = {"nearest": 0, "bilinear": 1, "bicubic": 3}  # scale > 1: spline order of the upsampling
# scale 1: the grids the denoisers' parameters are chosen from (on the validation images); `nl_means`'
# h and `bm3d`'s sigma_psd in units of the noise sigma estimated from each image (skimage estimate_sigma,
# which finds 2-3 times too little in the demo's Poisson noise: the grids reach 3)
DENOISERS: Dict[str, List[dict]] = {
    "gaussian": [{"sigma": s} for s in (0.5, 0.75, 1.0, 1.5, 2.0, 3.0)],
    "nl_means": [{"h": h} for h in (0.6, 0.8, 1.0, 1.5, 2.0, 3.0)],
    "wavelet": [{"method": m, "mode": mode} for m in ("BayesShrink", "VisuShrink") for mode in ("soft", "hard")],
    "bm3d": [{"sigma": f} for f in (0.75, 1.5, 3.0)],
}
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


def score_model(model: SuperResolver, pairs: List[Pair], progress: bool = False,
                stacks: Optional[Dict[str, np.ndarray]] = None):
    """Every frame of every pair super-resolved whole (the model's tiling and blending) and
    scored; returns the rows and, per pair, its frame-0 prediction for the figures. `stacks`,
    when given, receives the whole (T, Y, X) prediction of each pair of more than one frame."""
    rows, first = [], []
    for pair in tqdm(pairs, desc="evaluate", unit="image", disable=not progress):
        if pair.lr.shape[0] < model.frames:
            raise BphoError(f"{pair.name}: {pair.lr.shape[0]} frames, but the model takes {model.frames}")
        frames = []
        for t, pred in enumerate(model.predict_frames(pair.lr)):
            rows.append({"image": pair.name, "t": t, "method": "model", **score(pred, pair, t)})
            if t == 0:
                first.append(pred)
            if stacks is not None and pair.lr.shape[0] > 1:
                frames.append(pred)
        if frames:
            assert stacks is not None
            stacks[pair.name] = np.stack(frames)
    return rows, first


def score_baselines(pairs: List[Pair], scale: int) -> List[dict]:
    """The same rows for nearest, bilinear and bicubic upsampling of each LR frame."""
    return [{"image": pair.name, "t": t, "method": name, **score(upsample(pair.lr[t], scale, order), pair, t)}
            for pair in pairs for t in range(pair.lr.shape[0]) for name, order in BASELINES.items()]


def denoisers() -> List[str]:
    """The `DENOISERS` that run here: bm3d only where its package is installed (``pip install bpho[bm3d]``)."""
    return [m for m in DENOISERS if m != "bm3d" or importlib.util.find_spec("bm3d") is not None]


def denoise(image: np.ndarray, method: str, params: dict) -> np.ndarray:
    """A (Y, X) image denoised by `method` (a `DENOISERS` key) with `params` (a point of its grid).

    The image is first scaled so that its 0.1 / 99.9 percentiles become 0 / 1 (scores fit the
    intensities anyway). gaussian: ``skimage.filters.gaussian(sigma)``; nl_means:
    ``skimage.restoration.denoise_nl_means`` (5 px patches, 13 px search window, fast mode) with
    ``h = params["h"] * s``; wavelet: ``skimage.restoration.denoise_wavelet`` (method, mode, the
    noise sigma rescaled); bm3d: ``bm3d.bm3d`` with ``sigma_psd = params["sigma"] * s``; ``s`` is
    the noise sigma skimage's ``estimate_sigma`` finds in the image.
    """
    from skimage import filters, restoration

    x = metrics.normalize_target(image)
    if method == "gaussian":
        return filters.gaussian(x, sigma=params["sigma"])
    if method == "wavelet":
        return restoration.denoise_wavelet(x, method=params["method"], mode=params["mode"], rescale_sigma=True)
    sigma = float(restoration.estimate_sigma(x))
    if method == "nl_means":
        return restoration.denoise_nl_means(x, h=params["h"] * sigma, sigma=sigma, patch_size=5, patch_distance=6,
                                            fast_mode=True)
    if method == "bm3d":
        import bm3d

        return np.asarray(bm3d.bm3d(x, sigma_psd=params["sigma"] * sigma))
    raise ValueError(f"unknown denoiser {method!r}")


def tune_denoisers(pairs: List[Pair], methods: Optional[Sequence[str]] = None) -> Dict[str, dict]:
    """Each denoiser's parameters: the point of its `DENOISERS` grid with the best mean PSNR on
    frame 0 of `pairs` (give the validation images, never the images to be scored).

    Returns {method: {"params": ..., "psnr": mean PSNR there}} for `methods` (default: every one
    of `denoisers()`), in `DENOISERS` order; a one-line BphoError for a denoiser not available."""
    if not pairs:
        raise BphoError("choosing the denoisers' parameters needs validation images, and there are none")
    out = {}
    for method in _denoisers_asked(methods):
        psnr = [float(np.mean([metrics.compare(denoise(p.lr[0], method, params)[_interior(p)],
                                               p.hr[0][_interior(p)])["psnr"] for p in pairs]))
                for params in DENOISERS[method]]
        best = int(np.argmax(psnr))
        out[method] = {"params": DENOISERS[method][best], "psnr": psnr[best]}
    return out


def _denoisers_asked(methods: Optional[Sequence[str]]) -> List[str]:
    """`methods` (default: every one of `denoisers()`) in `DENOISERS` order; a one-line BphoError
    for one that does not run here."""
    here = denoisers()
    for method in methods or ():
        if method not in here:
            raise BphoError(f"--denoiser {method!r}: use one of {', '.join(here)}"
                            + ("; bm3d needs its package: pip install 'bpho[bm3d]'" if method == "bm3d" else ""))
    return [m for m in here if not methods or m in methods]


Method = Callable[[np.ndarray], np.ndarray]


def baseline_methods(scale: int, tuned: Optional[Dict[str, dict]] = None) -> Dict[str, Method]:
    """The baselines as functions of one (Y, X) input frame: nearest / bilinear / bicubic
    upsampling for `scale` > 1; for scale 1 the input itself and each denoiser of `tuned`
    (`tune_denoisers`) with its chosen parameters."""
    if scale > 1:
        return {name: partial(upsample, scale=scale, order=order) for name, order in BASELINES.items()}
    out: Dict[str, Method] = {"input": partial(np.asarray, dtype=np.float32)}
    for method, choice in (tuned or {}).items():
        out[method] = partial(denoise, method=method, params=choice["params"])
    return out


def flicker_row(pair: Pair, method: str, stack: np.ndarray) -> dict:
    """The `metrics.flicker` of `method`'s (T, Y, X) `stack` against the pair's HR movie, on the
    interior the registration did not invent."""
    inner = (slice(None), *_interior(pair))
    return {"image": pair.name, "method": method, "frames": int(pair.hr.shape[0]),
            "flicker": metrics.flicker(stack[inner], pair.hr[inner])}


def score_methods(pairs: List[Pair], methods: Dict[str, Method], temporal: Optional[List[dict]] = None,
                  frames: bool = True) -> List[dict]:
    """`score` rows of each of `methods` applied to each LR frame of each pair (none when not
    `frames`); `temporal`, when given, receives each method's `flicker_row` of every pair of more
    than one frame (each frame computed once for both)."""
    rows = []
    for pair in pairs:
        for name, fn in methods.items():
            stack = [fn(f) for f in pair.lr]
            if frames:
                rows += [{"image": pair.name, "t": t, "method": name, **score(img, pair, t)}
                         for t, img in enumerate(stack)]
            if temporal is not None and len(stack) > 1:
                temporal.append(flicker_row(pair, name, np.stack(stack)))
    return rows


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
            for method in dict.fromkeys(r["method"] for r in rows)}


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

    `summary` maps each method (model, then the baselines: nearest, bilinear, bicubic; for a
    scale-1 model input and the `denoisers`) to its mean metrics (psnr, ssim, ms_ssim, nrmse,
    frc_px, frc_nm; None where undefined; and flicker, its mean `metrics.flicker` over the
    movies, when any image has more than one frame), and ``gain_psnr`` / ``gain_ssim`` to the
    model's mean gain over `reference` with its 95% bootstrap interval over images (``mean``,
    ``ci95_low``, ``ci95_high``; None with one image). `denoisers`: each denoiser's chosen
    parameters and their PSNR on the images they were chosen on (`tuned_on`).
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
    reference: str = "bicubic"  # the baseline the gains are over: bicubic, or the best denoiser (scale 1)
    denoisers: Dict[str, dict] = field(default_factory=dict)  # scale 1: `tune_denoisers`' choice
    tuned_on: List[str] = field(default_factory=list)  # the images the denoisers' parameters were chosen on

    @property
    def methods(self) -> List[str]:
        """The model and the baselines, in `summary` order."""
        return [k for k in self.summary if not k.startswith("gain_")]


def evaluate(model_uri: str, dataset: Optional[str] = None, datasource: Optional[str] = None,
             out_dir: Optional[Path] = None, device: str = EvaluateConfig.device, progress: bool = True,
             track: bool = True, transform: str = EvaluateConfig.transform, split: Optional[str] = None,
             ensemble: bool = False, denoise_with: Sequence[str] = EvaluateConfig.denoiser) -> Evaluation:
    """Score a model on whole held-out images against the baselines: nearest, bilinear and bicubic
    upsampling, or for a scale-1 model the input and the denoisers (`DENOISERS`) with parameters
    chosen on validation images (`tuning_pairs`); movies also by their flicker.

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
    denoise_with : sequence of str
        For a scale-1 model: the denoisers to compare with (default: every one of `denoisers()`).
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
    if denoise_with and s > 1:
        raise BphoError(f"--denoiser: the denoising baselines are for scale-1 models; {model_uri} super-resolves "
                        f"{s}x (its baselines are nearest, bilinear and bicubic upsampling)")
    _denoisers_asked(denoise_with)  # an unknown one refused before any work
    if source is not None:  # exactly one of dataset, datasource
        pairs, source_digest = _pairs_from_datasource(source, s, transform), source.digest
    else:
        assert pairs is not None and ds is not None
        source_digest = ds.manifest["datasource"]["digest"]
    where = f"dataset:{dataset}" if dataset else f"datasource:{datasource}"
    seen = provenance(model.meta, where, split, pairs, source_digest)
    stacks: Dict[str, np.ndarray] = {}  # the model's prediction of each movie
    rows, figures_input = score_model(model, pairs, progress, stacks)
    movies = [p for p in pairs if p.name in stacks]
    temporal = [flicker_row(p, "model", stacks[p.name]) for p in movies]
    tuned: Dict[str, dict] = {}
    tuned_on: List[str] = []
    reference = "bicubic"
    if s > 1:
        rows += dataset_baselines(ds, pairs, s) if ds is not None else score_baselines(pairs, s)
        methods = baseline_methods(s)
        score_methods(movies, methods, temporal, frames=False)
    else:  # denoising: the denoisers people use, their parameters chosen on validation images
        tuning = tuning_pairs(ds, model.meta, pairs)
        tuned, tuned_on = tune_denoisers(tuning, denoise_with), [p.name for p in tuning]
        reference = max(tuned, key=lambda m: tuned[m]["psnr"])
        methods = baseline_methods(s, tuned)
        rows += score_methods(pairs, methods, temporal)
    summary = _summary(rows, reference, temporal)
    out = Path(out_dir or tempfile.mkdtemp(prefix="bpho-eval-"))
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(out / "evaluation.csv", rows)
    tables = [out / "evaluation.csv"]
    if temporal:
        tables.append(out / "temporal.csv")
        _write_csv(tables[-1], temporal, ["image", "method", "frames", "flicker"])
    _figures(out, pairs[:3], figures_input[:3], s, methods, reference)
    plain = "bicubic" if s > 1 else "input"  # the movie figures' baseline: cheap to compute again
    _movie_figures(out, movies[:3], stacks, methods[plain], plain, rows)
    stacks.clear()
    meta = model.meta
    result = Evaluation(model=model_uri, training_run=meta.get("run_id"), summary=summary, out=out, images=len(pairs),
                        dataset_digest=meta.get("dataset_digest"), provenance=seen, ensemble=ensemble,
                        reference=reference, denoisers=tuned, tuned_on=tuned_on)
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
                                  + f"; {seen.describe()}. `gain_*`: model minus {reference}, "
                                  "with a 95% bootstrap interval over images (`*_ci95_low/high`)."
                                  + _denoise_note(tuned, tuned_on, seen.images) + "\n\n"
                                  + tracking.METRIC_UNITS + (FLICKER_UNIT if temporal else ""))
            # `evaluated_split`, not `split`: `mlflow run -e evaluate` logs the requested split ("" = default)
            tracking.log_params({"model_uri": model_uri, "images": len(pairs), "evaluated_on": where,
                                 "evaluated_split": str(split or "none"), "selection_used": used,
                                 "ensemble": str(ensemble).lower(), "reference": reference})
            if tuned:
                tracking.log_params({"denoise_tuned_on": ",".join(tuned_on)[:500],
                                     **{f"denoise_{m}": json.dumps(c["params"]) for m, c in tuned.items()}})
            tracking.log_metrics({k: v for k, v in _flat(summary).items() if v is not None and np.isfinite(v)})
            for t, values in sorted(_per_frame(rows, [p.name for p in pairs if p.hr.shape[0] > 1]).items()):
                tracking.log_metrics(values, step=t)
            tracking.log_artifacts(tables)
            tracking.log_previews(sorted(out.glob("*.png")))
    return result


ENSEMBLE_NOTE = " with the 8-fold flip/rotation ensemble (--ensemble)"
FLICKER_UNIT = ("| `*_flicker` | fraction of the HR's 0.1-99.9 percentile range: RMSE of the frame-to-frame changes "
                "against the HR's (movies) |\n| `*_frame_psnr`, `*_frame_ssim` | per frame (step = frame), mean over "
                "the movies |\n")


def tuning_pairs(ds: Optional[datasets.Dataset], meta: dict, pairs: List[Pair]) -> List[Pair]:
    """The images the denoisers' parameters are chosen on: the validation images of the dataset
    scored (for a datasource: of the model's own dataset when it is under this BPHO_ROOT; a dataset
    without validation images gives its training images), else the scored `pairs` themselves (the
    run says so)."""
    own = ds if ds is not None else _dataset_if_here(meta.get("dataset"), meta.get("dataset_digest"))
    return own.validation_images() if own is not None else pairs


def _denoise_note(tuned: Dict[str, dict], tuned_on: List[str], scored: List[str]) -> str:
    if not tuned:
        return ""
    both = sorted(set(tuned_on) & set(scored))
    chosen = "; ".join(f"{m} {json.dumps(c['params'])}" for m, c in tuned.items())
    return (f" Denoisers' parameters ({chosen}) chosen on {len(tuned_on)} image(s) ({', '.join(tuned_on[:6])})"
            + (f", {len(both)} of them scored here: their numbers flatter the denoisers." if both
               else ", none of them scored here."))


def _per_frame(rows: List[dict], movies: List[str]) -> Dict[int, Dict[str, float]]:
    """{t: {method_frame_psnr, method_frame_ssim}}: each method's mean over the movies at frame t."""
    out: Dict[int, Dict[str, float]] = {}
    for r in rows:
        if r["image"] in movies:
            out.setdefault(r["t"], {})
    for t, values in out.items():
        for method in dict.fromkeys(r["method"] for r in rows):
            for k in ("psnr", "ssim"):
                v = _mean([r[k] for r in rows if r["image"] in movies and r["t"] == t and r["method"] == method])
                if v is not None:
                    values[f"{method}_frame_{k}"] = v
    return out


def _summary(rows: List[dict], reference: str = "bicubic", temporal: Optional[List[dict]] = None) -> Dict[str, dict]:
    summary: Dict[str, dict] = _means(rows)
    if temporal:
        for method, values in summary.items():
            values["flicker"] = _mean([r["flicker"] for r in temporal if r["method"] == method])
    for k in ("psnr", "ssim"):
        gains = np.array([m[k] - b[k] for m, b in zip([r for r in rows if r["method"] == "model"],
                                                       [r for r in rows if r["method"] == reference])])
        lo, hi = bootstrap_ci(gains)
        summary[f"gain_{k}"] = {"mean": float(gains.mean()), "ci95_low": lo, "ci95_high": hi}
    return summary


def _mean(values) -> Optional[float]:
    vals = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def _flat(summary: dict) -> Dict[str, float]:
    return {f"{name}_{k}": v for name, d in summary.items() for k, v in d.items()}


def _write_csv(path: Path, rows: List[dict], fields: Optional[List[str]] = None) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields or ["image", "t", "method", *METRICS])
        writer.writeheader()
        writer.writerows(rows)


def side_by_side(pair: Pair, pred: np.ndarray, scale: int, bicubic: Optional[np.ndarray] = None,
                 reference: str = "bicubic") -> list:
    """(name, HR-sized image) for LR (pixels repeated) | bicubic | model | HR, frame 0 (`bicubic`:
    the image of another baseline named `reference`)."""
    bicubic = upsample(pair.lr[0], scale, BASELINES["bicubic"]) if bicubic is None else bicubic
    return [("LR", np.kron(pair.lr[0], np.ones((scale, scale)))), (reference, bicubic), ("model", pred),
            ("HR", pair.hr[0])]


def zoom_box(shape) -> tuple:
    """The middle quarter (each side) of an image of `shape`: where the figures zoom in."""
    h, w = shape
    return slice(h // 2 - h // 8, h // 2 + h // 8), slice(w // 2 - w // 8, w // 2 + w // 8)


def _figures(out: Path, pairs: List[Pair], preds: List[np.ndarray], scale: int, methods: Dict[str, Method],
             reference: str) -> None:
    from bpho.plots import pyplot

    plt = pyplot()
    shown_methods = ("bilinear", "bicubic") if scale > 1 else ("input", reference)

    for i, (pair, pred) in enumerate(zip(pairs, preds)):
        inner = _interior(pair)
        cand = {"model": pred, **{k: methods[k](pair.lr[0]) for k in dict.fromkeys((*shown_methods, reference))}}
        hr = metrics.normalize_target(pair.hr[0][inner])
        fig, axes = plt.subplots(2, 4, figsize=(14, 7))
        h, w = hr.shape
        zoom = zoom_box(hr.shape)
        for col, (name, img) in enumerate(side_by_side(pair, pred, scale, cand[reference], reference)):
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
        for ax, name in zip(axes, (*shown_methods, "model")):
            err = np.clip(metrics.fit_to(cand[name][inner], hr), 0, 1) - np.clip(hr, 0, 1)
            im = ax.imshow(err, cmap="RdBu_r", vmin=-0.5, vmax=0.5)
            ax.set_title(f"{name} - HR (RMSE {np.sqrt(np.mean(err ** 2)):.3f})")
            ax.axis("off")
        fig.colorbar(im, ax=axes, shrink=0.8)
        fig.savefig(out / f"error_{i:02d}.png", dpi=72)
        plt.close(fig)

        fig, ax = plt.subplots(figsize=(6, 4))
        px = pair.pixel_um
        for name in (reference, "model"):
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


def _movie_figures(out: Path, pairs: List[Pair], stacks: Dict[str, np.ndarray], baseline_fn: Method,
                   baseline: str, rows: List[dict]) -> None:
    """For each movie: PSNR and SSIM of every method over time (``temporal_NN.png``), and a
    kymograph (the HR row with the most variance over time and x) with the frame difference in
    the middle of the movie, for HR, the model and `baseline` (``kymograph_NN.png``)."""
    from bpho.plots import pyplot

    plt = pyplot()
    for i, pair in enumerate(pairs):
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
        for method in dict.fromkeys(r["method"] for r in rows):
            mine = sorted((r["t"], r["psnr"], r["ssim"]) for r in rows if r["image"] == pair.name
                          and r["method"] == method)
            for ax, col in zip(axes, (1, 2)):
                ax.plot([m[0] for m in mine], [m[col] for m in mine], marker=".", label=method)
        for ax, label in zip(axes, ("PSNR (dB)", "SSIM")):
            ax.set_xlabel("frame")
            ax.set_ylabel(label)
        axes[1].legend(fontsize=8)
        fig.suptitle(f"{pair.name}: per frame")
        fig.tight_layout()
        fig.savefig(out / f"temporal_{i:02d}.png", dpi=72)
        plt.close(fig)

        inner = (slice(None), *_interior(pair))
        hr = metrics.normalize_target(pair.hr[inner])
        raw = {"model": stacks[pair.name][inner], baseline: np.stack([baseline_fn(f) for f in pair.lr])[inner]}
        flick = {k: f", flicker {metrics.flicker(v, pair.hr[inner]):.4f}" for k, v in raw.items()}
        shown = {"HR": np.clip(hr, 0, 1), **{k: np.clip(metrics.fit_to(v, hr), 0, 1) for k, v in raw.items()}}
        y = int(np.argmax(hr.var(axis=(0, 2))))
        mid = (hr.shape[0] - 1) // 2
        fig, axes = plt.subplots(2, 3, figsize=(13, 7))
        for col, (name, stack) in enumerate(shown.items()):
            axes[0, col].imshow(stack[:, y, :], cmap="magma", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
            axes[0, col].set_title(f"{name}: row {y} over time{flick.get(name, '')}", fontsize=9)
            axes[0, col].set_xlabel("x")
            axes[0, col].set_ylabel("frame")
            im = axes[1, col].imshow(stack[mid + 1] - stack[mid], cmap="RdBu_r", vmin=-0.5, vmax=0.5)
            axes[1, col].set_title(f"{name}: frame {mid + 1} - frame {mid}", fontsize=9)
            axes[1, col].axis("off")
        fig.colorbar(im, ax=axes[1], shrink=0.8)
        fig.subplots_adjust(hspace=0.35)
        fig.suptitle(pair.name)
        fig.savefig(out / f"kymograph_{i:02d}.png", dpi=72)
        plt.close(fig)
