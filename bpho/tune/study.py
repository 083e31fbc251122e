"""What every bpho Optuna study shares: its storage, opening it (also from several workers at
once), the pruner, the parent MLflow run of its trials, and the summary files of a study."""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, cast

from bpho import paths, tracking
from bpho.config import Pruner, choice
from bpho.errors import BphoError


def load_optuna():
    """Optuna, imported when a study needs it, with its per-trial log lines off."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def default_storage() -> str:
    """SQLite under ``$BPHO_ROOT/tune`` (one machine); several share an RDB URL instead."""
    folder = paths.root() / "tune"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'optuna.db'}"


def safe_url(url: str) -> str:
    """A storage URL with its password hidden."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]


def open_study(storage: str, name: str, direction: str, **kwargs):
    """Create or load a study. Workers starting together may race to create the schema or the
    study in a fresh database: the loser retries (and then loads what the winner made)."""
    optuna = load_optuna()
    for attempt in range(5):
        try:
            return optuna.create_study(storage=storage, study_name=name, direction=direction, load_if_exists=True,
                                       **kwargs)
        except Exception as exc:  # a bad URL, an unreachable server, a missing driver, or a lost race
            said = type(exc).__name__ + repr(exc)  # PostgreSQL: a unique row, or the schema's enum type made twice
            if any(race in said for race in ("IntegrityError", "DuplicateObject", "UniqueViolation")) and attempt < 4:
                time.sleep(0.5 + attempt)
                continue
            raise BphoError(f"tune: cannot open study {name!r} on {safe_url(storage)} "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0]})") from None


def pruner(name: Pruner | str):
    """The Optuna pruner: median (after 2 trials and 1 epoch), hyperband, or none."""
    optuna = load_optuna()
    name = cast(Pruner, choice(Pruner, name, "tune hparams: --pruner"))
    if name is Pruner.MEDIAN:
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    if name is Pruner.HYPERBAND:
        return optuna.pruners.HyperbandPruner(min_resource=1)
    return optuna.pruners.NopPruner()


def shared_parent_run(study, name: str, tags: Dict[str, str]) -> str:
    """The study's parent MLflow run: MLflow's own under `mlflow run`, else the one the first
    worker made (its id is a study attribute; two workers starting together agree on one)."""
    known = study.user_attrs.get("mlflow_parent_run_id")
    if known:
        return known
    with tracking.run(tracking.TUNE_EXPERIMENT, run_name=name, tags=tags) as active:
        mine = active.info.run_id
    study.set_user_attr("mlflow_parent_run_id", mine)
    time.sleep(1.0)  # a worker that raced us has written by now; the last write wins for both
    winner = study.user_attrs["mlflow_parent_run_id"]  # read back from the storage
    if winner != mine:
        tracking.delete_run(mine)
    return winner


def end_trial_run(parent: str, tags: Dict[str, str], state: str) -> None:
    """Tag a stopped trial's run (found by its tags) and end it as KILLED rather than FAILED."""
    for run_id in tracking.find_runs(tags, beside=parent):
        tracking.end_run(run_id, "KILLED", tags={"bpho.trial_state": state})


@dataclass
class StudyResult:
    """What a study run returns: the study, its storage, parent run, trials and the best trial."""

    study: str
    storage: str
    parent_run_id: str
    trials: int
    best_value: Optional[float]
    best_params: Dict[str, object] = field(default_factory=dict)
    best_run_id: Optional[str] = None


def study_files(folder: Path, study, result: StudyResult) -> List[Path]:
    """``best.json`` (`result`), ``trials.csv`` and Optuna's plots of `study`, written in `folder`."""
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
            figure: Any = ax.figure  # a Figure (matplotlib's type says Figure or SubFigure)
            figure.set_size_inches(7, 4.5)
            figure.tight_layout()
            figure.savefig(folder / fname, dpi=100)
            files.append(folder / fname)
        except (ValueError, RuntimeError):  # importances need two or more finished trials
            pass
        finally:
            plt.close("all")
    return files
