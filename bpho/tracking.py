"""The one place that talks to MLflow.

Tracking (and the model registry) goes to `MLFLOW_TRACKING_URI` when it is set (the
team's server), else to the embedded SQLite store ``$BPHO_ROOT/mlflow.db`` with artifacts in ``$BPHO_ROOT/mlartifacts``
(works with no server). Under ``mlflow run`` the run MLflow created is reused.
"""

from __future__ import annotations

import os
import subprocess
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterable, Iterator, Optional

from bpho import paths
from bpho.config import env_previews, env_run_id, env_tracking_uri, env_unset
from bpho.errors import BphoError, BphoWarning

if TYPE_CHECKING:
    from mlflow import ActiveRun

# the MLflow experiments bpho logs to, one per kind of work
DATASETS_EXPERIMENT = "bpho-datasets"
TRAIN_EXPERIMENT = "bpho-train"
EVALUATE_EXPERIMENT = "bpho-evaluate"
TUNE_EXPERIMENT = "bpho-tune"
SYNTHESIZE_EXPERIMENT = "bpho-synthesize"
# The run page's description (MLflow's note) for runs with image-quality metrics: what their units are
METRIC_UNITS = """Units of this run's metrics (`valid_`: the model on the held-out images; `model_`: the model in
`bpho evaluate`; `bicubic_`, `bilinear_`, `nearest_`: the baselines; `best_`: at the best epoch):

| metric | unit |
|---|---|
| `*psnr*`, `*psnr_gain*` | dB (prediction fitted to the HR, HR normalised by its 0.1 / 99.9 percentiles) |
| `*ssim*`, `*ms_ssim*` | 1 (0 to 1; piq, Gaussian window 11 px) |
| `*nrmse*` | fraction of the HR's 0.1-99.9 percentile range |
| `*frc_nm` | nm: Fourier ring correlation resolution (1/7 threshold), prediction against HR |
| `*frc_px` | the same in HR pixels |
| `train_loss` | the training loss of normalised intensities |
| `lr` | learning rate |
| `time_*_s` | seconds |
"""


def embedded_uri() -> str:
    """The embedded SQLite store under ``$BPHO_ROOT``."""
    return f"sqlite:///{paths.root() / 'mlflow.db'}"


def tracking_uri() -> str:
    """Where tracking goes: ``$MLFLOW_TRACKING_URI`` when set, else the embedded store."""
    return env_tracking_uri() or embedded_uri()


def _mlflow():
    import mlflow

    # fail fast when a server is away (MLflow's default retries block each call for minutes);
    # training buffers what it could not log (`Buffer`). Set these variables to override.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # bpho shows its own progress
    uri = tracking_uri()
    unset = env_unset(("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"))
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)  # models are registered where the runs go
    for var in unset:  # MLflow writes them into os.environ; "unset" must keep meaning the embedded store
        os.environ.pop(var, None)
    return mlflow


def experiment_id(mlflow, name: str) -> str:
    """The id of experiment `name`, created if new (a local store keeps its artifacts beside it)."""
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):  # a local store (the embedded one, or a user's): artifacts beside it,
        store = Path(uri[len("sqlite:///"):]).absolute()  # never in ./mlruns of wherever a command was started
        location = (store.parent / "mlartifacts" / name).as_uri()
        store.parent.mkdir(parents=True, exist_ok=True)
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
def run(experiment: str, run_name: str, tags: Optional[Dict[str, str]] = None,
        run_id: Optional[str] = None, parent_run_id: Optional[str] = None) -> Iterator[ActiveRun]:
    """Start a run, continue `run_id` (resume), or under ``mlflow run`` use the run it made;
    with `parent_run_id`, a new child run in the parent's experiment (a tuning trial, from
    any process). Yields the active mlflow.ActiveRun."""
    mlflow = _mlflow()
    if parent_run_id and not run_id:
        parent = mlflow.get_run(parent_run_id)
        active = mlflow.start_run(experiment_id=parent.info.experiment_id, run_name=run_name,
                                  nested=mlflow.active_run() is not None,
                                  tags={"mlflow.parentRunId": parent_run_id})
    else:
        run_id = run_id or env_run_id()
        if run_id:
            try:
                active = mlflow.start_run(run_id=run_id)
            except mlflow.exceptions.MlflowException as exc:
                raise BphoError(f"run {run_id}: cannot continue it on {tracking_uri()} ({exc.message})") from None
        else:
            active = mlflow.start_run(experiment_id=experiment_id(mlflow, experiment), run_name=run_name)
    with active:
        commit = git_commit()
        all_tags = {**(tags or {}),
                    **({"mlflow.source.git.commit": commit, "bpho.git_commit": commit} if commit else {}),
                    **({} if previews_enabled() else {"bpho.previews": "off"})}
        mlflow.set_tags(all_tags)
        yield active


