"""synthesize_lowres: datasets of synthetic pairs, and the numbers to choose a degradation.

- `synthesize(...)`: HR images of a datasource (kind ``hr``, or the HR side of a paired or
  movie one) -> LR by a degradation model -> the same builder as make_dataset (tiles,
  splits, manifest); the manifest and MLflow record the degradation, its parameters and,
  for ``fitted``, the pairs it was fitted on.
- `similarity(...)`: how close synthetic LR is to real LR on registered pairs: per-pixel
  error of the expected (noise-free) LR, noise statistics (variance against mean) and power
  spectrum; `tune_degradation` is an Optuna study over a model's parameters minimising it.
- `report(...)`: train the same model on real pairs and on pairs synthesized by each model,
  evaluate all on the same held-out real pairs; one table and one figure.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
from tqdm import tqdm

from bpho import datasources, tracking
from bpho.datasets import builder
from bpho.datasets import recipe as recipes
from bpho.datasets.register import apply_registration, normalize, percentile_range, register_pair
from bpho.degrade import NAMES, classic, fitted, params_from, parse_settings, physical
from bpho.degrade.fitted import RegisteredPair
from bpho.errors import BphoError

EXPERIMENT = "bpho-synthesize"
MODELS = {"classic": (classic.ClassicParams, classic.degrade), "physical": (physical.PhysicalParams, physical.degrade),
          "fitted": (physical.PhysicalParams, physical.degrade)}


def registered_pairs(datasource: str, recipe: str = "paired_001", split: Optional[str] = None,
                     max_pairs: Optional[int] = None, progress: bool = False,
                     recipe_settings: Sequence[str] = ()) -> List[RegisteredPair]:
    """First frames of a paired datasource's pairs, HR registered onto LR as the recipe (with
    `recipe_settings`, e.g. transform=flow) registers them. `split` ('train' / 'valid'): only the
    pairs the recipe puts there (fit on train, judge on valid)."""
    r = recipes.with_overrides(recipes.load(recipe).recipe, recipe_settings).validated()
    ds = datasources.open(datasource, verify=True, progress=False)
    if not ds.pairs:
        raise BphoError(f"datasource {datasource!r} (kind {ds.kind}) has no LR/HR pairs; fitting needs real pairs")
    pixel = {ds.path / f["path"]: (f.get("pixel_size_um") or [None] * 3)[-1] for f in ds.manifest["files"]}
    assigned = builder.split_sources([p.stem for p in ds.pairs], r.valid_fraction, r.seed)
    chosen = [p for p in ds.pairs if split is None or assigned[p.stem] == split][:max_pairs]
    out = []
    for pair in tqdm(chosen, desc="register", unit="pair", disable=not progress):
        lr = builder.plane_stack(pair.lr, 0, r)[0]
        hr = builder.plane_stack(pair.hr, 0, r)[0]
        reg = register_pair(normalize(lr, *percentile_range(lr, r.percentile_low, r.percentile_high)),
                            normalize(hr, *percentile_range(hr, r.percentile_low, r.percentile_high)), r.scale,
                            r.transform)
        aligned = apply_registration(hr[None], reg)[0]
        out.append(RegisteredPair(pair.stem, lr, aligned, pixel.get(pair.hr) or 0.0, reg.margin))
    return out


@dataclass
class Degradation:
    name: str
    params: object
    fitted_on: Optional[dict] = None

    def record(self) -> dict:
        return {"name": self.name, "parameters": asdict(self.params), "fitted_on": self.fitted_on}

    def __call__(self, hr: np.ndarray, hr_pixel_um: Optional[float] = None, rng=None, expected: bool = False):
        return MODELS[self.name][1](hr, self.params, rng=rng, hr_pixel_um=hr_pixel_um, expected=expected)


def degradation(name: str, settings: Dict[str, object] | Iterable[str] = (), fit_on: Optional[str] = None,
                recipe: str = "paired_001", progress: bool = False, recipe_settings: Sequence[str] = ()) -> Degradation:
    """A degradation by name with parameters; ``fitted`` is fitted on the training pairs of `fit_on`
    (given settings then override fitted values)."""
    if name not in NAMES:
        raise BphoError(f"degradation {name!r} is unknown; use one of {', '.join(NAMES)}")
    settings = dict(settings) if isinstance(settings, dict) else parse_settings(settings)
    cls = MODELS[name][0]
    scale = recipes.load(recipe).recipe.scale
    settings.setdefault("scale", scale)
    if name != "fitted":
        return Degradation(name, params_from(cls, settings))
    if not fit_on:
        raise BphoError("degradation fitted: name the paired datasource to fit on (--fit-on NAME)")
    pairs = registered_pairs(fit_on, recipe, split="train", progress=progress, recipe_settings=recipe_settings)
    result = fitted.fit(pairs, scale=int(settings["scale"]))
    params = params_from(cls, {**asdict(result.params), **settings})
    ds = datasources.open(fit_on, verify=False)
    return Degradation(name, params, fitted_on={"datasource": fit_on, "digest": ds.digest, "pairs": result.pairs,
                                                "explained": result.explained})


def synthesize(datasource: str, degradation_: Degradation, dataset: str, recipe: Optional[str] = None,
               recipe_settings: Iterable[str] = (), force: bool = False, progress: bool = True,
               track: bool = True) -> builder.Dataset:
    """Dataset `dataset` of synthetic pairs from the HR images of `datasource`."""
    ds = datasources.open(datasource, verify=False)
    recipe = recipe or ("movie_001" if ds.kind == "movie" else "paired_001")
    synthesis = builder.Synthesis(record=degradation_.record(), lowres=degradation_)
    return builder.make(recipe, datasource=datasource, settings=[f"scale={degradation_.params.scale}", *recipe_settings],
                        name=dataset, force=force, progress=progress, track=track, synthesis=synthesis)


# --- how close is synthetic LR to real LR? ------------------------------------------------


def _radial_log_power(img: np.ndarray, bins: int = 24) -> np.ndarray:
    f = np.abs(np.fft.fftshift(np.fft.fft2(img - img.mean()))) ** 2
    h, w = img.shape
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot((yy - h // 2) / h, (xx - w // 2) / w)
    idx = np.minimum((r / 0.5 * bins).astype(int), bins)
    power = np.bincount(idx.ravel(), f.ravel(), bins + 1)[:bins] / np.maximum(np.bincount(idx.ravel(), None, bins + 1)[:bins], 1)
    return np.log10(power + 1e-12)


def _noise_curve(mean: np.ndarray, resid: np.ndarray, edges: np.ndarray) -> np.ndarray:
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = resid[(mean >= lo) & (mean < hi)]
        out.append((1.4826 * np.median(np.abs(sel - np.median(sel)))) ** 2 if sel.size >= 20 else np.nan)
    return np.asarray(out)


def similarity(deg: Degradation, pairs: Sequence[RegisteredPair], seed: int = 0) -> Dict[str, float]:
    """Distance of synthetic LR from real LR (lower is closer), on registered pairs.

    The synthetic LR is first mapped linearly onto the real LR's intensities (least squares on
    the expected LR; datasets normalise intensities anyway). Terms: ``pixel`` = mean squared
    error of the expected synthetic LR against the real LR over the real LR's variance; ``noise``
    = mean squared log ratio of residual variance (synthetic vs real) in intensity bins;
    ``spectrum`` = mean squared difference of radially averaged log10 power spectra.
    """
    rng = np.random.default_rng(seed)
    pixel, noise, spectrum = [], [], []
    for p in pairs:
        m = int(np.ceil(p.margin / deg.params.scale)) + 2
        inner = (slice(m, -m), slice(m, -m))
        real = p.lr.astype(np.float64)[inner]
        mean = np.asarray(deg(p.hr, p.hr_pixel_um, expected=True), np.float64)[inner]
        sample = np.asarray(deg(p.hr, p.hr_pixel_um, rng=rng), np.float64)[inner]
        a, b = np.polyfit(mean.ravel(), real.ravel(), 1)
        mean, sample = a * mean + b, a * sample + b
        pixel.append(np.mean((mean - real) ** 2) / max(real.var(), 1e-12))
        edges = np.unique(np.percentile(mean, np.linspace(1, 99, 11)))
        ratio = _noise_curve(mean.ravel(), (sample - mean).ravel(), edges) / _noise_curve(mean.ravel(), (real - mean).ravel(), edges)
        ratio = ratio[np.isfinite(ratio) & (ratio > 0)]
        noise.append(np.mean(np.log(ratio) ** 2) if ratio.size else 10.0)
        spectrum.append(np.mean((_radial_log_power(sample) - _radial_log_power(real)) ** 2))
    out = {"pixel": float(np.mean(pixel)), "noise": float(np.mean(noise)), "spectrum": float(np.mean(spectrum))}
    out["total"] = out["pixel"] + out["noise"] + out["spectrum"]
    return out


# which parameters a degradation study searches, and over what
def _suggest(trial, name: str, levels: dict) -> Dict[str, object]:
    if name == "classic":
        std = trial.suggest_float("gauss_std", 1e-3, 0.3, log=True)
        peak = trial.suggest_float("poisson_peak", 1.0, 1000.0, log=True)
        return {"gauss_std": (std, std), "poisson_peak": (peak, peak),
                "downsample": trial.suggest_categorical("downsample", ["area", "bilinear"])}
    return {"psf_fwhm_nm": trial.suggest_float("psf_fwhm_nm", 0.0, 600.0),
            "photons": trial.suggest_float("photons", 2.0, 2000.0, log=True),
            "read_noise": trial.suggest_float("read_noise", 0.0, 20.0),
            "hr_offset": levels["hr_offset"]}


def _dark_levels(pairs: Sequence[RegisteredPair]) -> dict:
    """What a physical search reads from the data instead of searching: the HR's dark level,
    measured as `fitted` measures it. Left at 0 it counts as signal, and the search makes up
    for it with a wrong blur (on the demo: 42 nm for 207 nm). Gain and camera offset are not
    searched: `similarity` maps intensities linearly, so it cannot tell them apart; they keep
    their defaults (`fitted` estimates them), while photons and read noise set the noise."""
    return {"hr_offset": float(np.median([np.percentile(p.hr, fitted.HR_DARK_PERCENTILE) for p in pairs]))}


def tune_degradation(datasource: str, name: str, trials: int = 100, recipe: str = "paired_001",
                     storage: Optional[str] = None, study_name: Optional[str] = None, seed: Optional[int] = 0,
                     max_pairs: Optional[int] = 4, progress: bool = True, recipe_settings: Sequence[str] = ()) -> dict:
    """Optuna study over a degradation's parameters minimising `similarity` on the training pairs
    of a paired datasource; every trial a child MLflow run of the study's run."""
    from bpho.tune import EXPERIMENT as TUNE_EXPERIMENT, _optuna, _study_files, default_storage, open_study

    if name not in ("classic", "physical"):
        raise BphoError(f"tune degradation: {name!r} (search classic or physical; fitted is estimated, not searched)")
    optuna = _optuna()
    pairs = registered_pairs(datasource, recipe, split="train", max_pairs=max_pairs, progress=progress,
                             recipe_settings=recipe_settings)
    scale = recipes.load(recipe).recipe.scale
    levels = _dark_levels(pairs)
    study = open_study(storage or default_storage(), study_name or f"degradation-{name}-{datasource}", "minimize",
                       sampler=optuna.samplers.TPESampler(seed=seed))
    ds = datasources.open(datasource, verify=False)
    tags = {"bpho.tune": "degradation", "bpho.degradation": name, "bpho.datasource": datasource}
    with tracking.run(TUNE_EXPERIMENT, run_name=study.study_name, tags=tags) as parent:
        parent_id = parent.info.run_id
        tracking.log_params({"study.name": study.study_name, "study.degradation": name, "study.pairs": len(pairs)})
        tracking.log_dataset_input(ds.name, ds.digest, ds.path, context="tuning")

        def objective(trial) -> float:
            deg = Degradation(name, params_from(MODELS[name][0], {"scale": scale, **_suggest(trial, name, levels)}))
            with tracking.run(TUNE_EXPERIMENT, run_name=f"{study.study_name}-{trial.number}", parent_run_id=parent_id,
                              tags={**tags, "bpho.optuna_trial": str(trial.number)}):
                tracking.log_params({f"degradation.{k}": v for k, v in asdict(deg.params).items()})
                scores = similarity(deg, pairs, seed=trial.number)
                tracking.log_metrics(scores)
            for k, v in scores.items():
                trial.set_user_attr(k, v)
            return scores["total"]

        study.optimize(objective, n_trials=trials, show_progress_bar=progress)
        best = Degradation(name, params_from(MODELS[name][0], {"scale": scale, **_suggest(
            optuna.trial.FixedTrial(study.best_params), name, levels)}))
        result = {"study": study.study_name, "best_value": study.best_value, "best_params": asdict(best.params),
                  "scores": {k: study.best_trial.user_attrs[k] for k in ("pixel", "noise", "spectrum", "total")},
                  "parent_run_id": parent_id}
        tracking.log_metrics({f"best_{k}": v for k, v in result["scores"].items()})
        tracking.set_tags({f"best.{k}": str(v) for k, v in study.best_params.items()})
        with tempfile.TemporaryDirectory() as tmp:
            from bpho.tune import StudyResult

            summary = StudyResult(study=study.study_name, storage="", parent_run_id=parent_id, trials=len(study.trials),
                                  best_value=study.best_value, best_params=study.best_params)
            files = _study_files(Path(tmp), study, summary)
            (Path(tmp) / "best_degradation.json").write_text(json.dumps(result, indent=2))
            tracking.log_artifacts([*files, Path(tmp) / "best_degradation.json"], "study")
    return result


