"""The one place that talks to MLflow.

Tracking goes to `MLFLOW_TRACKING_URI` when it is set (the team's server), else to the
embedded SQLite store ``$BPHO_ROOT/mlflow.db`` with artifacts in ``$BPHO_ROOT/mlartifacts``
(works with no server). Under ``mlflow run`` the run MLflow created is reused.
"""

from __future__ import annotations

import os
import subprocess
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterable, Iterator, Optional

from bpho import paths

DATASETS_EXPERIMENT = "bpho-datasets"


def embedded_uri() -> str:
    return f"sqlite:///{paths.root() / 'mlflow.db'}"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or embedded_uri()


def _mlflow():
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    return mlflow


def _experiment_id(mlflow, name: str) -> str:
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if "MLFLOW_TRACKING_URI" not in os.environ:  # embedded: artifacts beside the store, not in the cwd
        location = (paths.root() / "mlartifacts" / name).as_uri()
    paths.root().mkdir(parents=True, exist_ok=True)
    return mlflow.create_experiment(name, artifact_location=location)


def git_commit() -> Optional[str]:
    """The bpho source's git commit, where the code runs from a checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


@contextmanager
def run(experiment: str, run_name: str, tags: Optional[Dict[str, str]] = None) -> Iterator[object]:
    """Start (or, under ``mlflow run``, continue) a run; yields the active mlflow.ActiveRun."""
    mlflow = _mlflow()
    if os.environ.get("MLFLOW_RUN_ID"):
        active = mlflow.start_run(run_id=os.environ["MLFLOW_RUN_ID"])
    else:
        active = mlflow.start_run(experiment_id=_experiment_id(mlflow, experiment), run_name=run_name)
    with active:
        commit = git_commit()
        all_tags = {**(tags or {}), **({"mlflow.source.git.commit": commit, "bpho.git_commit": commit} if commit else {})}
        mlflow.set_tags(all_tags)
        yield active


def log_params(params: Dict[str, object]) -> None:
    import mlflow

    mlflow.log_params({k: (",".join(map(str, v)) if isinstance(v, (list, tuple)) else v) for k, v in params.items()})


def log_metrics(metrics: Dict[str, float], step: Optional[int] = None) -> None:
    import mlflow

    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def log_artifacts(files: Iterable[Path], artifact_path: Optional[str] = None) -> None:
    import mlflow

    for f in files:
        mlflow.log_artifact(str(f), artifact_path=artifact_path)


def log_dataset_input(name: str, digest: str, location: Path, context: str,
                      tags: Optional[Dict[str, str]] = None) -> None:
    """Record a bpho dataset or datasource as an MLflow dataset input (shown in the UI)."""
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():  # MLflow registers the local source twice and says so
        warnings.simplefilter("ignore")
        source = resolve_dataset_source(str(location))
    mlflow.log_input(MetaDataset(source, name=name, digest=digest[:36]), context=context, tags=tags)