def run_finished(run_id: str) -> bool:
    """Whether run `run_id` ended normally (a killed run stays RUNNING)."""
    mlflow = _mlflow()
    try:
        return mlflow.MlflowClient().get_run(run_id).info.status == "FINISHED"
    except mlflow.exceptions.MlflowException:
        return False


def run_record(run_id: str) -> Optional[dict]:
    """A finished run's tags, parameters and metrics; None where this store does not know it."""
    mlflow = _mlflow()
    try:
        data = mlflow.MlflowClient().get_run(run_id).data
    except mlflow.exceptions.MlflowException:
        return None
    return {"tags": dict(data.tags), "params": dict(data.params), "metrics": dict(data.metrics)}


def log_to_run(run_id: str, files: Iterable[Path], artifact_path: str, tags: Optional[Dict[str, str]] = None) -> None:
    """Add files (and tags) to an existing run, finished or not, e.g. an export of its model."""
    client = _mlflow().MlflowClient()
    for f in files:
        client.log_artifact(run_id, str(f), artifact_path)
    for k, v in (tags or {}).items():
        client.set_tag(run_id, k, v)


def set_run_tags(run_id: str, tags: Dict[str, str]) -> None:
    """Tag run `run_id` (any run, from any process; not only the active one)."""
    client = _mlflow().MlflowClient()
    for k, v in tags.items():
        client.set_tag(run_id, k, v)


def end_run(run_id: str, status: str, tags: Optional[Dict[str, str]] = None) -> None:
    """Tag run `run_id` and end it with `status` (``FINISHED``, ``FAILED`` or ``KILLED``)."""
    set_run_tags(run_id, tags or {})
    _mlflow().MlflowClient().set_terminated(run_id, status)


def delete_run(run_id: str) -> None:
    """Delete run `run_id` (MLflow keeps it in its trash)."""
    _mlflow().MlflowClient().delete_run(run_id)


def find_runs(tags: Dict[str, str], beside: str) -> list:
    """Ids of the runs that carry all `tags`, in the experiment of run `beside`."""
    client = _mlflow().MlflowClient()
    experiment = client.get_run(beside).info.experiment_id
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    return [r.info.run_id for r in client.search_runs([experiment], filter_string=query)]


def describe_run(text: str) -> None:
    """The active run's description (markdown, shown at the top of its page in the MLflow UI)."""
    set_tags({"mlflow.note.content": text})


def log_params(params: Dict[str, object]) -> None:
    """Log parameters to the active run (a list or tuple as comma-separated values)."""
    import mlflow

    mlflow.log_params({k: (",".join(map(str, v)) if isinstance(v, (list, tuple)) else v) for k, v in params.items()})


def set_tags(tags: Dict[str, str]) -> None:
    """Tag the active run."""
    import mlflow

    mlflow.set_tags(tags)


def log_metrics(metrics: Dict[str, float], step: Optional[int] = None) -> None:
    """Log metrics to the active run, at `step`."""
    import mlflow

    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def log_artifacts(files: Iterable[Path], artifact_path: Optional[str] = None) -> None:
    """Log files to the active run, under `artifact_path`."""
    import mlflow

    for f in files:
        mlflow.log_artifact(str(f), artifact_path=artifact_path)


def previews_enabled() -> bool:
    """`BPHO_PREVIEWS=off` keeps pictures of the data (tiles, predictions, QC) off the tracking
    server: they are still written locally; metrics, parameters and models are still logged."""
    return env_previews()


def log_previews(files: Iterable[Path], artifact_path: Optional[str] = None) -> None:
    """Log pictures of the data unless previews are switched off (see `previews_enabled`)."""
    if previews_enabled():  # else the run is tagged bpho.previews=off when it starts
        log_artifacts(files, artifact_path)


