"""Tuning with Optuna, tracked in MLflow.

``fit``: for each tile size of a dataset, the largest batch that trains (forward, backward,
optimizer step) within a memory budget, for a model and precision. On CUDA by real attempts
(the budget enforced with ``set_per_process_memory_fraction``, out-of-memory caught, peak from
``max_memory_allocated``); on the CPU by the measured peak resident memory of a real step, each
attempt in a fresh process forked from a clean server (freed memory of an earlier attempt
cannot hide the next one's). Batches double until one fails; a bigger tile starts from the
smaller tile's limit (it cannot allow more). Every attempt is a trial of an Optuna study
(ask/tell) whose table is the result; it is printed, saved under
``$BPHO_ROOT/tune/fit/<dataset>.json`` for the hyperparameter search, and logged to MLflow.

``hparams``: an Optuna study over learning rate, loss, encoder, mode, tile and batch size
(capped by the fit table), maximising the validation PSNR gain over bicubic, pruned on the
per-epoch value. Each trial is a child MLflow run of one parent run per study; the parent
gets the best value, best parameters, the trial table and Optuna's plots. The study lives in
SQLite under ``$BPHO_ROOT/tune`` or in any RDB (``--storage postgresql://...``) that several
workers on several machines share; ``--study NAME`` resumes or joins it.
"""

from __future__ import annotations

import json
import multiprocessing
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from bpho import paths, tracking
from bpho.datasets import builder
from bpho.errors import BphoError
from bpho.inference import pick_device
from bpho.train import LOSSES, TrainConfig, forward_backward, loss_fn, optimizer_step, setup_model, train

EXPERIMENT = "bpho-tune"
PRECISIONS = ("fp32", "amp")
MIN_BATCH = 2  # batch norm needs two samples to train
MB = 2 ** 20


def _optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


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
    dataset: str
    tile_size: int
    batch_size: int
    precision: str
    checkpointing: bool
    encoder: str
    mode: str
    decoder_widths: tuple
    steps: int


def _train_config(a: Attempt, device: torch.device) -> TrainConfig:
    return TrainConfig(dataset=a.dataset, tile_size=a.tile_size, batch_size=a.batch_size, encoder=a.encoder,
                       mode=a.mode, decoder_widths=a.decoder_widths, amp=a.precision == "amp",
                       grad_checkpointing=a.checkpointing, device=device.type)


