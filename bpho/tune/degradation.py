"""Which degradation makes LR most like the real LR, and does training on it work?

- `similarity`: how close synthetic LR is to real LR on registered pairs: per-pixel error of
  the expected (noise-free) LR, noise statistics (variance against mean) and power spectrum;
- `tune_degradation`: an Optuna study over a degradation's parameters minimising it;
- `report`: train the same model on real pairs and on pairs synthesized by each degradation,
  evaluate all on the same held-out real pairs; one table and one figure.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from bpho import datasources, tracking
from bpho.config import DegradationReportConfig, DegradationStudyConfig, TrainConfig
from bpho.datasets import builder
from bpho.datasets import recipe as recipes
from bpho.degrade import DEGRADATIONS, degradation_model
from bpho.degrade.fitted import RegisteredPair
from bpho.errors import BphoError
from bpho.synthesize import Degradation, degradation, registered_pairs, synthesize
from bpho.tune.study import StudyResult, default_storage, load_optuna, open_study, study_files

# --- how close is synthetic LR to real LR? ------------------------------------------------


def _radial_log_power(img: np.ndarray, bins: int = 24) -> np.ndarray:
    f = np.abs(np.fft.fftshift(np.fft.fft2(img - img.mean()))) ** 2
    h, w = img.shape
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot((yy - h // 2) / h, (xx - w // 2) / w)
    idx = np.minimum((r / 0.5 * bins).astype(int), bins)
    counts = np.bincount(idx.ravel(), None, bins + 1)[:bins]
    power = np.bincount(idx.ravel(), f.ravel(), bins + 1)[:bins] / np.maximum(counts, 1)
    return np.log10(power + 1e-12)


def _noise_curve(mean: np.ndarray, resid: np.ndarray, edges: np.ndarray) -> np.ndarray:
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = resid[(mean >= lo) & (mean < hi)]
        out.append((1.4826 * np.median(np.abs(sel - np.median(sel)))) ** 2 if sel.size >= 20 else np.nan)
    return np.asarray(out)


def _synthetic_beside_real(deg: Degradation, p: RegisteredPair, rng) -> tuple:
    """(real, expected, sample) LR of a pair's interior, float64: the real LR, and the
    degradation's expected (noise-free) and noisy LR of the registered HR, both mapped linearly
    onto the real intensities (least squares on the expected LR)."""
    m = int(np.ceil(p.margin / deg.params.scale)) + 2
    inner = (slice(m, -m), slice(m, -m))
    real = p.lr.astype(np.float64)[inner]
    mean = np.asarray(deg(p.hr, p.hr_pixel_um, expected=True), np.float64)[inner]
    sample = np.asarray(deg(p.hr, p.hr_pixel_um, rng=rng), np.float64)[inner]
    a, b = np.polyfit(mean.ravel(), real.ravel(), 1)
    return real, a * mean + b, a * sample + b


def similarity(deg: Degradation, pairs: Sequence[RegisteredPair], seed: int = 0) -> Dict[str, float]:
    """Distance of synthetic LR from real LR (lower is closer), on registered pairs.

    The synthetic LR is first mapped linearly onto the real LR's intensities (least squares on
    the expected LR; datasets normalise intensities anyway).

    Parameters
    ----------
    deg : Degradation
        Makes the synthetic LR from each pair's HR.
    pairs : sequence of RegisteredPair
        Real LR (Y, X) with the HR registered onto it.
    seed : int
        Of the synthetic noise.

    Returns
    -------
    dict
        ``pixel``: mean squared error of the expected synthetic LR against the real LR over the
        real LR's variance; ``noise``: mean squared log ratio of residual variance (synthetic vs
        real) in intensity bins; ``spectrum``: mean squared difference of radially averaged
        log10 power spectra; ``total``: their sum.
    """
    rng = np.random.default_rng(seed)
    pixel, noise, spectrum = [], [], []
    for p in pairs:
        real, mean, sample = _synthetic_beside_real(deg, p, rng)
        pixel.append(np.mean((mean - real) ** 2) / max(real.var(), 1e-12))
        edges = np.unique(np.percentile(mean, np.linspace(1, 99, 11)))
        ratio = (_noise_curve(mean.ravel(), (sample - mean).ravel(), edges)
                 / _noise_curve(mean.ravel(), (real - mean).ravel(), edges))
        ratio = ratio[np.isfinite(ratio) & (ratio > 0)]
        noise.append(np.mean(np.log(ratio) ** 2) if ratio.size else 10.0)
        spectrum.append(np.mean((_radial_log_power(sample) - _radial_log_power(real)) ** 2))
    out = {"pixel": float(np.mean(pixel)), "noise": float(np.mean(noise)), "spectrum": float(np.mean(spectrum))}
    out["total"] = out["pixel"] + out["noise"] + out["spectrum"]
    return out


@dataclass
class DegradationStudyResult:
    """The best parameters a degradation study found, and their distances (`similarity`)."""

    study: str
    best_value: float
    best_params: Dict[str, object]  # every parameter of the degradation, searched or not
    scores: Dict[str, float]
    parent_run_id: str


def tune_degradation(cfg: DegradationStudyConfig, progress: bool = True) -> DegradationStudyResult:
    """Optuna study over a degradation's parameters minimising `similarity`.

    Parameters
    ----------
    cfg : DegradationStudyConfig
        The paired datasource (its training pairs are compared), the degradation (one with a
        search space: classic, physical), the trials to add and the study's storage and name
        (bpho/config.py).
    progress : bool
        Show progress bars.

    Returns
    -------
    DegradationStudyResult
        The best parameters so far; every trial is a child MLflow run of the study's run.
    """
    optuna = load_optuna()
    name = cfg.degradation
    model = degradation_model(name)
    if model.search is None:
        raise BphoError(f"tune degradation: {name!r} is estimated from pairs, not searched")
    pairs = registered_pairs(cfg.datasource, cfg.recipe, split="train", max_pairs=cfg.max_pairs, progress=progress,
                             recipe_settings=cfg.recipe_settings)
    scale = recipes.load(cfg.recipe).recipe.scale
    suggest = model.search(pairs)  # the degradation's space (what it reads from the pairs, read once)
    study = open_study(cfg.storage or default_storage(), cfg.study or f"degradation-{name}-{cfg.datasource}",
                       "minimize", sampler=optuna.samplers.TPESampler(seed=cfg.seed))
    ds = datasources.open(cfg.datasource, verify=False)
    tags = {"bpho.tune": "degradation", "bpho.degradation": name, "bpho.datasource": cfg.datasource}
    with tracking.run(tracking.TUNE_EXPERIMENT, run_name=study.study_name, tags=tags) as parent:
        parent_id = parent.info.run_id
        tracking.log_params({"study.name": study.study_name, "study.degradation": name, "study.pairs": len(pairs)})
        tracking.log_dataset_input(ds.name, ds.digest, ds.path, context="tuning")

        def objective(trial) -> float:
            deg = Degradation(name, model.params_from({"scale": scale, **suggest(trial)}))
            with tracking.run(tracking.TUNE_EXPERIMENT, run_name=f"{study.study_name}-{trial.number}",
                              parent_run_id=parent_id, tags={**tags, "bpho.optuna_trial": str(trial.number)}):
                tracking.log_params({f"degradation.{k}": v for k, v in asdict(deg.params).items()})
                scores = similarity(deg, pairs, seed=trial.number)
                tracking.log_metrics(scores)
            for k, v in scores.items():
                trial.set_user_attr(k, v)
            return scores["total"]

        study.optimize(objective, n_trials=cfg.trials, show_progress_bar=progress)
        best = Degradation(name, model.params_from({"scale": scale,
                                                    **suggest(optuna.trial.FixedTrial(study.best_params))}))
        result = DegradationStudyResult(
            study=study.study_name, best_value=study.best_value, best_params=asdict(best.params),
            scores={k: study.best_trial.user_attrs[k] for k in ("pixel", "noise", "spectrum", "total")},
            parent_run_id=parent_id)
        tracking.log_metrics({f"best_{k}": v for k, v in result.scores.items()})
        tracking.set_tags({f"best.{k}": str(v) for k, v in study.best_params.items()})
        with tempfile.TemporaryDirectory() as tmp:
            summary = StudyResult(study=study.study_name, storage="", parent_run_id=parent_id, trials=len(study.trials),
                                  best_value=study.best_value, best_params=study.best_params)
            files = study_files(Path(tmp), study, summary)
            (Path(tmp) / "best_degradation.json").write_text(json.dumps(asdict(result), indent=2))
            tracking.log_artifacts([*files, Path(tmp) / "best_degradation.json"], "study")
    return result


# --- the end-to-end answer: does training on synthetic pairs work? ------------------------


@dataclass
class ReportRow:
    """A model trained on one kind of pairs, evaluated on the held-out real pairs."""

    training_pairs: str  # real, or a degradation's name (classic, physical, fitted)
    psnr: float
    ssim: float
    frc_nm: Optional[float]
    gain_psnr: float  # over bicubic
    gain_ssim: float
    run_id: str
    degradation: Optional[dict]  # Degradation.record() of the synthetic pairs; None for real ones


@dataclass
class DegradationReport:
    """A degradation report: its rows, output folder, MLflow run and the pair most missed."""

    rows: List[ReportRow]
    out: Path  # report.json, report.txt, report.png and missed.png
    run_id: str
    bicubic: Dict[str, float]  # psnr, ssim of bicubic upsampling on the same pairs
    # what each degradation misses of the held-out real LR: `similarity` on those pairs
    distances: Dict[str, Dict[str, float]] = field(default_factory=dict)


def report(cfg: DegradationReportConfig, progress: bool = True) -> DegradationReport:
    """Train on real pairs and on pairs synthesized by each degradation; evaluate on real pairs.

    One model is trained on the real pairs of a paired datasource and one on pairs synthesized
    from its HR by each registered degradation (a searched one, e.g. classic and physical: the
    best of a ``cfg.trials``-trial study, or its defaults with 0 trials; one estimated from
    pairs, fitted: fitted on the training pairs), with the same budget; all are evaluated on the
    same held-out real pairs.

    Parameters
    ----------
    cfg : DegradationReportConfig
        The datasource, training budget and study trials (bpho/config.py).
    progress : bool
        Show progress bars.

    Returns
    -------
    DegradationReport
        A row per kind of training pairs; the table and a figure are also written to
        ``cfg.out`` (default: a temporary folder) and logged to MLflow.
    """
    from bpho.evaluate import evaluate
    from bpho.train import train

    out = Path(cfg.out or tempfile.mkdtemp(prefix="bpho-synth-report-"))
    out.mkdir(parents=True, exist_ok=True)
    degradations: Dict[str, Optional[Degradation]] = {"real": None}
    for name, model in DEGRADATIONS.items():
        if model.fit is not None:
            degradations[name] = degradation(name, fit_on=cfg.datasource, recipe=cfg.recipe, progress=progress,
                                             recipe_settings=cfg.recipe_settings)
            continue
        params = {}
        if cfg.trials and model.search is not None:
            params = tune_degradation(DegradationStudyConfig(cfg.datasource, name, trials=cfg.trials, recipe=cfg.recipe,
                                                             recipe_settings=cfg.recipe_settings),
                                      progress=progress).best_params
        degradations[name] = degradation(name, params, recipe=cfg.recipe)
    rows = []
    prefix = cfg.prefix
    with tracking.run(tracking.SYNTHESIZE_EXPERIMENT, run_name=f"{prefix}-{cfg.datasource}",
                      tags={"bpho.datasource": cfg.datasource, "bpho.synthesis": "report"}) as parent:
        real_name = f"{prefix}-real"
        for method, deg in degradations.items():
            name = f"{prefix}-{method}"
            if deg is None:
                builder.make(cfg.recipe, datasource=cfg.datasource, settings=cfg.recipe_settings, name=name, force=True,
                             progress=progress, track=False)
            else:
                synthesize(cfg.datasource, deg, name, recipe=cfg.recipe, recipe_settings=cfg.recipe_settings,
                           force=True, progress=progress, track=False)
            train_cfg = TrainConfig(dataset=name, tile_size=cfg.tile_size, epochs=cfg.epochs, model_name=f"bpho-{name}",
                                    **cfg.train_settings())
            trained = train(train_cfg, progress=progress, register=False, parent_run_id=parent.info.run_id,
                            tags={"bpho.synthesis": method})
            ev = evaluate(trained.model_uri, dataset=real_name, out_dir=out / method, progress=progress, track=False)
            s = ev.summary
            rows.append(ReportRow(training_pairs=method, psnr=s["model"]["psnr"], ssim=s["model"]["ssim"],
                                  frc_nm=s["model"]["frc_nm"], gain_psnr=s["gain_psnr"]["mean"],
                                  gain_ssim=s["gain_ssim"]["mean"], run_id=trained.run_id,
                                  degradation=deg.record() if deg else None))
        held_out = (registered_pairs(cfg.datasource, cfg.recipe, split="valid", recipe_settings=cfg.recipe_settings)
                    or registered_pairs(cfg.datasource, cfg.recipe, max_pairs=1, recipe_settings=cfg.recipe_settings))
        synthetic = {k: d for k, d in degradations.items() if d is not None}
        result = DegradationReport(rows=rows, out=out, run_id=parent.info.run_id,
                                   bicubic={"psnr": s["bicubic"]["psnr"], "ssim": s["bicubic"]["ssim"]},
                                   distances={k: similarity(d, held_out) for k, d in synthetic.items()})
        (out / "report.json").write_text(json.dumps(asdict(result), indent=2, default=str))
        (out / "report.txt").write_text(report_table(result) + "\n")
        _report_figure(out / "report.png", result)
        _missed_figure(out / "missed.png", synthetic, held_out[0])
        tracking.log_metrics({f"{r.training_pairs}_{k}": getattr(r, k) for r in rows
                              for k in ("psnr", "ssim", "gain_psnr") if getattr(r, k) is not None})
        tracking.log_artifacts([out / "report.json", out / "report.txt", out / "report.png", out / "missed.png"],
                               "report")
    return result


def report_table(result: DegradationReport) -> str:
    """The report as a text table, with bicubic upsampling's numbers below."""
    lines = [f"{'trained on':12s} {'PSNR':>7s} {'SSIM':>6s} {'FRC nm':>7s} {'gain PSNR':>10s} {'gain SSIM':>10s}"]
    for r in result.rows:
        frc = f"{r.frc_nm:7.0f}" if r.frc_nm is not None else f"{'-':>7s}"
        lines.append(f"{r.training_pairs:12s} {r.psnr:7.2f} {r.ssim:6.3f} {frc} {r.gain_psnr:+10.2f} "
                     f"{r.gain_ssim:+10.3f}")
    b = result.bicubic
    lines.append(f"{'(bicubic)':12s} {b['psnr']:7.2f} {b['ssim']:6.3f}")
    if result.distances:
        lines += ["", "what the synthetic LR misses of the held-out real LR (similarity; 0 = identical):",
                  f"{'degradation':12s} {'pixel':>7s} {'noise':>7s} {'spectrum':>9s} {'total':>7s}"]
        lines += [f"{k:12s} {d['pixel']:7.3f} {d['noise']:7.3f} {d['spectrum']:9.3f} {d['total']:7.3f}"
                  for k, d in result.distances.items()]
    return "\n".join(lines)