def log_dataset_input(name: str, digest: str, location: Path, context: str,
                      tags: Optional[Dict[str, str]] = None) -> None:
    """Record a bpho dataset or datasource as an MLflow dataset input (shown in the UI)."""
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():  # MLflow registers the local source twice and says so
        warnings.simplefilter("ignore")
        source = resolve_dataset_source(str(location))
    # MetaDataset implements `profile`; mypy reads it as abstract through MLflow's base class
    mlflow.log_input(MetaDataset(source, name=name, digest=digest[:36]),  # type: ignore[abstract]
                     context=context, tags=tags)


def unreachable(exc: Optional[BaseException]) -> bool:
    """Whether an exception means the tracking server could not be reached (not a bad request).

    MLflow wraps the network error in an MlflowException, so the whole chain is looked at; a
    server that dies mid-answer ("Connection broken") counts as unreachable too.
    """
    import requests

    network = (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
               requests.exceptions.ChunkedEncodingError, ConnectionError)
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, network):
            return True
        if any(s in str(exc) for s in ("Max retries exceeded", "Connection refused", "Failed to establish",
                                       "Connection broken", "Connection aborted", "Read timed out",
                                       "RemoteDisconnected", "too many 5", "503", "502")):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class Buffer:
    """Metrics and files for the active run that survive a tracking server outage.

    Each item is logged at once when the server answers; otherwise it is kept, in memory and
    in `spool` (JSON lines beside the checkpoint, so a crash during the outage loses nothing),
    and logged with its original timestamp on the next successful call. `drain` waits for
    the server before the run ends. The run is tagged with what arrived late.
    """

    def __init__(self, spool: Path):
        import json

        self.spool = Path(spool)
        self.items = [json.loads(line) for line in self.spool.read_text().splitlines()] if self.spool.exists() else []
        self.late_steps: set = set()
        self.warned = False

    def metrics(self, values: Dict[str, float], step: int) -> None:
        """Log metrics at `step` now, or keep them (with the time now) until the server is back."""
        import time

        self._add({"kind": "metrics", "values": {k: float(v) for k, v in values.items()}, "step": step,
                   "timestamp": int(time.time() * 1000)})

    def artifact(self, path: Path, artifact_path: Optional[str] = None) -> None:
        """Log a file now, or keep it until the server is back."""
        self._add({"kind": "artifact", "path": str(path), "artifact_path": artifact_path})

    def _add(self, item: dict) -> None:
        import json

        self.items.append(item)
        if not self.flush():
            self.spool.parent.mkdir(parents=True, exist_ok=True)
            with open(self.spool, "a") as fh:
                fh.write(json.dumps(item) + "\n")

    def flush(self) -> bool:
        """Log everything pending, oldest first; False (and nothing lost) if the server is away."""
        import mlflow
        from mlflow.entities import Metric

        client = mlflow.MlflowClient()
        run_id = _active_run_id(mlflow)
        while self.items:
            item = self.items[0]
            try:
                if item["kind"] == "metrics":
                    client.log_batch(run_id, metrics=[Metric(k, v, item["timestamp"], item["step"])
                                                      for k, v in item["values"].items()])
                elif Path(item["path"]).exists():
                    client.log_artifact(run_id, item["path"], item["artifact_path"])
            except Exception as exc:
                if not unreachable(exc):
                    raise
                if not self.warned:
                    warnings.warn(f"tracking server {tracking_uri()} unreachable; training goes on and keeps "
                                  f"metrics in {self.spool} until it is back", BphoWarning, stacklevel=3)
                    self.warned = True
                return False
            self.items.pop(0)
            if self.warned and item["kind"] == "metrics":
                self.late_steps.add(item["step"])
        if self.spool.exists():
            self.spool.unlink()
        if self.late_steps:
            client.set_tag(run_id, "bpho.logged_late", f"steps {sorted(self.late_steps)} were logged after a "
                                                       "tracking server outage, with their original times")
        return True

    def drain(self, wait_s: float) -> None:
        """Wait up to `wait_s` seconds for the server to take everything pending."""
        import time

        deadline = time.time() + wait_s
        while not self.flush():
            if time.time() > deadline:
                raise BphoError(f"tracking server {tracking_uri()} unreachable for {wait_s:.0f} s; nothing is "
                                f"lost: metrics wait in {self.spool}, weights in its checkpoint; when the server "
                                "is back, `bpho train --resume RUN_ID` logs them and the model")
            time.sleep(2.0)


