"""The hyperparameter study: learning rate, loss, the network's searched settings (its
architecture's SEARCH, e.g. the U-Net's encoder and mode; `SearchSpace.choices` over them), tile
and batch size (capped by the fit table), maximising the validation PSNR gain over bicubic, pruned on
the per-epoch value.

Each trial is a child MLflow run of one parent run per study; the parent gets the best value,
best parameters, the trial table and Optuna's plots. The study lives in SQLite under
``$BPHO_ROOT/tune`` or in any RDB (``postgresql://...``) that several workers on several
machines share; naming the study resumes or joins it.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

from bpho import tracking
from bpho.config import MIN_BATCH, HparamsConfig, TrainConfig, TrainPrecision
from bpho import datasets
from bpho.errors import BphoError
from bpho.tune.fit import fit_cap, is_out_of_memory
from bpho.tune.study import (StudyResult, default_storage, end_trial_run, load_optuna, open_study, pruner, safe_url,
                             shared_parent_run, study_files)


def hparams(cfg: HparamsConfig, progress: bool = True) -> StudyResult:
    """Run (or join) a study until it holds ``cfg.trials`` finished trials.

    Parameters
    ----------
    cfg : HparamsConfig
        The dataset, the study (storage, name, pruner, seed), the search space and the epochs
        per trial (bpho/config.py).
    progress : bool
        Print a line per trial and show training progress.

    Returns
    -------
    StudyResult
        The study's best value and parameters so far (all workers), and its parent MLflow run.
    """
    from bpho.train import train

    optuna = load_optuna()
    from optuna.trial import TrialState

    space = cfg.space
    searched = space.searched(cfg.model)
    ds = datasets.open(cfg.dataset)
    sizes = sorted(space.tile_sizes or ds.tile_sizes)
    if any(s not in ds.tile_sizes for s in sizes):
        raise BphoError(f"tune hparams: dataset {cfg.dataset!r} has tile sizes {ds.tile_sizes}, not {sizes}")
    storage = cfg.storage or default_storage()
    name = cfg.study or f"hparams-{cfg.dataset}"
    study = open_study(storage, name, "maximize", sampler=optuna.samplers.TPESampler(seed=cfg.seed),
                       pruner=pruner(cfg.pruner))
    parent = shared_parent_run(study, name, tags={"bpho.dataset": cfg.dataset, "bpho.tune": "hparams",
                                                  "bpho.study": name})

    def objective(trial) -> float:
        size = trial.suggest_categorical("tile_size", sizes)
        model = dataclasses.replace(cfg.model,
                                    **{k: trial.suggest_categorical(k, list(v)) for k, v in searched.items()})
        loss = trial.suggest_categorical("loss", [str(x) for x in space.losses])
        learning_rate = trial.suggest_float("lr", space.lr_min, space.lr_max, log=True)
        cap = fit_cap(cfg.dataset, size, model, str(TrainPrecision.AMP if space.amp else TrainPrecision.FP32))
        cap = space.max_batch if cap is None else min(cap, space.max_batch)
        if cap < MIN_BATCH:
            raise optuna.TrialPruned(f"no batch of tile {size} fits ({model.label()}) in the fit table")
        batch = trial.suggest_int("batch_size", MIN_BATCH, cap, log=True)
        train_cfg = TrainConfig(dataset=cfg.dataset, tile_size=size, batch_size=batch, epochs=cfg.epochs,
                                model=model, loss=loss, lr=learning_rate, amp=space.amp, device=cfg.device,
                                panel_every=cfg.epochs)
        tags = {"bpho.study": name, "bpho.optuna_trial": str(trial.number)}

        def report(epoch: int, metrics: dict, run_id: str) -> None:
            trial.set_user_attr("mlflow_run_id", run_id)
            trial.report(metrics["valid_psnr_gain"], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch + 1}")

        try:
            result = train(train_cfg, progress=progress, register=False, parent_run_id=parent, tags=tags,
                           on_epoch=report)
        except optuna.TrialPruned:
            end_trial_run(parent, tags, "PRUNED")
            raise
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            end_trial_run(parent, tags, "OUT_OF_MEMORY")
            trial.set_user_attr("out_of_memory", True)
            raise optuna.TrialPruned(f"out of memory at tile {size}, batch {batch}") from None
        tracking.set_run_tags(result.run_id, {"bpho.trial_state": "COMPLETE"})
        return float(result.metrics["valid_psnr_gain"])

    def say(study, trial) -> None:
        if progress:
            value = f"{trial.value:+.3f} dB" if trial.value is not None else trial.state.name.lower()
            print(f"trial {trial.number}: {value}  " + ", ".join(f"{k}={v}" for k, v in trial.params.items()),
                  flush=True)

    # stop when the study (all workers together) holds `trials`, counting those still running elsewhere
    finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
    study.optimize(objective, callbacks=[say, optuna.study.MaxTrialsCallback(cfg.trials, states=finished)],
                   timeout=cfg.timeout, gc_after_trial=True)
    return _summarise(study, parent, storage, cfg)


def _summarise(study, parent: str, storage: str, cfg: HparamsConfig) -> StudyResult:
    """Best value, parameters, trial table and Optuna's plots onto the parent run."""
    from optuna.trial import TrialState

    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    best = max(done, key=lambda t: t.value) if done else None
    result = StudyResult(study=study.study_name, storage=safe_url(storage), parent_run_id=parent,
                         trials=len(study.trials), best_value=best.value if best else None,
                         best_params=dict(best.params) if best else {},
                         best_run_id=best.user_attrs.get("mlflow_run_id") if best else None)
    with tracking.run(tracking.TUNE_EXPERIMENT, run_name=study.study_name, run_id=parent):
        record = tracking.run_record(parent)
        if record is None or "study.name" not in record["params"]:  # another worker may have logged them
            tracking.log_params({"study.name": study.study_name, "study.storage": result.storage,
                                 "study.dataset": cfg.dataset, "study.epochs": cfg.epochs,
                                 **{f"space.{k}": v for k, v in asdict(cfg.space).items() if v is not None}})
        states = [t.state for t in study.trials]
        tracking.log_metrics({"trials_complete": states.count(TrialState.COMPLETE),
                              "trials_pruned": states.count(TrialState.PRUNED),
                              "trials_failed": states.count(TrialState.FAIL),
                              **({"best_valid_psnr_gain": best.value} if best else {})}, step=len(study.trials))
        if best:
            tracking.set_tags({**{f"best.{k}": str(v) for k, v in best.params.items()},
                               "best.trial": str(best.number), "best.run_id": result.best_run_id or ""})
        with tempfile.TemporaryDirectory() as tmp:
            files = study_files(Path(tmp), study, result)
            tracking.log_artifacts(files, "study")
    return result