# --- the end-to-end answer: does training on synthetic pairs work? ------------------------


def report(datasource: str, epochs: int = 10, tile_size: Optional[int] = None, trials: int = 100,
           recipe: str = "paired_001", recipe_settings: Sequence[str] = (), train_settings: Optional[dict] = None,
           prefix: str = "synth-report", out_dir: Optional[Path] = None, progress: bool = True) -> dict:
    """Train one model on the real pairs of a paired datasource and one on pairs synthesized from
    its HR by each degradation (classic and physical: the best of a `trials`-trial study, or
    their defaults with trials=0; fitted: fitted on the training pairs), same budget; evaluate all on the same held-out
    real pairs. Returns the table; logs it with a figure to MLflow."""
    from bpho.evaluate import evaluate
    from bpho.train import TrainConfig, train

    out = Path(out_dir or tempfile.mkdtemp(prefix="bpho-synth-report-"))
    out.mkdir(parents=True, exist_ok=True)
    degradations = {"real": None}
    for name in ("classic", "physical"):
        params = {}
        if trials:
            best = tune_degradation(datasource, name, trials=trials, recipe=recipe, progress=progress,
                                    recipe_settings=recipe_settings)["best_params"]
            params = best
        degradations[name] = degradation(name, params, recipe=recipe)
    degradations["fitted"] = degradation("fitted", fit_on=datasource, recipe=recipe, progress=progress,
                                         recipe_settings=recipe_settings)
    rows = []
    with tracking.run(EXPERIMENT, run_name=f"{prefix}-{datasource}", tags={"bpho.datasource": datasource,
                                                                          "bpho.synthesis": "report"}) as parent:
        real_name = f"{prefix}-real"
        for method, deg in degradations.items():
            name = f"{prefix}-{method}"
            if deg is None:
                builder.make(recipe, datasource=datasource, settings=recipe_settings, name=name, force=True,
                             progress=progress, track=False)
            else:
                synthesize(datasource, deg, name, recipe=recipe, recipe_settings=recipe_settings, force=True,
                           progress=progress, track=False)
            cfg = TrainConfig(dataset=name, tile_size=tile_size, epochs=epochs, model_name=f"bpho-{name}",
                              **(train_settings or {}))
            trained = train(cfg, progress=progress, register=False, parent_run_id=parent.info.run_id,
                            tags={"bpho.synthesis": method})
            ev = evaluate(trained.model_uri, dataset=real_name, out_dir=out / method, progress=progress, track=False)
            s = ev["summary"]
            rows.append({"training_pairs": method, "psnr": s["model"]["psnr"], "ssim": s["model"]["ssim"],
                         "frc_nm": s["model"]["frc_nm"], "gain_psnr": s["gain_psnr"]["mean"],
                         "gain_ssim": s["gain_ssim"]["mean"], "run_id": trained.run_id,
                         "degradation": deg.record() if deg else None})
        result = {"rows": rows, "out": str(out), "run_id": parent.info.run_id,
                  "bicubic": {"psnr": s["bicubic"]["psnr"], "ssim": s["bicubic"]["ssim"]}}
        (out / "report.json").write_text(json.dumps(result, indent=2, default=str))
        (out / "report.txt").write_text(report_table(result) + "\n")
        _report_figure(out / "report.png", result)
        tracking.log_metrics({f"{r['training_pairs']}_{k}": r[k] for r in rows for k in ("psnr", "ssim", "gain_psnr")
                              if r[k] is not None})
        tracking.log_artifacts([out / "report.json", out / "report.txt", out / "report.png"], "report")
    return result