def _active_run_id(mlflow) -> str:
    active = mlflow.active_run()
    if active is None:
        raise RuntimeError("no active MLflow run (called outside `tracking.run`)")
    return active.info.run_id


def retry(call, wait_s: float, what: str):
    """Call `call()`, retrying while the tracking server is unreachable, for up to `wait_s` seconds."""
    import time

    deadline = time.time() + wait_s
    while True:
        try:
            return call()
        except Exception as exc:
            if not unreachable(exc):
                raise
            if time.time() > deadline:
                raise BphoError(f"tracking server {tracking_uri()} unreachable for {wait_s:.0f} s while "
                                f"{what}") from None
            time.sleep(2.0)


def log_missing_epoch(metrics: Dict[str, float], epoch: int, key: str = "valid_psnr") -> None:
    """On resume: log the last checkpointed epoch's metrics if the kill came before they were
    logged, so the history has no gap (and, since they are checked first, no duplicate)."""
    import mlflow

    if not metrics or epoch < 0:
        return
    run_id = _active_run_id(mlflow)
    steps = {m.step for m in mlflow.MlflowClient().get_metric_history(run_id, key)}
    if epoch not in steps:
        log_metrics(metrics, step=epoch)


def _requirements() -> list:
    import numpy
    import safetensors
    import timm
    import torch

    return [f"torch>={torch.__version__.split('+')[0]}", f"timm>={timm.__version__}",
            f"safetensors>={safetensors.__version__}", f"numpy>={numpy.__version__}"]


def log_model(folder: Path, registered_name: Optional[str]) -> Optional[str]:
    """Log a bpho model folder as an MLflow pyfunc from code (bpho/serving/pyfunc_model.py,
    nothing pickled) with bpho's code beside it, and register it. Returns the version."""
    import mlflow

    import logging

    package = Path(__file__).resolve().parent
    # no MLflow signature on purpose: the pyfunc takes (Y, X) images and (T, Y, X) stacks of any
    # dtype, and MLflow enforces a TensorSpec's rank and dtype; so its "cannot infer" line is noise
    pyfunc_log = logging.getLogger("mlflow.pyfunc")
    level = pyfunc_log.level
    pyfunc_log.setLevel(logging.ERROR)
    try:
        info = _log_pyfunc(mlflow, package, folder, registered_name)
    finally:
        pyfunc_log.setLevel(level)
    version = getattr(info, "registered_model_version", None)
    return str(version) if version is not None else None


def _log_pyfunc(mlflow, package: Path, folder: Path, registered_name: Optional[str]):
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=str(package / "serving" / "pyfunc_model.py"),
        artifacts={"model_dir": str(folder)},
        code_paths=[str(package)],
        pip_requirements=_requirements(),
        registered_model_name=registered_name,
    )


def download_model(uri: str) -> Path:
    """The local folder of a logged bpho model (``runs:/..``, ``models:/NAME/VERSION|latest``)."""
    import mlflow

    _mlflow()
    try:
        local = Path(mlflow.artifacts.download_artifacts(uri))
    except Exception as exc:  # MLflow raises several types for a missing run/model/version
        message = getattr(exc, "message", str(exc)).splitlines()[0]
        raise BphoError(f"model {uri}: not found on {tracking_uri()} ({message})") from None
    found = next(local.rglob("bpho_model.json"), None)
    if found is None:
        raise BphoError(f"model {uri}: not a bpho model (no bpho_model.json in it)")
    return found.parent


# ---- the MLflow UI, registered versions and the champion alias (#27) ----

# MLflow 3 opens an experiment in its GenAI mode (traces); bpho's runs are in Model-training mode
UI_MODE = "workflowType=machine_learning"
CHAMPION = "champion"  # the alias of the version the lab trusts: models:/NAME@champion


def server_address() -> Optional[str]:
    """The tracking server's address when `MLFLOW_TRACKING_URI` names one (its UI is there too);
    None for a local store, which `bpho ui` serves."""
    uri = tracking_uri()
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else None


