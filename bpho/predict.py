"""Predict: LR images, z-stacks and movies (CZI, TIFF, OME-Zarr) to HR ImageJ TIFF that Fiji opens,
OME-TIFF (``ome-tiff``: physical pixel sizes, axes and channel names in OME-XML) or OME-Zarr
(``ome-zarr``: OME-NGFF 0.5, chunked and multiscale, with the model's lineage in its metadata).

Every scene of every input becomes ``OUT/<stem><suffix>`` (and ``<stem>.png``, its first frame
next to the LR) (``<stem>_s<N>...`` for multi-scene files): axes (T, C, Z, Y, X) kept, pixel
size y/x divided by the model's scale, float32. Each channel and z plane is super-resolved on
its own; a multi-frame model slides its frame window along T (edges padded by reflection).

Memory follows blocks, not files: the input is read lazily, each plane is predicted in
``--block`` px squares (with their context) and each HR block is written as soon as it is
made, so a 8192 px image or a 300-frame movie needs no more memory than one block. With
``--dask`` the blocks of every file go to Dask workers (``local:N`` or a scheduler address),
which write them straight into the output; the output is the same, byte for byte.

The intensity normalisation of a (channel, z) series uses its exact percentiles up to
`EXACT_PERCENTILE_PIXELS` pixels, else the percentiles of a regular subsample: up to 16
frames evenly spread along T and every k-th pixel along Y and X, k the smallest stride that
keeps the sample under that count (benchmarks/big_predict.py prints the difference).
"""

from __future__ import annotations

import hashlib
import math
import os
import queue
import sys
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from tqdm import tqdm

from bpho import io, tracking
from bpho.config import PredictConfig
from bpho.channels import ChannelPlan, check_pixel_size, parse_model_specs, plan_channels
from bpho.errors import BphoError, BphoWarning
from bpho.inference import SuperResolver, blocks, load_model
from bpho.io import writers

FORMATS = writers.SUFFIXES
EXACT_PERCENTILE_PIXELS = 2 ** 24  # 16.8 M: a 4096 px plane, or 16 frames of 1024 px
SAMPLE_FRAMES = 16


@dataclass
class _Job:
    """One scene of one input and the output it becomes."""

    image: io.Image
    target: Path
    channels: List[Tuple[int, Optional[str]]]  # (input channel, model key) per output channel
    names: List[str]
    norms: Dict[Tuple[int, int], Tuple[float, float]] = field(default_factory=dict)  # (c, z) -> (lo, span)
    layout: Optional[writers.Layout] = None

    def units(self, block: int) -> List[tuple]:
        """(t, output channel, input channel, model key, z, block) for every block of the output."""
        return units(self.image.shape, self.channels, block)


def units(shape: Sequence[int], channels: Sequence[Tuple[int, Optional[str]]], block: int) -> List[tuple]:
    """(t, output channel, input channel, model key, z, block) for every block of the HR of a
    (T, C, Z, Y, X) image whose `channels` ((input channel, model key) each) are predicted."""
    t, _c, z, y, x = shape
    return [(ti, co, ci, key, zi, box) for ti in range(t) for zi in range(z)
            for co, (ci, key) in enumerate(channels) for box in blocks(y, x, block)]