def report_table(result: dict) -> str:
    lines = [f"{'trained on':12s} {'PSNR':>7s} {'SSIM':>6s} {'FRC nm':>7s} {'gain PSNR':>10s} {'gain SSIM':>10s}"]
    for r in result["rows"]:
        frc = f"{r['frc_nm']:7.0f}" if r["frc_nm"] is not None else f"{'-':>7s}"
        lines.append(f"{r['training_pairs']:12s} {r['psnr']:7.2f} {r['ssim']:6.3f} {frc} {r['gain_psnr']:+10.2f} "
                     f"{r['gain_ssim']:+10.3f}")
    b = result["bicubic"]
    lines.append(f"{'(bicubic)':12s} {b['psnr']:7.2f} {b['ssim']:6.3f}")
    return "\n".join(lines)


def _report_figure(png: Path, result: dict) -> None:
    from bpho.plots import pyplot

    plt = pyplot()
    names = [r["training_pairs"] for r in result["rows"]]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key, label in ((axes[0], "gain_psnr", "PSNR gain over bicubic (dB)"),
                           (axes[1], "gain_ssim", "SSIM gain over bicubic")):
        ax.bar(names, [r[key] for r in result["rows"]], color=["k", "C0", "C1", "C2"][:len(names)])
        ax.set_ylabel(label)
        ax.axhline(0, color="grey", lw=0.8)
    fig.suptitle("models trained on real vs synthetic pairs, evaluated on held-out real pairs")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