def ui_path(experiment_id: Optional[str] = None, run_id: Optional[str] = None) -> str:
    """The MLflow UI's path (after its address) of an experiment's runs view or of a run's page,
    in Model-training mode; no experiment: the list of experiments."""
    if experiment_id is None:
        return "/#/experiments"
    return f"/#/experiments/{experiment_id}/runs{'/' + run_id if run_id else ''}?{UI_MODE}"


def models_path(name: Optional[str] = None) -> str:
    """The UI path of the model registry, or of registered model `name`'s page (versions, aliases)."""
    return f"/#/models{'/' + name if name else ''}?{UI_MODE}"


def train_view_path() -> str:
    """The UI path of the runs view of bpho's training experiment (the experiments list until it exists)."""
    exp = _mlflow().get_experiment_by_name(TRAIN_EXPERIMENT)
    return ui_path(exp.experiment_id if exp is not None else None)


def run_path(run_id: str) -> str:
    """The UI path of run `run_id`'s page."""
    mlflow = _mlflow()
    try:
        experiment = mlflow.MlflowClient().get_run(run_id).info.experiment_id
    except Exception:  # store away: MLflow's own route finds the experiment when the page is opened
        return f"/#/runs/{run_id}"
    return ui_path(experiment, run_id)


def run_url(run_id: str) -> str:
    """Where to see run `run_id`: its page in the MLflow UI (on the team server), or how to open it
    on the embedded store (`bpho ui --run`, which serves it and prints the page's address)."""
    address, path = server_address(), run_path(run_id)
    return f"{address}{path}" if address else f"bpho ui --run {run_id}  (the page {path})"


def describe_version(name: str, version: str, run_id: str, dataset: str, digest: str,
                     metrics: Dict[str, float]) -> None:
    """Give a registered version its description and tags: dataset and digest, the validation gains
    over bicubic and bilinear, FRC resolution, the training run (what `name_champion` compares)."""
    client = _mlflow().MlflowClient()
    gain, gain_bilinear, frc = (metrics.get(k) for k in ("valid_psnr_gain", "valid_psnr_gain_bilinear", "valid_frc_nm"))
    tags = {"bpho.dataset": dataset, "bpho.dataset_digest": digest, "bpho.run_id": run_id,
            "bpho.valid_psnr_gain": f"{gain:.4f}", "bpho.valid_psnr_gain_bilinear": f"{gain_bilinear:.4f}",
            **({"bpho.valid_frc_nm": f"{frc:.1f}"} if frc is not None else {})}
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, v)
    client.update_model_version(name, version, description=(
        f"Trained on dataset {dataset} (digest {digest[:12]}) by run {run_id}. On its validation images (they "
        f"chose the epoch): PSNR {gain:+.2f} dB over bicubic, {gain_bilinear:+.2f} dB over bilinear"
        + (f"; FRC resolution {frc:.0f} nm." if frc is not None else ".")))


def name_champion(name: str, version: str) -> str:
    """Give version `version` the alias `champion` if its validation gain over bicubic beats the
    champion's on a dataset with the same digest, or there is no champion; returns one line that
    says what happened and why. Gains on different datasets do not compare: the alias stays. The
    registered model's description names the champion and repeats its version's description."""
    mlflow = _mlflow()
    client = mlflow.MlflowClient()
    new = client.get_model_version(name, version)
    try:
        old = client.get_model_version_by_alias(name, CHAMPION)
    except mlflow.exceptions.MlflowException:
        old = None
    gain = float(new.tags["bpho.valid_psnr_gain"])
    if old is not None and old.version != new.version:
        if old.tags.get("bpho.dataset_digest") != new.tags["bpho.dataset_digest"]:
            return (f"{name} version {version} is not the {CHAMPION}: version {old.version} is, trained on dataset "
                    f"{old.tags.get('bpho.dataset', '?')} ({old.tags.get('bpho.dataset_digest', '?')[:12]}), another "
                    f"dataset than {new.tags['bpho.dataset']} ({new.tags['bpho.dataset_digest'][:12]}), so their "
                    f"gains do not compare (move the alias by hand in the MLflow UI if you mean to)")
        best = float(old.tags["bpho.valid_psnr_gain"])
        if not gain > best:  # NaN (a diverged model) never wins
            return (f"{name} version {version} is not the {CHAMPION}: its validation gain over bicubic "
                    f"{gain:+.3f} dB does not beat version {old.version}'s {best:+.3f} dB on the same dataset")
    client.set_registered_model_alias(name, CHAMPION, version)
    client.update_registered_model(name, description=f"The {CHAMPION} (`models:/{name}@{CHAMPION}`) is version "
                                                     f"{version}, chosen by its validation gain over bicubic. "
                                                     f"{new.description}")
    was = f" (was version {old.version})" if old is not None and old.version != new.version else ""
    return f"{name} version {version} is the {CHAMPION}{was}: models:/{name}@{CHAMPION}, {gain:+.2f} dB over bicubic"