def predict_files(model_uri: Union[str, Sequence[str]], inputs: Iterable, out_dir,
                  cfg: PredictConfig = PredictConfig(), progress: bool = True) -> List[Path]:
    """Super-resolve image files (CZI, TIFF, OME-Zarr; every scene, frame and plane) into `out_dir`.

    Parameters
    ----------
    model_uri : str or sequence of str
        ``runs:/ID/model``, ``models:/NAME/VERSION``, ``models:/NAME/latest`` or ``models:/NAME@ALIAS``;
        or ``CHANNEL=URI`` values (a channel name or index each), one model per channel into one output.
        A single model predicts the channel it was trained on (`bpho.channels.plan_channels`), or
        ``cfg.channels``.
    inputs : iterable of path
        LR files; all are checked, and every output name, before the model runs or anything is written.
    out_dir : path
        Output folder: one image per input scene (``NAME.tif``, ``NAME.ome.tif`` or ``NAME.ome.zarr``)
        and a PNG preview.
    cfg : PredictConfig
        Tiles, blocks, context, precision, device, the flip/rotation ensemble, the file format,
        ``dask`` (a scheduler address or ``local:N``) and ``overwrite``.
    progress : bool
        Show a progress bar over the blocks.

    Returns
    -------
    list of Path
        The images written.
    """
    fmt = str(cfg.format)
    inputs = [Path(p) for p in inputs]
    for path in inputs:  # check every input before loading the model or writing anything
        io.file_kind(path)
    uris = parse_model_specs([model_uri] if isinstance(model_uri, str) else list(model_uri))
    folders, models = load_models(uris, cfg)
    scale = next(iter(models.values())).scale
    out_dir = Path(out_dir)
    jobs = _plan(inputs, out_dir, fmt, models, cfg)
    lineage = {str(key): lineage_of(uris[key], m) for key, m in models.items()}
    info = {**(lineage["None"] if None in models else {"models": lineage}), "scale": scale}
    written: List[Path] = []
    try:
        for job in jobs:
            _prepare(job, models, fmt, cfg.block * scale)
        if cfg.dask:
            _run_dask(cfg.dask, folders, cfg, scale, jobs, progress)
        else:
            _run_here(models, scale, cfg.block, jobs, progress)
        for job in jobs:
            assert job.layout is not None
            img = job.image
            meta = {**info, "source": str(img.path), "scene": img.scene,
                    "channels": [{"name": name, "source_channel": c, "model": uris[key]}
                                 for name, (c, key) in zip(job.names, job.channels)],
                    "normalization": {f"c{c}z{z}": [lo, span] for (c, z), (lo, span) in job.norms.items()}}
            written.append(writers.finish(job.layout, _hr_pixel_size(img, scale), job.names, meta,
                                          cfg.overwrite))
            _preview(job, scale)
    finally:
        for job in jobs:
            if job.layout is not None and job.target not in written:
                writers.discard(job.layout)
    return written


def load_models(uris: Dict[Optional[str], str], cfg: PredictConfig = PredictConfig()
                ) -> Tuple[Dict[Optional[str], Path], Dict[Optional[str], SuperResolver]]:
    """The model folders and the loaded models of `uris` (`parse_model_specs`' keys), with `cfg`'s
    inference options; models of different scales are refused (one output has one scale)."""
    folders = {key: tracking.download_model(uri) for key, uri in uris.items()}
    models = {key: load_model(folder, device=cfg.device, tile=cfg.tile, overlap=cfg.overlap, batch=cfg.batch,
                              context=cfg.context, precision=cfg.precision, ensemble=cfg.ensemble, block=cfg.block)
              for key, folder in folders.items()}
    scales = {key: m.scale for key, m in models.items()}
    if len(set(scales.values())) > 1:
        raise BphoError(f"the models scale by {', '.join(f'{k}: {v}x' for k, v in scales.items())}; one output "
                        "needs one scale: give models of the same scale")
    return folders, models


def lineage_of(uri: str, model: SuperResolver) -> dict:
    """What an output records of the model that made it: URI, training run, dataset and digest, frames."""
    return {"model": uri, "run_id": model.meta.get("run_id"), "dataset": model.meta.get("dataset"),
            "dataset_digest": model.meta.get("dataset_digest"), "frames": model.frames}


def plan_image(img: io.Image, models: Dict[Optional[str], SuperResolver], spec: Optional[str] = None,
               source: Optional[str] = None) -> Tuple[ChannelPlan, List[str]]:
    """Which channels of `img` are predicted (`plan_channels`), after checking that a multi-frame
    model has its frames; also the pixel-size warnings (`check_pixel_size`), one line each."""
    source = source or str(img.path)
    frames = max(m.frames for m in models.values())
    t, c, _z, _y, _x = img.shape
    if frames > 1 and t < frames:
        raise BphoError(f"{source}: {t} frames is shorter than the model's frame window ({frames})")
    plan = plan_channels(img.channel_names, c, {key: m.meta for key, m in models.items()}, spec, source=source)
    said = [check_pixel_size(img.pixel_size[1:], models[key].meta, source=source)
            for key in {key for _c, key in plan.channels}]
    return plan, [w for w in said if w]


