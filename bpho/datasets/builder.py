"""Build a dataset from a datasource and a recipe: normalise, register, tile, split, manifest.

The builder composes sources.py (which images, their LR: read or degraded), register.py,
tiling.py, qc.py and tracking; dataset.py reads what it writes.

``$BPHO_ROOT/datasets/NAME/`` holds (built in a temporary folder, renamed when complete):

- ``tiles/<size>/<split>_lr.npy``  float32 (N, frames, size/scale, size/scale), memory-mappable
- ``tiles/<size>/<split>_hr.npy``  float32 (N, 1, size, size)
- ``tiles/<size>/<split>_tiles.csv``  where each tile came from: source, scene, t, y, x (HR origin)
- ``images/<source>_lr.npy``, ``images/<source>_hr.npy``  the held-out source images whole:
  raw LR (T, y, x) and raw HR (T, Y, X) moved onto the LR by the registration, float32: the
  validation images (training scores them every epoch and keeps the best epoch; with no
  validation split, the first training image, and the manifest says so) and, with the
  recipe's ``test_fraction``, the test images (never tiled, never seen by training or by any
  choice: what `bpho evaluate --dataset` scores when there are any)
- ``qc/<source>.png``  LR over HR (magenta/green) before and after registration
- ``previews/tiles_<size>.png``  random train tiles, LR | HR
- ``manifest.json``  recipe (name, file sha256, parameters), datasource (name, digest),
  per source image the split (train, valid or test), normalisation values, shift and score,
  tile counts and tile file digests, which images are kept whole for validation and for
  testing (``validation_images``, ``test_images``; the latter only with a test split), bpho
  version, git commit, and the dataset digest over all of it (without
  the dataset's name, creation time, git commit and where the recipe file lies: the same inputs
  give the same digest on every machine; the recipe's content counts through its sha256);
  ``input``, what a model trained on the dataset sees (`_input_record`: channel index and
  name, LR pixel size), is also outside the digest: it is read from the files' metadata, which
  the datasource digest covers already, and datasets built before it existed keep their digests.
"""

from __future__ import annotations

import ctypes
import datetime as _dt
import json
import multiprocessing
import os
import signal
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, Generator, Iterable, List, Optional, Tuple

import numpy as np
from tqdm import tqdm

import bpho
from bpho import datasources, io, paths, tracking
from bpho.datasets import recipe as recipes
from bpho.datasets.dataset import MANIFEST, SPLITS, Dataset
from bpho.datasets.dataset import open as open_dataset
from bpho.datasets.qc import save_qc, save_tile_preview
from bpho.datasets.recipe import Recipe
from bpho.datasets.register import (apply, apply_registration, ncc_limit, normalize, percentile_range, register_pair,
                                   residual)
from bpho.datasets.sources import (LRProvider, ReadLR, Source, check_shapes, pixel_sizes, plane_stack,
                                   split_sources)
from bpho.datasets.tiling import TileWriter, cut_tiles, load_tiles
from bpho.errors import BphoError, BphoWarning, ConflictError, FileFormatError

_DIGEST_EXCLUDES = ("name", "created", "git_commit", "digest", "input")


