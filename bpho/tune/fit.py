"""Batch sizes that fit the card: for each tile size of a dataset, the largest batch that trains
(forward, backward, optimizer step) within a memory budget.

On CUDA by real attempts (the budget enforced with ``set_per_process_memory_fraction``,
out-of-memory caught, peak from ``max_memory_allocated``); on the CPU by the measured peak
resident memory of a real step, each attempt in a fresh process forked from a clean server
(freed memory of an earlier attempt cannot hide the next one's). Batches double until one
fails; a bigger tile starts from the smaller tile's limit (it cannot allow more). Every attempt
is a trial of an Optuna study (ask/tell) whose table is the result; it is printed, saved under
``$BPHO_ROOT/tune/fit/<dataset>.json`` for the hyperparameter search, and logged to MLflow.
"""

from __future__ import annotations

import json
import multiprocessing
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

from bpho import paths, tracking
from bpho.config import FROM_DATA, MIN_BATCH, Device, FitConfig, TrainConfig, TrainPrecision
from bpho import datasets
from bpho.errors import BphoError
from bpho.inference import pick_device
from bpho.models import ModelConfig, model_config
from bpho.train import forward_backward, loss_fn, optimizer_step, setup_model
from bpho.tune.study import load_optuna

MB = 2 ** 20


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's 'can't allocate memory'."""
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and ("out of memory" in str(exc) or "can't allocate memory" in str(exc)))


def free_memory(device: torch.device) -> int:
    """Bytes free on the device now (CUDA), or available system memory (CPU)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil

    return psutil.virtual_memory().available


# --- one attempt ------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """One point of the fit search: a batch of a tile size at a precision, with or without checkpointing."""

    dataset: str
    tile_size: int
    batch_size: int
    precision: str
    checkpointing: bool
    model: ModelConfig
    steps: int


def _steps(a: Attempt, device: torch.device, warmed=lambda: None) -> float:
    """Build the model, run 1 + `steps` training steps on real tiles; returns tiles/s of the timed
    ones. `warmed()` is called after the first step (code loaded, optimizer state allocated)."""
    lr_tiles, hr_tiles = datasets.open(a.dataset).tiles(a.tile_size, "train")
    idx = np.resize(np.arange(len(lr_tiles)), a.batch_size)
    x = torch.from_numpy(np.asarray(lr_tiles[idx])).to(device)
    y = torch.from_numpy(np.asarray(hr_tiles[idx])).to(device)
    cfg = TrainConfig(dataset=a.dataset, tile_size=a.tile_size, batch_size=a.batch_size, model=a.model,
                      amp=a.precision == TrainPrecision.AMP,
                      grad_checkpointing=a.checkpointing, device=Device(device.type))
    scale = hr_tiles.shape[-1] // lr_tiles.shape[-1]
    net, _, amp_dtype, scaler = setup_model(cfg, scale, lr_tiles.shape[1], device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    loss = loss_fn("l1")
    for i in range(1 + a.steps):  # the first step also allocates the optimizer state
        if i == 1:
            warmed()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
        forward_backward(net, x, y, loss, amp_dtype, scaler)
        optimizer_step(opt, scaler)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return a.steps * a.batch_size / (time.perf_counter() - start)


def _proc_kb(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field_name}")


def _cpu_attempt(a: Attempt) -> dict:
    """In a fresh process: the peak of anonymous memory (tensors, not the library code that the
    first step pages in) that model, optimizer state, data and steps add, and tiles/s."""
    try:  # big buffers straight from mmap, so that what a step frees is returned and counted once
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 16)  # M_MMAP_THRESHOLD = 64 KiB
    except (OSError, AttributeError):
        pass
    base = _proc_kb("RssAnon")

    def reset_peak() -> None:  # the peak (VmHWM) restarts from here, after code has been paged in
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass

    try:
        speed = _steps(a, torch.device("cpu"), warmed=reset_peak)
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        return {"fits": False, "peak_bytes": None, "tiles_per_s": None, "error": "out of memory"}
    mapped_files = _proc_kb("RssFile") + _proc_kb("RssShmem")
    peak = max(_proc_kb("VmHWM") - mapped_files, _proc_kb("RssAnon")) - base
    return {"fits": True, "peak_bytes": peak * 1024, "tiles_per_s": speed, "error": None}