def check_image(img: io.Image) -> None:
    """BphoError unless the image is finite and not all zero (one pass over a lazy image)."""
    finite, nonzero = _finite_and_nonzero(img.data)
    if not finite:
        raise BphoError(f"{img.path}: the image holds NaN or infinite values; fix or re-export it")
    if not nonzero:
        raise BphoError(f"{img.path}: the image is all zero (an empty or failed acquisition); check the file")


def norms_of(img: io.Image, channels: Sequence[Tuple[int, Optional[str]]],
             models: Dict[Optional[str], SuperResolver]) -> Dict[Tuple[int, int], Tuple[float, float]]:
    """(c, z) -> (lo, span): the normalisation of each predicted channel's z series (`normalisation`
    with its model's percentiles)."""
    norms = {}
    for c, key in channels:
        p = models[key].meta["normalization"]
        for z in range(img.shape[2]):
            norms[(c, z)] = normalisation(img.data[:, c, z], p["percentile_low"], p["percentile_high"])
    return norms


def predict_blocks(models: Dict[Optional[str], SuperResolver], img: io.Image,
                   channels: Sequence[Tuple[int, Optional[str]]], block: int = PredictConfig.block
                   ) -> Iterator[Tuple[tuple, np.ndarray]]:
    """(unit, HR block) for every block of `img` (`units`), checked and normalised as `predict_files`
    does, in memory (napari's widget): what the caller stops consuming is not predicted."""
    check_image(img)
    norms = norms_of(img, channels, models)
    for unit in units(img.shape, channels, block):
        yield unit, _predict_unit(models[unit[3]], img.data, norms, unit)


def _plan(inputs: List[Path], out_dir: Path, fmt: str, models: Dict[Optional[str], SuperResolver],
          cfg: PredictConfig) -> List[_Job]:
    """Open every scene lazily, choose its channels and name its output; an output that exists
    (without `overwrite`), or two inputs with one output name, stop here, before anything is
    written. Which channels are predicted is said on stderr, a pixel size far from the training
    data's is warned about."""
    jobs: List[_Job] = []
    for path in inputs:
        n = io.count_scenes(path)
        stem = io.image_name(path)
        for scene in range(n):
            img = io.open_image(path, scene=scene).check_grey()
            plan, said = plan_image(img, models, cfg.channels, source=str(path))
            if plan.message and scene == 0:
                print(f"{path.name}: {plan.message}", file=sys.stderr)
            for warning in said if scene == 0 else []:
                warnings.warn(warning, BphoWarning, stacklevel=3)
            target = out_dir / (f"{stem}{FORMATS[fmt]}" if n == 1 else f"{stem}_s{scene}{FORMATS[fmt]}")
            if target.exists() and not cfg.overwrite:
                raise BphoError(f"{target}: already exists; remove it, choose another --out, or pass --overwrite")
            if any(job.target == target for job in jobs):
                raise BphoError(f"{path}: its output {target.name} is also another input's; predict them into "
                                "separate --out folders")
            names = [name or f"C{i}" for name, (i, _key) in zip(plan.names, plan.channels)]
            jobs.append(_Job(img, target, plan.channels, names))
    return jobs


def _prepare(job: _Job, models: Dict[Optional[str], SuperResolver], fmt: str, shard: int) -> None:
    """Check the image (finite, not all zero), take each series' normalisation and lay out its output."""
    img = job.image
    check_image(img)
    job.norms = norms_of(img, job.channels, models)
    t, _c, z, y, x = img.shape
    s = next(iter(models.values())).scale
    job.layout = writers.create(job.target, fmt, (t, len(job.channels), z, y * s, x * s), _hr_pixel_size(img, s),
                                job.names, shard)