def _report_figure(png: Path, result: DegradationReport) -> None:
    from bpho.plots import pyplot

    plt = pyplot()
    names = [r.training_pairs for r in result.rows]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key, label in ((axes[0], "gain_psnr", "PSNR gain over bicubic (dB)"),
                           (axes[1], "gain_ssim", "SSIM gain over bicubic")):
        ax.bar(names, [getattr(r, key) for r in result.rows], color=["k"] + [f"C{i}" for i in range(len(names) - 1)])
        ax.set_ylabel(label)
        ax.axhline(0, color="grey", lw=0.8)
    fig.suptitle("models trained on real vs synthetic pairs, evaluated on held-out real pairs")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def _missed_figure(png: Path, degradations: Dict[str, Degradation], pair: RegisteredPair) -> None:
    """What each degradation misses of one held-out real LR: the real LR minus the degradation's
    expected LR of the registered HR (mapped linearly onto the real intensities, as `similarity`
    does), and the radially averaged power spectra of real and synthetic (noisy) LR."""
    from bpho.plots import pyplot

    plt = pyplot()
    mapped = {name: _synthetic_beside_real(deg, pair, np.random.default_rng(0)) for name, deg in degradations.items()}
    real = next(iter(mapped.values()))[0]
    lo, hi = np.percentile(real, (0.5, 99.8))
    fig, axes = plt.subplots(1, len(degradations) + 2, figsize=(3.2 * (len(degradations) + 2), 3.4))
    axes[0].imshow(real, cmap="magma", vmin=lo, vmax=hi)
    axes[0].set_title(f"real LR ({pair.name})", fontsize=9)
    spectra = {"real": _radial_log_power(real)}
    limit = 0.25 * (hi - lo)
    for ax, (name, (_, mean, sample)) in zip(axes[1:], mapped.items()):
        resid = real - mean
        ax.imshow(resid, cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_title(f"real - {name} (rms {resid.std() / (hi - lo):.3f})", fontsize=9)
        spectra[name] = _radial_log_power(sample)
    for ax in axes[:-1]:
        ax.axis("off")
    freq = (np.arange(len(spectra["real"])) + 0.5) / len(spectra["real"]) * 0.5
    for name, curve in spectra.items():
        axes[-1].plot(freq, curve, color="k" if name == "real" else None, lw=2 if name == "real" else 1, label=name)
    axes[-1].set_xlabel("spatial frequency (cycles / LR px)")
    axes[-1].set_ylabel("log10 power")
    axes[-1].legend(fontsize=8)
    fig.suptitle("what the degradations miss: residual of the expected synthetic LR (same colour scale), spectra")
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)