def make(recipe_name: str, datasource: Optional[str] = None, settings: Iterable[str] = (),
         name: Optional[str] = None, force: bool = False, progress: bool = True, track: bool = True,
         lr_provider: LRProvider = ReadLR(), workers: Optional[int] = None, pngs: bool = True) -> Dataset:
    """Build a dataset from a recipe and log the build to MLflow.

    Parameters
    ----------
    recipe_name : str
        A recipe in bpho/recipes/ or a .py file.
    datasource : str, optional
        Instead of the recipe's datasource.
    settings : iterable of str
        ``KEY=VALUE`` recipe overrides (``--set``).
    name : str, optional
        The dataset's name (default: the recipe's); an existing one is replaced only with `force`.
    lr_provider : ReadLR or DegradedLR
        Where each source's LR comes from: its pair's LR file, or a degradation of its HR
        (then HR-only datasources work too).
    workers : int, optional
        Processes that read, normalise, register and move images (default: one per CPU core).
        The tiles are then cut in source order from one seeded generator, so the dataset and
        its digest do not depend on the number of workers.
    pngs : bool
        False skips the QC and preview figures (they are not part of the digest).

    Returns
    -------
    Dataset
        The dataset, built in a temporary folder and renamed when complete.
    """
    loaded = recipes.load(recipe_name)
    r = recipes.with_overrides(loaded.recipe, settings)
    if datasource:
        r = replace(r, datasource=datasource)
    r = r.validated()
    out_name = name or loaded.name
    dest = paths.named_dir("datasets", out_name)
    if dest.exists() and not force:
        raise ConflictError(f"dataset {out_name!r} already exists; choose another --name, or --force to rebuild it")
    source = datasources.open(r.datasource, verify=True, progress=progress)
    kinds = lr_provider.kinds(r)
    if source.kind not in kinds:
        raise BphoError(f"recipe {loaded.name} reads {' or '.join(kinds)} datasources, but {source.name!r} is of kind "
                        f"{source.kind}; pass a matching --datasource")
    if lr_provider.record is not None:
        r = replace(r, register=False)  # made from the HR: registered by construction
    sources = lr_provider.sources(source)
    if not sources:
        raise BphoError(f"datasource {source.name!r} has no images to build a dataset from")
    split = split_sources(sorted({src.pair.stem for src in sources}), r.valid_fraction, r.seed, r.test_fraction)
    # whole images to validate on: every held-out one, or with none held out the first usable training image
    held_split = "valid" if "valid" in split.values() else "train"
    pixel = pixel_sizes(source)
    rng = np.random.default_rng(r.seed)
    records: List[dict] = []
    inputs: List[dict] = []
    warned: List[str] = []
    kept: List[bool] = []
    workers = max(1, min(workers or os.cpu_count() or 1, len(sources)))
    if held_split == "train":
        workers = 1  # which image is kept whole (the first one included) is known only in order
    with paths.atomic_dir(dest, replace=force) as tmp:
        writers = {(size, s): TileWriter(tmp / "tiles" / str(size), s) for size in r.tile_sizes for s in SPLITS}
        jobs = [_Job(src, split[src.pair.stem], split[src.pair.stem] in (held_split, "test"), pixel.get(src.pair.hr))
                for src in sources]
        prepared = _prepare_all(_Work(jobs, r, tmp, lr_provider, pngs, kept), workers)
        try:  # workers stop before the temporary folder is removed on an error
            for job, (record, lr_stack, hr_stack, margin, seen) in tqdm(zip(jobs, prepared), total=len(jobs),
                                                                        desc=f"dataset {out_name}", unit="image",
                                                                        disable=not progress):
                src = job.src
                kept.append("image" in record and job.split != "test")  # whole images to validate on
                # test images are never tiled: nothing trains or chooses on them
                tiled = record["included"] and job.split != "test"
                tiles = cut_tiles(src, r, rng, lr_stack, hr_stack, margin) if tiled else {}
                records.append(record)
                inputs.append(seen)
                if not record["included"]:
                    lr_name = src.pair.lr.name if src.pair.lr else "synthetic"
                    message = f"{lr_name} / {src.pair.hr.name} ({src.key}): excluded, {record['reason']}"
                    warnings.warn(message, BphoWarning, stacklevel=2)
                    warned.append(message)
                for size, (lr_tiles, hr_tiles, rows) in tiles.items():
                    writers[(size, split[src.pair.stem])].add(lr_tiles, hr_tiles, rows)
                    record["tiles"][str(size)] = len(lr_tiles)
        finally:
            prepared.close()
        left_out = [rec for rec in records if not rec["included"]]
        if not any(rec["included"] and rec["split"] == "train" for rec in records) and left_out:
            raise BphoError(f"dataset {out_name}: every training pair was left out ({left_out[0]['reason']}"
                            f"{'; ...' if len(left_out) > 1 else ''}); see the warnings and qc/, e.g. register with "
                            "--set transform=similarity (or flow) if the sample moved between acquisitions")
        tile_info = {}
        for size in r.tile_sizes:
            shapes: Dict[str, Tuple[int, ...]] = {"lr": (r.frames, size // r.scale, size // r.scale),
                                                  "hr": (1, size, size)}
            info: dict = {"lr_shape": list(shapes["lr"]), "hr_shape": list(shapes["hr"]), "files": {}}
            for s in SPLITS:
                info[s] = writers[(size, s)].count
                info["files"].update(writers[(size, s)].finish(shapes))
            tile_info[str(size)] = info
            if pngs:
                train = load_tiles(tmp, size, "train")
                save_tile_preview(tmp / "previews" / f"tiles_{size}.png", *train, size, np.random.default_rng(r.seed))
        if not any(kept):
            raise BphoError(f"dataset {out_name}: every {held_split} image was excluded, so there is no whole image "
                            "to validate on; check the pairs (see the warnings) or change seed / valid_fraction")
        tested = [rec["source"] for rec in records if "image" in rec and rec["split"] == "test"]
        if "test" in split.values() and not tested:
            raise BphoError(f"dataset {out_name}: every test image was excluded, so there is no whole image to test "
                            "on; check the pairs (see the warnings) or change seed / test_fraction")
        if not any(info["train"] for info in tile_info.values()):
            raise BphoError(f"dataset {out_name}: no tile passed the content threshold "
                            f"({r.content_threshold}); lower content_threshold or check the images")
        recipe = {"name": loaded.name, "sha256": loaded.sha256}
        manifest = {
            "name": out_name,
            "recipe": {**recipe, "file": str(loaded.path)},
            "parameters": r.params(),
            "datasource": {"name": source.name, "kind": source.kind, "digest": source.digest},
            **({"degradation": lr_provider.record} if lr_provider.record is not None else {}),
            "sources": records,
            "input": _input_record(r.channel, inputs),
            "tiles": tile_info,
            "validation_images": {"split": held_split, "sources": [rec["source"] for rec in records
                                                                   if "image" in rec and rec["split"] != "test"]},
            **({"test_images": {"split": "test", "sources": tested}} if r.test_fraction else {}),
            "warnings": warned,
            "bpho_version": bpho.__version__,
            "git_commit": tracking.git_commit(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        manifest["digest"] = datasources.digest_json({**manifest, "recipe": recipe}, exclude=_DIGEST_EXCLUDES)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    dataset = open_dataset(out_name)
    if track:
        _track(dataset, source)
    return dataset


@dataclass(frozen=True)
class _Job:
    src: Source
    split: str
    held: bool  # in a split whose images are kept whole (validation's, or test)
    pixel_um: Optional[float]


@dataclass(frozen=True)
class _Work:
    """One build's jobs and what `_prepare` needs for each; `kept` is the building process's list
    of the images kept whole so far (read only where the build runs in one process)."""

    jobs: List[_Job]
    r: Recipe
    tmp: Path
    lr_provider: LRProvider
    pngs: bool
    kept: List[bool]

    def prepare(self, i: int) -> tuple:
        """`_prepare` of job `i`, and `_input_seen` of its source (one more tuple element)."""
        job = self.jobs[i]
        # with no held-out split, the first training image that is included is kept (workers == 1 there)
        keep = job.held and (job.split in ("valid", "test") or not any(self.kept))
        return (*_prepare(job.src, self.r, self.tmp, job.split, self.lr_provider, keep_image=keep,
                          pixel_um=job.pixel_um, pngs=self.pngs), _input_seen(job.src, self.r, self.lr_provider))


def _prepare_all(work: _Work, workers: int) -> Generator[tuple, None, None]:
    """`_prepare` of every job, in job order: in this process, or in `workers` forked ones.

    A forked worker gets `work` through the pool's initializer, whose arguments a fork hands
    over without pickling them (the LR provider need not pickle); each task then pickles
    only a job index."""
    if workers == 1:
        return (work.prepare(i) for i in range(len(work.jobs)))
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"),
                               initializer=_start_worker, initargs=(os.getpid(), work))

    def ordered() -> Generator[tuple, None, None]:
        try:
            yield from pool.map(_prepare_in_worker, range(len(work.jobs)))
        finally:
            pool.shutdown(cancel_futures=True)
    return ordered()


_worker_work: Optional[_Work] = None  # set in a forked worker only, once, by `_start_worker`


def _start_worker(parent: int, work: _Work) -> None:
    """A worker keeps the build's `work` and ends when the build that forked it is killed
    (SIGKILL gives the build no chance to stop its pool: orphaned workers slept on for ever).
    Linux: the kernel's parent-death signal."""
    global _worker_work
    _worker_work = work
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: workers still end with the pool when the build ends
        return
    if os.getppid() != parent:  # the build died before the line above
        os._exit(1)


def _prepare_in_worker(i: int) -> tuple:
    assert _worker_work is not None, "called outside a worker started by _start_worker"
    return _worker_work.prepare(i)


def _prepare(src: Source, r: Recipe, tmp: Path, split: str, lr_provider: LRProvider = ReadLR(),
             keep_image: bool = False, pixel_um: Optional[float] = None, pngs: bool = True):
    """Read, normalise and register one source image (QC figure), move it as the recipe aligns;
    returns its manifest record, the normalised LR and HR stacks and the margin (None, None, 0
    if excluded). `lr_provider` gives the LR (read, or made from the HR); with `keep_image`, the
    whole raw pair (HR moved onto the LR) is saved under ``images/``."""
    lr_raw, hr_raw = lr_provider(src, plane_stack(src.pair.hr, src.scene, r.channel, r.z), r, pixel_um)
    check_shapes(src, lr_raw, hr_raw, r)
    ranges = {}
    for side, stack in (("lr", lr_raw), ("hr", hr_raw)):
        lo, hi = percentile_range(stack, r.percentile_low, r.percentile_high)
        if hi <= lo:
            path = src.pair.lr if side == "lr" else src.pair.hr
            raise FileFormatError(f"{path}: the image is flat (percentiles {r.percentile_low}-{r.percentile_high} "
                                  f"are both {lo:g}): empty or saturated")
        ranges[side] = [lo, hi]
    lr_stack, hr_stack = normalize(lr_raw, *ranges["lr"]), normalize(hr_raw, *ranges["hr"])
    record: dict = {"source": src.key, "lr": src.pair.lr.name if src.pair.lr else "synthetic", "hr": src.pair.hr.name,
              "scene": src.scene,
              "split": split, "normalization": ranges, "included": True, "tiles": {}}
    reg, margin = None, 0
    if r.register:
        lr_mean, hr_mean = lr_stack.mean(axis=0), hr_stack.mean(axis=0)
        try:
            reg = register_pair(lr_mean, hr_mean, r.scale, r.transform)
        except BphoError as exc:
            record.update(included=False, reason=str(exc))
            return record, None, None, 0
        record.update(transform=reg.transform, shift_hr_px=list(reg.shift), score=reg.score,
                      score_before=reg.score_before)
        if reg.transform != "translation":
            record.update(rotation_deg=reg.rotation_deg, zoom=reg.zoom, flow_reach_hr_px=reg.reach)
        qc = tmp / "qc" / f"{_file_name(src.key)}.png"
        # the HR moved onto the LR: the whole stack when it is what the dataset keeps (warped once)
        moved = apply_registration(hr_stack, reg) if r.align == "hr" else None
        hr_after = moved.mean(axis=0) if moved is not None else apply_registration(hr_mean[None], reg)[0]
        left = residual(lr_mean, hr_after, r.scale)
        limit = ncc_limit(lr_mean, hr_mean, r.scale)
        record.update(residual=left, score_limit=limit)
        excluded = None
        if reg.score < r.min_registration_score * limit:
            excluded = (f"registration score {reg.score:.3f} < min_registration_score {r.min_registration_score} x "
                        f"{limit:.3f}, the score its noise allows an aligned pair")
        elif r.max_residual_hr_px and (left["median_hr_px"] or 0) > r.max_residual_hr_px:
            excluded = (f"residual misregistration {left['median_hr_px']:.2f} HR px (median over {left['tiles']} "
                        f"tiles) > max_residual_hr_px {r.max_residual_hr_px}")
        if pngs:
            save_qc(qc, src.key, lr_mean, hr_mean, hr_after, r.scale, reg, left)
        if excluded:
            record.update(included=False, reason=excluded)
            return record, None, None, 0
        margin = reg.margin
        if moved is not None:
            hr_stack = moved
        else:
            lr_stack = apply(lr_stack, (reg.shift[0] / r.scale, reg.shift[1] / r.scale))
    if keep_image:
        hr_moved = apply_registration(hr_raw, reg) if reg is not None else hr_raw
        record["image"] = {"margin": margin, "hr_pixel_um": pixel_um, "files": {}}
        for side, arr in (("lr", lr_raw), ("hr", hr_moved)):
            rel = f"images/{_file_name(src.key)}_{side}.npy"
            (tmp / "images").mkdir(exist_ok=True)
            np.save(tmp / rel, np.ascontiguousarray(arr, dtype=np.float32))
            record["image"]["files"][side] = {"path": rel, "sha256": datasources.sha256_file(tmp / rel)}
    return record, lr_stack, hr_stack, margin


def _input_seen(src: Source, r: Recipe, lr_provider: LRProvider) -> dict:
    """The recipe's channel's name in `src`'s LR file (for a synthesized LR, its HR file) and
    the LR pixel size (y, x) in um: the LR file's own, or the HR's times the scale (None where
    unknown)."""
    synthesized = lr_provider.record is not None
    path = src.pair.hr if synthesized or src.pair.lr is None else src.pair.lr
    img = io.read(path, scene=src.scene)
    factor = r.scale if synthesized else 1
    size = [None if v is None else float(f"{v * factor:.10g}") for v in img.pixel_size[1:]]
    return {"channel_name": img.channel_name(r.channel), "pixel_size_um": size if any(size) else None}


def _input_record(channel: int, seen: List[dict]) -> dict:
    """What a model trained on the dataset sees, for the manifest's ``input`` (and the model's meta).

    ``channel`` (the recipe's index), ``channel_name`` (the name the files give it; None when
    they name none) and ``pixel_size_um`` (the LR pixel size, [y, x] in um; None when unknown).
    Files that disagree are recorded, not refused: the name or the size is then None, and
    ``channel_names`` / ``pixel_sizes_um`` list every distinct value met, in source order."""
    names = list(dict.fromkeys(s["channel_name"] for s in seen))
    sizes = [list(v) if v else None for v in dict.fromkeys(tuple(s["pixel_size_um"] or ()) for s in seen)]
    return {"channel": channel, "channel_name": names[0] if len(names) == 1 else None,
            "pixel_size_um": sizes[0] if len(sizes) == 1 else None,
            **({"channel_names": names} if len(names) > 1 else {}),
            **({"pixel_sizes_um": sizes} if len(sizes) > 1 else {})}


def _file_name(key: str) -> str:
    """A source key as a file name (keys of files in sub-folders hold '/')."""
    return key.replace("/", "__")


def _track(dataset: Dataset, source: datasources.Datasource) -> None:
    m = dataset.manifest
    tags = {"bpho.dataset": dataset.name, "bpho.dataset_digest": dataset.digest, "bpho.recipe": m["recipe"]["name"],
            "bpho.recipe_sha256": m["recipe"]["sha256"], "bpho.datasource": source.name,
            "bpho.datasource_digest": source.digest}
    with tracking.run(tracking.DATASETS_EXPERIMENT, run_name=dataset.name, tags=tags):
        # prefixed: `mlflow run` has already logged its own -P parameters (dataset=RECIPE, ...) unprefixed
        tracking.log_params({**{f"recipe.{k}": v for k, v in m["parameters"].items()}, "dataset.name": dataset.name})
        if "degradation" in m:
            deg = m["degradation"]
            mlflow_tags = {"bpho.degradation": deg["name"]}
            if deg.get("fitted_on"):
                mlflow_tags["bpho.fitted_on"] = deg["fitted_on"]["datasource"]
            tracking.set_tags(mlflow_tags)
            tracking.log_params({f"degradation.{k}": v for k, v in {"name": deg["name"], **deg["parameters"]}.items()})
        counts = {f"tiles_{size}_{s}": info[s] for size, info in m["tiles"].items() for s in SPLITS}
        scores = [rec["score"] for rec in m["sources"] if "score" in rec]
        tracking.log_metrics({**counts, "pairs_excluded": sum(not rec["included"] for rec in m["sources"]),
                              **({"registration_score_min": min(scores)} if scores else {})})
        tracking.log_artifacts([dataset.path / MANIFEST])
        tracking.log_previews(sorted((dataset.path / "qc").glob("*.png")), "qc")
        tracking.log_previews(sorted((dataset.path / "previews").glob("*.png")), "previews")
        tracking.log_dataset_input(source.name, source.digest, source.path, context="source",
                                   tags={"kind": source.kind})
        tracking.log_dataset_input(dataset.name, dataset.digest, dataset.path, context="built")