def _steps(a: Attempt, device: torch.device, warmed=lambda: None) -> float:
    """Build the model, run 1 + `steps` training steps on real tiles; returns tiles/s of the timed
    ones. `warmed()` is called after the first step (code loaded, optimizer state allocated)."""
    lr, hr = builder.open(a.dataset).tiles(a.tile_size, "train")
    idx = np.resize(np.arange(len(lr)), a.batch_size)
    x = torch.from_numpy(np.asarray(lr[idx])).to(device)
    y = torch.from_numpy(np.asarray(hr[idx])).to(device)
    cfg = _train_config(a, device)
    net, _, amp_dtype, scaler = setup_model(cfg, hr.shape[-1] // lr.shape[-1], lr.shape[1], device)
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
    dataset: str
    device: str
    budget_bytes: int
    model: dict
    points: List[dict]
    recommended: List[dict]
    run_id: Optional[str] = None
    path: Optional[Path] = None

    def table(self) -> str:
        lines = [f"fit search on {self.device}, budget {self.budget_bytes / MB:,.0f} MB, "
                 f"{self.model['encoder']} ({self.model['mode']})",
                 f"{'tile':>5} {'precision':>9} {'ckpt':>5} {'batch':>6} {'fits':>5} {'peak MB':>9} {'tiles/s':>8}"]
        for p in sorted(self.points, key=lambda p: (p["precision"], p["checkpointing"], p["tile_size"], p["batch_size"])):
            peak = f"{p['peak_bytes'] / MB:9.0f}" if p["peak_bytes"] is not None else f"{'-':>9}"
            speed = f"{p['tiles_per_s']:8.1f}" if p["tiles_per_s"] is not None else f"{'-':>8}"
            lines.append(f"{p['tile_size']:5d} {p['precision']:>9} {('yes' if p['checkpointing'] else 'no'):>5} "
                         f"{p['batch_size']:6d} {('yes' if p['fits'] else 'NO'):>5} {peak} {speed}")
        lines.append("recommended (largest batch that fits; fastest feasible batch):")
        for r in self.recommended:
            lines.append(f"  tile {r['tile_size']:4d} {r['precision']:>4} ckpt {'yes' if r['checkpointing'] else 'no ':3s}"
                         f" -> batch {r['batch_size'] or 'none fits'}"
                         + (f" ({r['tiles_per_s']:.1f} tiles/s; fastest: batch {r['fastest_batch']})"
                            if r["batch_size"] else ""))
        return "\n".join(lines)


def fit_path(dataset: str) -> Path:
    return paths.root() / "tune" / "fit" / f"{dataset}.json"


def fit_search(dataset: str, tile_sizes: Optional[Sequence[int]] = None, memory_gb: Optional[float] = None,
               encoder: str = "resnet34", mode: str = "lr", decoder_widths: Sequence[int] = TrainConfig.decoder_widths,
               precisions: Optional[Sequence[str]] = None, checkpointing: Optional[Sequence[bool]] = None,
               max_batch: int = 256, steps: int = 2, device: str = "auto", refine: bool = False, track: bool = True,
               progress: bool = True) -> FitResult:
    """The largest batch per tile size (and precision / checkpointing) within the memory budget:
    the batch doubles from 2 until a step no longer fits; with `refine`, the gap between the last
    batch that fit and the first that did not is bisected to the exact largest batch."""
    optuna = _optuna()
    from optuna.distributions import CategoricalDistribution, IntDistribution
    from optuna.trial import TrialState

    dev = pick_device(device)
    ds = builder.open(dataset)
    sizes = sorted(tile_sizes or ds.tile_sizes)
    missing = [s for s in sizes if s not in ds.tile_sizes]
    if missing:
        raise BphoError(f"tune fit: dataset {dataset!r} has no tiles of size {missing} (it has {ds.tile_sizes})")
    empty = [s for s in sizes if not ds.manifest["tiles"][str(s)]["train"]]
    if empty:
        raise BphoError(f"tune fit: dataset {dataset!r} has no training tiles of size {empty} (its images are too "
                        "small for them); leave them out with --tile-sizes, or build from bigger images")
    precisions = tuple(precisions or (PRECISIONS if dev.type == "cuda" else ("fp32",)))
    checkpointing = tuple(checkpointing if checkpointing is not None else
                          ((False, True) if dev.type == "cuda" else (False,)))
    if any(p not in PRECISIONS for p in precisions):
        raise BphoError(f"tune fit: precision must be one of {', '.join(PRECISIONS)}, not {list(precisions)}")
    if max_batch < MIN_BATCH:
        raise BphoError(f"tune fit: --max-batch {max_batch} (>= {MIN_BATCH})")
    budget = int(memory_gb * 2 ** 30) if memory_gb else free_memory(dev)
    if dev.type == "cuda":
        total = torch.cuda.get_device_properties(dev).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, budget / total), dev)

    space = {"tile_size": CategoricalDistribution(sizes), "batch_size": IntDistribution(MIN_BATCH, max(max_batch, MIN_BATCH), log=True),
             "precision": CategoricalDistribution(precisions), "checkpointing": CategoricalDistribution(checkpointing)}
    study = optuna.create_study(direction="maximize", study_name=f"fit-{dataset}")
    pool = None
    if dev.type == "cpu":
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["torch", "timm", "bpho.train"])
        pool = ProcessPoolExecutor(max_workers=1, mp_context=ctx, max_tasks_per_child=1)

    def attempt(size: int, batch: int, precision: str, ckpt: bool) -> dict:
        a = Attempt(dataset, size, batch, precision, ckpt, encoder, mode, tuple(decoder_widths), steps)
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
                cap = max_batch
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
                    while refine and fits and hi - lo > 1:
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
                       model={"encoder": encoder, "mode": mode, "decoder_widths": list(decoder_widths)})
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
    ax.set_title(f"{result.dataset}: {result.model['encoder']} on {result.device}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def _track_fit(result: FitResult, study) -> None:
    with tracking.run(EXPERIMENT, run_name=f"fit-{result.dataset}", tags={"bpho.dataset": result.dataset,
                                                                           "bpho.tune": "fit"}) as active:
        ds = builder.open(result.dataset)
        tracking.log_params({"fit.dataset": result.dataset, "fit.device": result.device,
                             "fit.budget_mb": round(result.budget_bytes / MB), **{f"fit.{k}": v for k, v in result.model.items()}})
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
            tracking.log_artifacts([csv, png, txt, result.path], "fit")
        result.run_id = active.info.run_id


def fit_cap(dataset: str, tile_size: int, encoder: str, mode: str, precision: str = "fp32") -> Optional[int]:
    """The fit table's largest batch for this tile size and model, if a fit search was run."""
    path = fit_path(dataset)
    if not path.is_file():
        return None
    fit = json.loads(path.read_text())
    if (fit["model"]["encoder"], fit["model"]["mode"]) != (encoder, mode):
        return None
    for r in fit["recommended"]:
        if r["tile_size"] == tile_size and r["precision"] == precision and not r["checkpointing"]:
            return r["batch_size"] or 0
    return None


# --- hyperparameter search ----------------------------------------------------------------


def default_storage() -> str:
    folder = paths.root() / "tune"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'optuna.db'}"


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]