def _cuda_attempt(a: Attempt, device: torch.device) -> dict:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    try:
        speed = _steps(a, device)
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        return {"fits": False, "peak_bytes": torch.cuda.max_memory_allocated(device), "tiles_per_s": None,
                "error": "out of memory"}
    finally:
        torch.cuda.empty_cache()
    return {"fits": True, "peak_bytes": torch.cuda.max_memory_allocated(device), "tiles_per_s": speed, "error": None}


# --- fit search ---------------------------------------------------------------------------


@dataclass
class FitResult:
    """The fit table: every attempt (`points`) and, per tile size, precision and checkpointing,
    the largest batch that fit (`recommended`)."""

    dataset: str
    device: str
    budget_bytes: int
    model: dict
    points: List[dict]
    recommended: List[dict]
    run_id: Optional[str] = None
    path: Optional[Path] = None

    def table(self) -> str:
        """The fit table as text: every point tried, then the recommended batch per setting."""
        lines = [f"fit search on {self.device}, budget {self.budget_bytes / MB:,.0f} MB, "
                 f"{model_config(self.model).label()}",
                 f"{'tile':>5} {'precision':>9} {'ckpt':>5} {'batch':>6} {'fits':>5} {'peak MB':>9} {'tiles/s':>8}"]
        for p in sorted(self.points,
                        key=lambda p: (p["precision"], p["checkpointing"], p["tile_size"], p["batch_size"])):
            peak = f"{p['peak_bytes'] / MB:9.0f}" if p["peak_bytes"] is not None else f"{'-':>9}"
            speed = f"{p['tiles_per_s']:8.1f}" if p["tiles_per_s"] is not None else f"{'-':>8}"
            lines.append(f"{p['tile_size']:5d} {p['precision']:>9} {('yes' if p['checkpointing'] else 'no'):>5} "
                         f"{p['batch_size']:6d} {('yes' if p['fits'] else 'NO'):>5} {peak} {speed}")
        lines.append("recommended (largest batch that fits; fastest feasible batch):")
        for r in self.recommended:
            ckpt = "yes" if r["checkpointing"] else "no "
            lines.append(f"  tile {r['tile_size']:4d} {r['precision']:>4} ckpt {ckpt:3s}"
                         f" -> batch {r['batch_size'] or 'none fits'}"
                         + (f" ({r['tiles_per_s']:.1f} tiles/s; fastest: batch {r['fastest_batch']})"
                            if r["batch_size"] else ""))
        return "\n".join(lines)


def fit_path(dataset: str) -> Path:
    """Where the fit table of `dataset` is saved (JSON)."""
    return paths.root() / "tune" / "fit" / f"{dataset}.json"