def normalisation(series, low: float, high: float) -> Tuple[float, float]:
    """(lo, span) of a (T, Y, X) series, numpy or lazy: its `low` and `high` percentiles, exact up to
    `EXACT_PERCENTILE_PIXELS` pixels, else of the regular subsample the module docstring describes."""
    n_t, h, w = series.shape
    if n_t * h * w <= EXACT_PERCENTILE_PIXELS:
        sample = np.asarray(series)
    else:
        frames = np.unique(np.linspace(0, n_t - 1, min(n_t, SAMPLE_FRAMES)).round().astype(int)).tolist()
        k = math.ceil(math.sqrt(len(frames) * h * w / EXACT_PERCENTILE_PIXELS))
        sample = np.asarray(series[frames, ::k, ::k])
    lo, hi = np.percentile(sample, (low, high))
    return float(lo), float(max(hi - lo, 1e-6))


def _finite_and_nonzero(data) -> Tuple[bool, bool]:
    """Whether every value is finite and any is not zero, in one pass over a lazy image."""
    finite = np.isfinite(data).all() if data.dtype.kind == "f" else True
    if hasattr(data, "compute"):
        import dask

        finite, nonzero = dask.compute(finite, data.any())
        return bool(finite), bool(nonzero)
    return bool(finite), bool(data.any())


def _hr_pixel_size(img: io.Image, scale: int):
    pz, py, px = img.pixel_size
    return (pz, py / scale if py else None, px / scale if px else None)


def _predict_unit(model: SuperResolver, data, norms, unit) -> np.ndarray:
    t, _co, ci, _key, z, box = unit
    lo, span = norms[(ci, z)]
    return model.predict_block(data[:, ci, z], t, box, lo, span)


def _write_unit(layout: writers.Layout, scale: int, unit, hr: np.ndarray) -> None:
    t, co, _ci, _key, z, (y, x, _h, _w) = unit
    writers.write_block(layout, t, co, z, y * scale, x * scale, hr)


def _run_here(models: Dict[Optional[str], SuperResolver], scale: int, block: int, jobs: List[_Job],
              progress: bool) -> None:
    """Every block in this process; the next block is predicted while this one is written."""
    work = [(job, unit) for job in jobs for unit in job.units(block)]
    with tqdm(total=len(work), desc="predict", unit="block", disable=not progress, leave=False) as bar:
        made = ((job, unit, _predict_unit(models[unit[3]], job.image.data, job.norms, unit)) for job, unit in work)
        for job, unit, hr in ahead(made, depth=1):
            assert job.layout is not None
            _write_unit(job.layout, scale, unit, hr)
            bar.update()


# --- Dask: the same blocks on workers -------------------------------------------------------------

@dataclass(frozen=True)
class _Remote:
    """What a worker needs to rebuild the model once: its files' bytes and the inference options."""

    key: str
    meta_json: str
    weights: bytes
    options: dict
    threads: Optional[int]


_WORKER: Dict[str, Any] = {"models": {}, "images": {}}  # on a worker: the models and opened inputs, built once


def _worker_model(remote: _Remote) -> SuperResolver:
    if remote.key not in _WORKER["models"]:
        import json

        import torch
        from safetensors.torch import load as load_weights

        from bpho.inference import build

        if remote.threads:
            torch.set_num_threads(remote.threads)
        options = dict(remote.options)
        if options["device"] in ("auto", "cuda") and torch.cuda.is_available():
            options["device"] = f"cuda:{_worker_index() % torch.cuda.device_count()}"  # one GPU a worker
        _WORKER["models"][remote.key] = build(json.loads(remote.meta_json), load_weights(remote.weights), **options)
    return _WORKER["models"][remote.key]


def _worker_index() -> int:
    from distributed import get_worker

    name = get_worker().name
    return int(name) if str(name).isdigit() else 0


def _remote_unit(remote: _Remote, path: str, scene: int, norms, layout: writers.Layout, unit) -> None:
    """One block on a worker: read, predict, write into the output (inputs and output on a shared disk)."""
    import dask

    model = _worker_model(remote)
    images = _WORKER["images"]
    if (path, scene) not in images:
        images[(path, scene)] = io.open_image(path, scene=scene)
    with dask.config.set(scheduler="synchronous"):  # the reads stay in this task, not on the cluster
        hr = _predict_unit(model, images[(path, scene)].data, norms, unit)
    _write_unit(layout, model.scale, unit, hr)