@dataclass
class SearchSpace:
    encoders: Sequence[str] = ("resnet18", "resnet34")
    modes: Sequence[str] = ("lr", "pre")
    losses: Sequence[str] = LOSSES
    tile_sizes: Optional[Sequence[int]] = None  # default: the dataset's
    lr_min: float = 1e-4
    lr_max: float = 3e-3
    max_batch: int = 16  # where the fit table says nothing
    amp: bool = False
    decoder_widths: Optional[Sequence[int]] = None


@dataclass
class StudyResult:
    study: str
    storage: str
    parent_run_id: str
    trials: int
    best_value: Optional[float]
    best_params: Dict[str, object] = field(default_factory=dict)
    best_run_id: Optional[str] = None


def open_study(storage: str, name: str, direction: str, **kwargs):
    """Create or load a study. Workers starting together may race to create the schema or the
    study in a fresh database: the loser retries (and then loads what the winner made)."""
    optuna = _optuna()
    for attempt in range(5):
        try:
            return optuna.create_study(storage=storage, study_name=name, direction=direction, load_if_exists=True,
                                       **kwargs)
        except Exception as exc:  # a bad URL, an unreachable server, a missing driver, or a lost race
            said = type(exc).__name__ + repr(exc)  # PostgreSQL: a unique row, or the schema's enum type made twice
            if any(race in said for race in ("IntegrityError", "DuplicateObject", "UniqueViolation")) and attempt < 4:
                time.sleep(0.5 + attempt)
                continue
            raise BphoError(f"tune: cannot open study {name!r} on {_safe_url(storage)} "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0]})") from None


def _pruner(name: str):
    optuna = _optuna()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise BphoError(f"tune hparams: --pruner {name!r} (use median, hyperband or none)")