def fit_search(cfg: FitConfig, track: bool = True, progress: bool = True) -> FitResult:
    """The largest batch per tile size (and precision, checkpointing) within a memory budget.

    Parameters
    ----------
    cfg : FitConfig
        The dataset, model, budget and what to try (bpho/config.py). The batch doubles from 2
        until a step no longer fits; with ``cfg.refine`` the gap between the last batch that
        fit and the first that did not is bisected to the exact largest batch.
    track : bool
        Log the table, a plot and the recommendations to an MLflow run.
    progress : bool
        Print a line per attempt.

    Returns
    -------
    FitResult
        Every attempt and the recommendation per tile size; also saved to ``fit_path(dataset)``.
    """
    optuna = load_optuna()
    from optuna.distributions import CategoricalDistribution, IntDistribution
    from optuna.trial import TrialState

    dataset = cfg.dataset
    dev = pick_device(str(cfg.device))
    ds = datasets.open(dataset)
    sizes = sorted(cfg.tile_sizes or ds.tile_sizes)
    missing = [s for s in sizes if s not in ds.tile_sizes]
    if missing:
        raise BphoError(f"tune fit: dataset {dataset!r} has no tiles of size {missing} (it has {ds.tile_sizes})")
    empty = [s for s in sizes if not ds.manifest["tiles"][str(s)]["train"]]
    if empty:
        raise BphoError(f"tune fit: dataset {dataset!r} has no training tiles of size {empty} (its images are too "
                        "small for them); leave them out with --tile-sizes, or build from bigger images")
    precisions = tuple(map(str, cfg.precision or (tuple(TrainPrecision) if dev.type == "cuda" else ("fp32",))))
    checkpointing = cfg.checkpointing if cfg.checkpointing is not None else (
        (False, True) if dev.type == "cuda" else (False,))
    budget = int(cfg.memory_gb * 2 ** 30) if cfg.memory_gb else free_memory(dev)
    if dev.type == "cuda":
        total = torch.cuda.get_device_properties(dev).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, budget / total), dev)

    space = {"tile_size": CategoricalDistribution(sizes),
             "batch_size": IntDistribution(MIN_BATCH, cfg.max_batch, log=True),
             "precision": CategoricalDistribution(precisions), "checkpointing": CategoricalDistribution(checkpointing)}
    study = optuna.create_study(direction="maximize", study_name=f"fit-{dataset}")
    pool = None
    if dev.type == "cpu":
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["torch", "timm", "bpho.train"])
        pool = ProcessPoolExecutor(max_workers=1, mp_context=ctx, max_tasks_per_child=1)

    def attempt(size: int, batch: int, precision: str, ckpt: bool) -> dict:
        a = Attempt(dataset, size, batch, precision, ckpt, cfg.model, cfg.steps)
        # the search is ordered (doubling), so the trial's values are given, not sampled
        study.enqueue_trial({"tile_size": size, "batch_size": batch, "precision": precision, "checkpointing": ckpt})
        trial = study.ask(space)
        out = pool.submit(_cpu_attempt, a).result() if pool else _cuda_attempt(a, dev)
        out["fits"] = out["fits"] and out["peak_bytes"] is not None and out["peak_bytes"] <= budget
        point = {"tile_size": size, "batch_size": batch, "precision": precision, "checkpointing": ckpt, **out}
        for k, v in point.items():
            trial.set_user_attr(k, v)
        study.tell(trial, out["tiles_per_s"] if out["fits"] else None,
                   state=TrialState.COMPLETE if out["fits"] else TrialState.PRUNED)
        if progress:
            peak = f"{out['peak_bytes'] / MB:.0f} MB" if out["peak_bytes"] is not None else out["error"]
            print(f"  tile {size} batch {batch} {precision}{' ckpt' if ckpt else ''}: "
                  f"{'fits' if out['fits'] else 'does not fit'} ({peak})", flush=True)
        return point

    points, recommended = [], []
    try:
        for precision in precisions:
            for ckpt in checkpointing:
                cap = cfg.max_batch
                for size in sizes:
                    fits = []
                    batch = MIN_BATCH
                    failed = None
                    while batch <= cap:
                        p = attempt(size, batch, precision, ckpt)
                        points.append(p)
                        if not p["fits"]:
                            failed = batch
                            break
                        fits.append(p)
                        batch *= 2
                    lo, hi = (fits[-1]["batch_size"] if fits else 0), (failed or min(batch, cap + 1))
                    while cfg.refine and fits and hi - lo > 1:
                        p = attempt(size, (lo + hi) // 2, precision, ckpt)
                        points.append(p)
                        if p["fits"]:
                            fits.append(p)
                            lo = p["batch_size"]
                        else:
                            hi = p["batch_size"]
                    best = max(fits, key=lambda p: p["batch_size"], default=None)
                    fastest = max(fits, key=lambda p: p["tiles_per_s"], default=None)
                    recommended.append({"tile_size": size, "precision": precision, "checkpointing": ckpt,
                                        "batch_size": best["batch_size"] if best else None,
                                        "peak_bytes": best["peak_bytes"] if best else None,
                                        "tiles_per_s": best["tiles_per_s"] if best else None,
                                        "fastest_batch": fastest["batch_size"] if fastest else None})
                    cap = best["batch_size"] if best else 0  # a bigger tile never allows a bigger batch
    finally:
        if pool:
            pool.shutdown()
        if dev.type == "cuda":
            torch.cuda.set_per_process_memory_fraction(1.0, dev)

    result = FitResult(dataset=dataset, device=str(dev), budget_bytes=budget, points=points, recommended=recommended,
                       model=model_settings(cfg.model))
    result.path = fit_path(dataset)
    with paths.atomic_file(result.path, suffix=".json") as tmp:
        tmp.write_text(json.dumps({k: v for k, v in asdict(result).items() if k not in ("path",)}, indent=2))
    if track:
        _track_fit(result, study)
    return result


def _fit_plot(png: Path, result: FitResult) -> None:
    from bpho.plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    keys = sorted({(p["tile_size"], p["precision"], p["checkpointing"]) for p in result.points})
    for key in keys:
        pts = [p for p in result.points if (p["tile_size"], p["precision"], p["checkpointing"]) == key
               and p["peak_bytes"] is not None]
        if pts:
            ax.plot([p["batch_size"] for p in pts], [p["peak_bytes"] / MB for p in pts], "o-",
                    label=f"tile {key[0]} {key[1]}{' ckpt' if key[2] else ''}")
    ax.axhline(result.budget_bytes / MB, color="k", ls="--", label="budget")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("peak memory (MB)")
    ax.set_title(f"{result.dataset}: {model_config(result.model).label()} on {result.device}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def _track_fit(result: FitResult, study) -> None:
    with tracking.run(tracking.TUNE_EXPERIMENT, run_name=f"fit-{result.dataset}",
                      tags={"bpho.dataset": result.dataset, "bpho.tune": "fit"}) as active:
        ds = datasets.open(result.dataset)
        tracking.log_params({"fit.dataset": result.dataset, "fit.device": result.device,
                             "fit.budget_mb": round(result.budget_bytes / MB),
                             **{f"fit.{k}": v for k, v in result.model.items()}})
        tracking.log_dataset_input(ds.name, ds.digest, ds.path, context="tuning")
        for r in result.recommended:
            key = f"t{r['tile_size']}_{r['precision']}{'_ckpt' if r['checkpointing'] else ''}"
            tracking.log_metrics({f"batch_{key}": r["batch_size"] or 0,
                                  **({f"tiles_per_s_{key}": r["tiles_per_s"]} if r["tiles_per_s"] else {})})
        with tempfile.TemporaryDirectory() as tmp:
            csv, png, txt = Path(tmp) / "fit.csv", Path(tmp) / "fit.png", Path(tmp) / "fit.txt"
            study.trials_dataframe().to_csv(csv, index=False)
            txt.write_text(result.table() + "\n")
            _fit_plot(png, result)
            tracking.log_artifacts([csv, png, txt, *([result.path] if result.path else [])], "fit")
        result.run_id = active.info.run_id


def model_settings(model: ModelConfig) -> dict:
    """The model's settings as the fit table keeps them (JSON values; the dataset sets scale and frames)."""
    return json.loads(json.dumps({k: v for k, v in model.to_dict().items() if k not in FROM_DATA}))


def fit_cap(dataset: str, tile_size: int, model: ModelConfig, precision: str = "fp32") -> Optional[int]:
    """The fit table's largest batch for this tile size and model (no checkpointing), if a fit
    search was run for that model; 0 where no batch fits."""
    path = fit_path(dataset)
    if not path.is_file():
        return None
    fit = json.loads(path.read_text())
    if fit["model"] != model_settings(model):
        return None
    for r in fit["recommended"]:
        if r["tile_size"] == tile_size and r["precision"] == precision and not r["checkpointing"]:
            return r["batch_size"] or 0
    return None