def _run_dask(address: str, folders: Dict[Optional[str], Path], cfg: PredictConfig, scale: int, jobs: List[_Job],
              progress: bool) -> None:
    """Every block as a task on Dask workers (`address`: ``local:N`` or a scheduler's address)."""
    from distributed import Client, LocalCluster, as_completed

    from bpho.inference import META, WEIGHTS

    cluster = None
    threads = None
    if address.startswith("local:"):
        workers = int(address.split(":", 1)[1])
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                               silence_logs=40)
        threads = max(1, (os.cpu_count() or 1) // workers)
        address = cluster.scheduler_address
    options = {"device": str(cfg.device), "tile": cfg.tile, "overlap": cfg.overlap, "batch": cfg.batch,
               "context": cfg.context, "precision": str(cfg.precision), "ensemble": cfg.ensemble, "block": cfg.block}
    remotes = {}
    for key, folder in folders.items():
        weights = (folder / WEIGHTS).read_bytes()
        digest = hashlib.sha256(weights + repr(sorted(options.items())).encode()).hexdigest()
        remotes[key] = _Remote(digest, (folder / META).read_text(), weights, options, threads)
    try:
        with Client(address) as client:
            scattered = {key: client.scatter(remote, broadcast=True) for key, remote in remotes.items()}
            futures = []
            for job in jobs:
                for unit in job.units(cfg.block):
                    futures.append(client.submit(_remote_unit, scattered[unit[3]], str(job.image.path),
                                                 job.image.scene, job.norms, job.layout, unit, pure=False))
            with tqdm(total=len(futures), desc="predict", unit="block", disable=not progress, leave=False) as bar:
                for future in as_completed(futures):
                    future.result()  # a task's error (a corrupt chunk) is raised here
                    bar.update()
    finally:
        if cluster is not None:
            cluster.close()


# --- previews and helpers -------------------------------------------------------------------------

def _preview(job: _Job, scale: int, side: int = 512) -> None:
    """`<stem>.png`: the first frame of the first predicted channel and plane, LR | prediction, each at
    most `side` px wide (subsampled from the written output; the image holds every pixel)."""
    from bpho.plots import save_grid

    target = job.target
    _t, _c, _z, h, w = job.image.shape
    step = max(1, -(-max(h, w) * scale // side))
    hr = _first_plane(target, step)
    rows, cols = (np.minimum(np.arange(n) * step // scale, m - 1) for n, m in zip(hr.shape, (h, w)))
    lr = np.asarray(job.image.data[0, job.channels[0][0], 0][rows][:, cols])
    panels = []
    for image in (lr, hr):
        lo, hi = np.percentile(image, (1, 99.8))
        panels.append((image - lo) / max(hi - lo, 1e-12))
    base = next(target.name[:-len(sfx)] for sfx in sorted(FORMATS.values(), key=len, reverse=True)
                if target.name.endswith(sfx))
    png = target.with_name(f"{base}.png")
    save_grid(png, [panels], labels=("LR", "bpho prediction"))


def _first_plane(target: Path, step: int) -> np.ndarray:
    """Every `step`-th pixel of the first HR plane of a written output (a pyramid level of OME-Zarr)."""
    if target.name.endswith(".ome.zarr"):
        import zarr

        group = zarr.open_group(str(target), mode="r")
        level = min(int(math.log2(step)), len(list(group.array_keys())) - 1)
        sub = step // 2 ** level
        return np.asarray(zarr.open_array(f"{target}/{level}", mode="r")[0, 0, 0, ::sub, ::sub])
    import tifffile

    with tifffile.TiffFile(target) as tf:
        page = tf.pages[0]
        plane = np.memmap(target, dtype=page.dtype.newbyteorder("<"), mode="r",  # type: ignore[union-attr]
                          offset=page.dataoffsets[0], shape=page.shape)
        return np.array(plane[::step, ::step])


def ahead(items: Iterator, depth: int = 2) -> Iterator:
    """`items` computed in a thread, up to `depth` ahead of the consumer: the next block is
    predicted while this one is written. An error in the thread is raised here."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def work():
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((done, None))
        except BaseException as exc:  # handed to the consumer
            q.put((done, exc))

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while True:
            item, exc = q.get()
            if exc is not None:
                raise exc
            if item is done:
                return
            yield item
    finally:
        stop.set()
        thread.join()