def _parent_run(study, name: str, dataset: str) -> str:
    """The study's parent MLflow run: MLflow's own under `mlflow run`, else the one the first
    worker made (its id is a study attribute; two workers starting together agree on one)."""
    from mlflow import MlflowClient

    known = study.user_attrs.get("mlflow_parent_run_id")
    if known:
        return known
    with tracking.run(EXPERIMENT, run_name=name, tags={"bpho.dataset": dataset, "bpho.tune": "hparams",
                                                       "bpho.study": name}) as active:
        mine = active.info.run_id
    study.set_user_attr("mlflow_parent_run_id", mine)
    time.sleep(1.0)  # a worker that raced us has written by now; the last write wins for both
    winner = study.user_attrs["mlflow_parent_run_id"]  # read back from the storage
    if winner != mine:
        MlflowClient(tracking.tracking_uri()).delete_run(mine)
    return winner


def hparams(dataset: str, trials: int = 20, epochs: int = 5, storage: Optional[str] = None,
            study_name: Optional[str] = None, space: SearchSpace = SearchSpace(), pruner: str = "median",
            seed: Optional[int] = None, device: str = "auto", timeout: Optional[float] = None,
            progress: bool = True) -> StudyResult:
    """Run (or join) a study until it holds `trials` finished trials; returns the best so far."""
    optuna = _optuna()
    from mlflow import MlflowClient
    from optuna.trial import TrialState

    if trials < 1 or epochs < 1:
        raise BphoError(f"tune hparams: --trials {trials} and --epochs {epochs} must be >= 1")
    ds = builder.open(dataset)
    sizes = sorted(space.tile_sizes or ds.tile_sizes)
    if any(s not in ds.tile_sizes for s in sizes):
        raise BphoError(f"tune hparams: dataset {dataset!r} has tile sizes {ds.tile_sizes}, not {sizes}")
    unknown = [x for x in space.losses if x not in LOSSES] + [m for m in space.modes if m not in ("lr", "pre")]
    if unknown:
        raise BphoError(f"tune hparams: unknown loss or mode {unknown}")
    storage = storage or default_storage()
    name = study_name or f"hparams-{dataset}"
    study = open_study(storage, name, "maximize", sampler=optuna.samplers.TPESampler(seed=seed),
                       pruner=_pruner(pruner))
    parent = _parent_run(study, name, dataset)
    client = MlflowClient(tracking.tracking_uri())

    def objective(trial) -> float:
        size = trial.suggest_categorical("tile_size", sizes)
        encoder = trial.suggest_categorical("encoder", list(space.encoders))
        mode = trial.suggest_categorical("mode", list(space.modes))
        loss = trial.suggest_categorical("loss", list(space.losses))
        lr = trial.suggest_float("lr", space.lr_min, space.lr_max, log=True)
        cap = fit_cap(dataset, size, encoder, mode, "amp" if space.amp else "fp32")
        cap = space.max_batch if cap is None else min(cap, space.max_batch)
        if cap < MIN_BATCH:
            raise optuna.TrialPruned(f"no batch of tile {size} fits ({encoder}, {mode}) in the fit table")
        batch = trial.suggest_int("batch_size", MIN_BATCH, cap, log=True)
        cfg = TrainConfig(dataset=dataset, tile_size=size, batch_size=batch, epochs=epochs, encoder=encoder,
                          mode=mode, loss=loss, lr=lr, amp=space.amp, device=device, panel_every=epochs,
                          **({"decoder_widths": tuple(space.decoder_widths)} if space.decoder_widths else {}))
        tags = {"bpho.study": name, "bpho.optuna_trial": str(trial.number)}

        def report(epoch: int, metrics: dict, run_id: str) -> None:
            trial.set_user_attr("mlflow_run_id", run_id)
            trial.report(metrics["valid_psnr_gain"], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch + 1}")

        try:
            result = train(cfg, progress=progress, register=False, parent_run_id=parent, tags=tags, on_epoch=report)
        except optuna.TrialPruned:
            _mark(client, parent, tags, "PRUNED")
            raise
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            _mark(client, parent, tags, "OUT_OF_MEMORY")
            trial.set_user_attr("out_of_memory", True)
            raise optuna.TrialPruned(f"out of memory at tile {size}, batch {batch}") from None
        client.set_tag(result.run_id, "bpho.trial_state", "COMPLETE")
        return float(result.metrics["valid_psnr_gain"])

    def say(study, trial) -> None:
        if progress:
            value = f"{trial.value:+.3f} dB" if trial.value is not None else trial.state.name.lower()
            print(f"trial {trial.number}: {value}  " + ", ".join(f"{k}={v}" for k, v in trial.params.items()), flush=True)

    # stop when the study (all workers together) holds `trials`, counting those still running elsewhere
    finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
    study.optimize(objective, callbacks=[say, optuna.study.MaxTrialsCallback(trials, states=finished)],
                   timeout=timeout, gc_after_trial=True)
    return _summarise(study, parent, dataset, storage, epochs, space)