def model_version(uri: str) -> Optional[tuple]:
    """The registered (name, version) a model URI stands for at this moment (``models:/NAME/V``,
    ``models:/NAME@ALIAS``, ``models:/NAME/latest``, or ``runs:/ID/model`` registered once); else None."""
    import re

    mlflow = _mlflow()
    client = mlflow.MlflowClient()
    try:
        if m := re.fullmatch(r"models:/([^/@]+)@(.+)", uri):
            return m.group(1), str(client.get_model_version_by_alias(m.group(1), m.group(2)).version)
        if m := re.fullmatch(r"models:/([^/@]+)/latest", uri):
            versions = client.search_model_versions(f"name = '{m.group(1)}'")
            return (m.group(1), str(max(int(v.version) for v in versions))) if versions else None
        if m := re.fullmatch(r"models:/([^/@]+)/(\d+)", uri):
            return m.group(1), str(client.get_model_version(m.group(1), m.group(2)).version)
        if m := re.fullmatch(r"runs:/([^/]+)/model", uri):
            versions = client.search_model_versions(f"run_id = '{m.group(1)}'")
            return (versions[0].name, str(versions[0].version)) if len(versions) == 1 else None
    except mlflow.exceptions.MlflowException:
        return None
    return None


def latest_run(experiment: str, tags: Dict[str, str]) -> Optional[str]:
    """The id of the newest run in `experiment` carrying all `tags` (e.g. a dataset's build); None if none."""
    mlflow = _mlflow()
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return None
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = mlflow.MlflowClient().search_runs([exp.experiment_id], filter_string=query, max_results=1,
                                             order_by=["attributes.start_time DESC"])
    return runs[0].info.run_id if runs else None


def registered_versions() -> list:
    """Every registered version of a bpho model in the tracking store (`tracking_uri`: the embedded
    store, or the team's server with its credentials from the environment, as the CLI), by model
    name and newest version first: dicts with ``name``, ``version``, ``aliases``, ``run_id``,
    ``uri`` (``models:/NAME/VERSION``) and the ``tags`` `describe_version` gave it (dataset, digest,
    validation PSNR gains over bicubic and bilinear, FRC). A store that cannot be reached or
    refuses the credentials is one line (BphoError)."""
    import re

    mlflow = _mlflow()
    client = mlflow.MlflowClient()
    try:
        found = client.search_model_versions()
        aliases: Dict[tuple, list] = {}  # a version found by search does not carry its aliases; its model does
        for model in client.search_registered_models():
            for alias, version in (model.aliases or {}).items():
                aliases.setdefault((model.name, str(version)), []).append(alias)
    except Exception as exc:
        message = " ".join(str(getattr(exc, "message", exc)).split())
        if unreachable(exc):
            raise BphoError(f"tracking store {tracking_uri()}: unreachable; start the server or set "
                            "MLFLOW_TRACKING_URI to one that runs") from None
        refused = re.search(r"error code (401|403)", message)
        if refused:
            raise BphoError(f"tracking store {tracking_uri()}: the server refused the credentials (HTTP "
                            f"{refused.group(1)}); check MLFLOW_TRACKING_USERNAME and "
                            "MLFLOW_TRACKING_PASSWORD") from None
        raise BphoError(f"tracking store {tracking_uri()}: cannot list its models ({message[:200]}); check "
                        "MLFLOW_TRACKING_URI, MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD") from None
    out = [{"name": v.name, "version": str(v.version), "aliases": sorted(aliases.get((v.name, str(v.version)), [])),
            "run_id": v.run_id,
            "uri": f"models:/{v.name}/{v.version}", "tags": dict(v.tags or {})}
           for v in found if "bpho.dataset" in (v.tags or {})]
    return sorted(out, key=lambda v: (v["name"], -int(v["version"])))