def _mark(client, parent: str, tags: Dict[str, str], state: str) -> None:
    """Tag a stopped trial's run (found by its tags) and end it as KILLED rather than FAILED."""
    experiment = client.get_run(parent).info.experiment_id
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    for run in client.search_runs([experiment], filter_string=query):
        client.set_tag(run.info.run_id, "bpho.trial_state", state)
        client.set_terminated(run.info.run_id, "KILLED")


def _summarise(study, parent: str, dataset: str, storage: str, epochs: int, space: SearchSpace) -> StudyResult:
    """Best value, parameters, trial table and Optuna's plots onto the parent run."""
    from optuna.trial import TrialState

    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    best = max(done, key=lambda t: t.value) if done else None
    result = StudyResult(study=study.study_name, storage=_safe_url(storage), parent_run_id=parent,
                         trials=len(study.trials), best_value=best.value if best else None,
                         best_params=dict(best.params) if best else {},
                         best_run_id=best.user_attrs.get("mlflow_run_id") if best else None)
    with tracking.run(EXPERIMENT, run_name=study.study_name, run_id=parent):
        import mlflow

        if "study.name" not in mlflow.get_run(parent).data.params:  # another worker may have logged them
            tracking.log_params({"study.name": study.study_name, "study.storage": result.storage,
                                 "study.dataset": dataset, "study.epochs": epochs,
                                 **{f"space.{k}": v for k, v in asdict(space).items() if v is not None}})
        states = [t.state for t in study.trials]
        tracking.log_metrics({"trials_complete": states.count(TrialState.COMPLETE),
                              "trials_pruned": states.count(TrialState.PRUNED),
                              "trials_failed": states.count(TrialState.FAIL),
                              **({"best_valid_psnr_gain": best.value} if best else {})}, step=len(study.trials))
        if best:
            mlflow.set_tags({**{f"best.{k}": str(v) for k, v in best.params.items()},
                             "best.trial": str(best.number), "best.run_id": result.best_run_id or ""})
        with tempfile.TemporaryDirectory() as tmp:
            files = _study_files(Path(tmp), study, result)
            tracking.log_artifacts(files, "study")
    return result


def _study_files(folder: Path, study, result: StudyResult) -> List[Path]:
    import warnings

    import optuna.visualization.matplotlib as vis

    from bpho.plots import pyplot

    plt = pyplot()
    files = [folder / "best.json", folder / "trials.csv"]
    files[0].write_text(json.dumps(asdict(result), indent=2))
    study.trials_dataframe().to_csv(files[1], index=False)
    for fname, plot in (("optimization_history.png", vis.plot_optimization_history),
                        ("param_importances.png", vis.plot_param_importances)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib backend experimental
                ax = plot(study)
            ax.figure.set_size_inches(7, 4.5)
            ax.figure.tight_layout()
            ax.figure.savefig(folder / fname, dpi=100)
            files.append(folder / fname)
        except (ValueError, RuntimeError):  # importances need two or more finished trials
            pass
        finally:
            plt.close("all")
    return files
