"""Build a dataset from a datasource and a recipe: normalise, register, tile, split, manifest.

``$BPHO_ROOT/datasets/NAME/`` holds (built in a temporary folder, renamed when complete):

- ``tiles/<size>/<split>_lr.npy``  float32 (N, frames, size/scale, size/scale), memory-mappable
- ``tiles/<size>/<split>_hr.npy``  float32 (N, 1, size, size)
- ``tiles/<size>/<split>_tiles.csv``  where each tile came from: source, scene, t, y, x (HR origin)
- ``images/<source>_lr.npy``, ``images/<source>_hr.npy``  the held-out source images whole:
  raw LR (T, y, x) and raw HR (T, Y, X) moved onto the LR by the registration, float32 (the
  images training validates on and `bpho evaluate --dataset` scores; with no validation
  split, the first training image, and the manifest says so)
- ``qc/<source>.png``  LR over HR (magenta/green) before and after registration
- ``previews/tiles_<size>.png``  random train tiles, LR | HR
- ``manifest.json``  recipe (name, file sha256, parameters), datasource (name, digest),
  per source image the split, normalisation values, shift and score, tile counts and tile
  file digests, bpho version, git commit, and the dataset digest over all of it (without
  the dataset's name, creation time and git commit: the same inputs give the same digest).
"""

from __future__ import annotations

import builtins
import ctypes
import csv
import datetime as _dt
import json
import multiprocessing
import os
import shutil
import signal
import warnings
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np
from tqdm import tqdm

import bpho
from bpho import datasources, io, paths, tracking
from bpho.datasets import recipe as recipes
from bpho.datasets.recipe import Recipe
from bpho.datasets.register import (Registration, apply, apply_registration, downsample, normalize,
                                    percentile_range, register_pair, residual)
from bpho.errors import BphoError, BphoWarning, ConflictError, FileFormatError, NotFoundError
from bpho.plots import save_grid


MANIFEST = "manifest.json"
SPLITS = ("train", "valid")
CONTENT_LEVEL = 0.2  # a pixel counts as content above this normalised HR intensity
_DIGEST_EXCLUDES = ("name", "created", "git_commit", "digest")


# --- reading one source image ---------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """One image of a pair: a scene of a file pair (multi-scene files give several)."""

    key: str
    pair: datasources.Pair
    scene: int


def plane_stack(path: Path, scene: int, r: Recipe) -> np.ndarray:
    """(T, Y, X) float32 of the recipe's channel and z plane (or z maximum projection)."""
    img = io.read(path, scene=scene).check_grey()
    t, c, z, y, x = img.shape
    if not 0 <= r.channel < c:
        raise FileFormatError(f"{path}: channel {r.channel} does not exist (the file has {c}); set channel=0..{c - 1}")
    if r.z != "max" and not 0 <= r.z < z:
        raise FileFormatError(f"{path}: z plane {r.z} does not exist (the file has {z}); set z=0..{z - 1} or z=max")
    data = img.data[:, r.channel]
    data = data.max(axis=1) if r.z == "max" else data[:, r.z]
    stack = data.astype(np.float32)
    if not np.isfinite(stack).all():
        raise FileFormatError(f"{path}: the image holds NaN or infinite values; fix or re-export it")
    return stack


def _check_shapes(src: Source, lr: np.ndarray, hr: np.ndarray, r: Recipe) -> None:
    lr_f, hr_f = src.pair.lr or src.pair.hr, src.pair.hr
    if lr.shape[0] != hr.shape[0]:
        raise BphoError(f"{lr_f}: {lr.shape[0]} frames, but {hr_f} has {hr.shape[0]}; pairs need the same frames")
    if (hr.shape[1], hr.shape[2]) != (lr.shape[1] * r.scale, lr.shape[2] * r.scale):
        raise BphoError(
            f"{lr_f}: LR is {lr.shape[1]}x{lr.shape[2]} and HR ({hr_f.name}) {hr.shape[1]}x{hr.shape[2]}, "
            f"which does not match scale={r.scale}; set scale to the pixel size ratio or crop the files"
        )
    if lr.shape[0] < r.frames:
        raise BphoError(f"{lr_f}: {lr.shape[0]} frames is shorter than the frame window frames={r.frames}")
    if min(hr.shape[1:]) < max(r.tile_sizes):
        raise BphoError(
            f"{hr_f}: tile size {max(r.tile_sizes)} is larger than the image ({hr.shape[1]}x{hr.shape[2]}); "
            "use smaller tile_sizes"
        )


# --- tiles ------------------------------------------------------------------------------


def content_table(content: np.ndarray) -> np.ndarray:
    """Summed-area table of a boolean (Y, X) content image, padded with a zero row and column."""
    return np.pad(content.cumsum(0, dtype=np.int32).cumsum(1, dtype=np.int32), ((1, 0), (1, 0)))


def tile_positions(table: np.ndarray, size: int, scale: int, margin: int, wanted: int, threshold: float,
                   rng: np.random.Generator) -> np.ndarray:
    """Up to `wanted` HR tile origins (y, x), multiples of `scale`, whose content fraction
    (the mean of the content image over the tile, from its summed-area `table`) is at
    least `threshold`. Every grid position is scored at once; the choice among the
    qualifying ones is random (seeded) and without repetition.
    """
    h, w = table.shape[0] - 1, table.shape[1] - 1
    first = -(-margin // scale) * scale
    ys = np.arange(first, h - size - margin + 1, scale)
    xs = np.arange(first, w - size - margin + 1, scale)
    if ys.size == 0 or xs.size == 0:
        return np.zeros((0, 2), dtype=int)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    total = table[yy + size, xx + size] - table[yy, xx + size] - table[yy + size, xx] + table[yy, xx]
    ok = np.flatnonzero(total.ravel() / (size * size) >= threshold)
    chosen = np.sort(rng.choice(ok, size=min(wanted, ok.size), replace=False)) if ok.size else ok
    return np.stack([yy.ravel()[chosen], xx.ravel()[chosen]], axis=1)


class TileWriter:
    """Appends tiles of one size and split to raw files; `finish` makes the .npy arrays.

    Memory stays bounded by one image's tiles however large the dataset grows.
    """

    def __init__(self, folder: Path, split: str):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.split = folder, split
        self.count = 0
        self._raw = {side: builtins.open(folder / f".{split}_{side}.raw", "wb") for side in ("lr", "hr")}
        self.rows: List[Tuple] = []

    def add(self, lr: np.ndarray, hr: np.ndarray, rows: List[Tuple]) -> None:
        for side, arr in (("lr", lr), ("hr", hr)):
            self._raw[side].write(np.ascontiguousarray(arr, dtype=np.float32).tobytes())
        self.count += len(lr)
        self.rows.extend(rows)

    def finish(self, shapes: Dict[str, Tuple[int, ...]]) -> Dict[str, str]:
        """Write the .npy arrays (tile shapes per side, without N) and the CSV; return their sha256."""
        digests = {}
        for side, fh in self._raw.items():
            fh.close()
            raw = fh.name
            npy = self.folder / f"{self.split}_{side}.npy"
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                      "shape": (self.count, *shapes[side])}
            with builtins.open(npy, "wb") as out, builtins.open(raw, "rb") as src:
                np.lib.format.write_array_header_1_0(out, header)
                shutil.copyfileobj(src, out, length=1 << 22)
            Path(raw).unlink()
            digests[f"{self.split}_{side}.npy"] = datasources.sha256_file(npy)
        with builtins.open(self.folder / f"{self.split}_tiles.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["source", "scene", "t", "y", "x"])
            writer.writerows(self.rows)
        digests[f"{self.split}_tiles.csv"] = datasources.sha256_file(self.folder / f"{self.split}_tiles.csv")
        return digests


# --- pictures people look at -----------------------------------------------------------


def _overlay(lr_up: np.ndarray, hr: np.ndarray) -> np.ndarray:
    """Magenta LR over green HR: grey where they agree, coloured fringes where they do not."""
    a, b = np.clip(lr_up, 0, 1), np.clip(hr, 0, 1)
    return np.stack([a, b, a], axis=-1)


def save_qc(png: Path, key: str, lr: np.ndarray, hr_before: np.ndarray, hr_after: np.ndarray, scale: int,
            reg: Registration, left: Optional[dict] = None) -> None:
    """LR (magenta) over HR (green), before and after registration, at most ~768 px wide.

    Shown on the LR grid times k (LR pixels repeated, HR averaged), so the QC costs a
    fraction of the build even for 2048 px images.
    """
    # k divides the scale, so the HR averaged over scale/k pixels matches the LR repeated k times
    k = max(d for d in range(1, scale + 1) if scale % d == 0 and d <= max(1, 768 // max(lr.shape)))
    lr_view = np.repeat(np.repeat(lr, k, axis=0), k, axis=1)
    views = [downsample(h, scale // k) if scale // k > 1 else h for h in (hr_before, hr_after)]
    png.parent.mkdir(parents=True, exist_ok=True)
    save_grid(png, [[_overlay(lr_view, v) for v in views]], labels=("before", "after registration"),
              title=f"{key}: LR (magenta) on HR (green); {_described(reg)}, NCC {reg.score_before:.3f} -> "
                    f"{reg.score:.3f}" + (f"; residual {left['median_hr_px']:.2f} (p90 {left['p90_hr_px']:.2f}) HR px"
                                          if left and left.get("median_hr_px") is not None else ""))


def _described(reg: Registration) -> str:
    text = f"shift dy={reg.shift[0]:+.2f} dx={reg.shift[1]:+.2f} HR px"
    if reg.transform != "translation":
        text += f", rotation {reg.rotation_deg:+.2f} deg, zoom {reg.zoom:.4f}"
    if reg.flow is not None:
        text += f", local flow up to {reg.reach:.1f} HR px"
    return text


def save_preview(png: Path, lr: np.ndarray, hr: np.ndarray, size: int, rng: np.random.Generator, n: int = 6) -> None:
    """`n` random tiles, one per row: LR (centre frame, pixels repeated) | HR, both from 0 to 1."""
    pick = rng.choice(len(lr), size=min(n, len(lr)), replace=False) if len(lr) else []
    png.parent.mkdir(parents=True, exist_ok=True)
    if not len(pick):
        return
    scale = size // lr.shape[-1]
    rows = [[np.kron(lr[i, lr.shape[1] // 2], np.ones((scale, scale))), hr[i, 0]] for i in pick]
    save_grid(png, rows, labels=(f"LR {lr.shape[-1]} px", f"HR {size} px"))


# --- the build --------------------------------------------------------------------------


def split_sources(stems: List[str], valid_fraction: float, seed: int) -> Dict[str, str]:
    """Assign whole source files to train or valid (seeded); at least one of each when possible."""
    order = sorted(stems)
    np.random.default_rng(seed).shuffle(order)
    n_valid = int(round(valid_fraction * len(order)))
    if valid_fraction > 0 and len(order) >= 2:
        n_valid = min(max(n_valid, 1), len(order) - 1)
    return {stem: ("valid" if i < n_valid else "train") for i, stem in enumerate(order)}


@dataclass(frozen=True)
class Synthesis:
    """Make the LR from the HR instead of reading it (synthesize_lowres): `lowres(hr, hr_pixel_um, rng)`
    maps a raw (T, Y, X) HR stack to a raw (T, Y/scale, X/scale) LR stack; `record` (the
    degradation's name, parameters and what it was fitted on) goes into the manifest."""

    record: dict
    lowres: Callable[[np.ndarray, Optional[float], np.random.Generator], np.ndarray]


def _hr_sources(ds: datasources.Datasource) -> List[Source]:
    """Every HR image of a datasource: its files (kind hr) or the HR side of its pairs."""
    if ds.pairs:
        hrs = [(p.stem, p.hr) for p in ds.pairs]
    else:
        hrs = [(str(Path(f["path"]).with_suffix("")), ds.path / f["path"]) for f in ds.manifest["files"]]
    out = []
    for stem, path in hrs:
        n = io.count_scenes(path)
        pair = datasources.Pair(stem, None, path)
        out += [Source(stem if n == 1 else f"{stem}#s{s}", pair, s) for s in range(n)]
    return out


def _sources(ds: datasources.Datasource) -> List[Source]:
    out = []
    for pair in ds.pairs:
        n_lr, n_hr = io.count_scenes(pair.lr), io.count_scenes(pair.hr)
        if n_lr != n_hr:
            raise BphoError(f"{pair.lr}: {n_lr} scenes, but {pair.hr} has {n_hr}; pairs need the same scenes")
        out += [Source(pair.stem if n_lr == 1 else f"{pair.stem}#s{s}", pair, s) for s in range(n_lr)]
    return out


def make(recipe_name: str, datasource: Optional[str] = None, settings: Iterable[str] = (),
         name: Optional[str] = None, force: bool = False, progress: bool = True, track: bool = True,
         synthesis: Optional[Synthesis] = None, workers: Optional[int] = None, pngs: bool = True) -> "Dataset":
    """Build dataset `name` (default: the recipe's name) and log the build to MLflow; with
    `synthesis`, from the datasource's HR images and LR made from them.

    Images are read, normalised, registered and moved by `workers` processes (default: one
    per CPU core); the tiles are then cut in source order from one seeded generator, so the
    dataset and its digest do not depend on the number of workers. `pngs` False skips the
    QC and preview figures (they are not part of the digest)."""
    loaded = recipes.load(recipe_name)
    r = recipes.with_overrides(loaded.recipe, settings)
    if datasource:
        r = replace(r, datasource=datasource)
    r = r.validated()
    out_name = name or loaded.name
    dest = paths.named_dir("datasets", out_name)
    if dest.exists() and not force:
        raise ConflictError(f"dataset {out_name!r} already exists; choose another --name, or --force to rebuild it")
    ds = datasources.open(r.datasource, verify=True, progress=progress)
    kinds = (r.kind, "hr") if synthesis else (r.kind,)
    if ds.kind not in kinds:
        raise BphoError(f"recipe {loaded.name} reads {' or '.join(kinds)} datasources, but {ds.name!r} is of kind "
                        f"{ds.kind}; pass a matching --datasource")
    if synthesis:
        r = replace(r, register=False)  # made from the HR: registered by construction
        sources = _hr_sources(ds)
    elif not ds.pairs:
        raise BphoError(f"datasource {ds.name!r} has no LR/HR pairs to build a dataset from")
    else:
        sources = _sources(ds)
    if not sources:
        raise BphoError(f"datasource {ds.name!r} has no images to build a dataset from")
    split = split_sources(sorted({src.pair.stem for src in sources}), r.valid_fraction, r.seed)
    # whole images to validate on: every held-out one, or with none held out the first usable training image
    held_split = "valid" if "valid" in split.values() else "train"
    pixel = {ds.path / f["path"]: (f.get("pixel_size_um") or [None] * 3)[-1] for f in ds.manifest["files"]}
    rng = np.random.default_rng(r.seed)
    records, warned, kept = [], [], []
    workers = max(1, min(workers or os.cpu_count() or 1, len(sources)))
    if held_split == "train":
        workers = 1  # which image is kept whole (the first one included) is known only in order
    with paths.atomic_dir(dest, replace=force) as tmp:
        writers = {(size, s): TileWriter(tmp / "tiles" / str(size), s) for size in r.tile_sizes for s in SPLITS}
        jobs = [_Job(src, split[src.pair.stem], split[src.pair.stem] == held_split, pixel.get(src.pair.hr))
                for src in sources]
        prepared = _prepare_all(jobs, r, tmp, synthesis, workers, pngs, kept)
        try:  # workers stop before the temporary folder is removed on an error
            for job, (record, lr, hr, margin) in tqdm(zip(jobs, prepared), total=len(jobs), desc=f"dataset {out_name}",
                                                      unit="image", disable=not progress):
                src = job.src
                kept.append("image" in record)
                tiles = _cut(src, r, rng, lr, hr, margin) if record["included"] else {}
                records.append(record)
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
            _WORK.clear()
        left_out = [rec for rec in records if not rec["included"]]
        if not any(rec["included"] and rec["split"] == "train" for rec in records) and left_out:
            raise BphoError(f"dataset {out_name}: every training pair was left out ({left_out[0]['reason']}"
                            f"{'; ...' if len(left_out) > 1 else ''}); see the warnings and qc/, e.g. register with "
                            "--set transform=similarity (or flow) if the sample moved between acquisitions")
        tile_info = {}
        for size in r.tile_sizes:
            shapes = {"lr": (r.frames, size // r.scale, size // r.scale), "hr": (1, size, size)}
            info = {"lr_shape": list(shapes["lr"]), "hr_shape": list(shapes["hr"]), "files": {}}
            for s in SPLITS:
                info[s] = writers[(size, s)].count
                info["files"].update(writers[(size, s)].finish(shapes))
            tile_info[str(size)] = info
            if pngs:
                train = load_tiles(tmp, size, "train")
                save_preview(tmp / "previews" / f"tiles_{size}.png", *train, size, np.random.default_rng(r.seed))
        if not any(kept):
            raise BphoError(f"dataset {out_name}: every {held_split} image was excluded, so there is no whole image "
                            "to validate on; check the pairs (see the warnings) or change seed / valid_fraction")
        if not any(info["train"] for info in tile_info.values()):
            raise BphoError(f"dataset {out_name}: no tile passed the content threshold "
                            f"({r.content_threshold}); lower content_threshold or check the images")
        manifest = {
            "name": out_name,
            "recipe": {"name": loaded.name, "file": str(loaded.path), "sha256": loaded.sha256},
            "parameters": r.params(),
            "datasource": {"name": ds.name, "kind": ds.kind, "digest": ds.digest},
            **({"degradation": synthesis.record} if synthesis else {}),
            "sources": records,
            "tiles": tile_info,
            "validation_images": {"split": held_split,
                                  "sources": [rec["source"] for rec in records if "image" in rec]},
            "warnings": warned,
            "bpho_version": bpho.__version__,
            "git_commit": tracking.git_commit(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        manifest["digest"] = datasources.digest_json(manifest, exclude=_DIGEST_EXCLUDES)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    dataset = open(out_name)
    if track:
        _track(dataset, ds)
    return dataset


@dataclass(frozen=True)
class _Job:
    src: Source
    split: str
    held: bool  # in the split whose images are kept whole
    pixel_um: Optional[float]


_WORK: dict = {}  # what forked workers inherit (the synthesis callable need not pickle)


def _prepare_all(jobs: List[_Job], r: Recipe, tmp: Path, synthesis: Optional[Synthesis], workers: int, pngs: bool,
                 kept: List[bool]) -> Iterator[tuple]:
    """`_prepare` of every job, in job order: in this process, or in `workers` forked ones."""
    _WORK.update(jobs=jobs, r=r, tmp=tmp, synthesis=synthesis, pngs=pngs, kept=kept)
    if workers == 1:
        return (_prepare_job(i) for i in range(len(jobs)))
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"),
                               initializer=_die_with_parent, initargs=(os.getpid(),))

    def ordered():
        try:
            yield from pool.map(_prepare_job, range(len(jobs)))
        finally:
            pool.shutdown(cancel_futures=True)
    return ordered()


def _die_with_parent(parent: int) -> None:
    """A worker ends when the build that forked it is killed (SIGKILL gives the build no chance
    to stop its pool: orphaned workers slept on for ever). Linux: the kernel's parent-death signal."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: workers still end with the pool when the build ends
        return
    if os.getppid() != parent:  # the build died before the line above
        os._exit(1)


def _prepare_job(i: int) -> tuple:
    job, r, synthesis = _WORK["jobs"][i], _WORK["r"], _WORK["synthesis"]
    lowres = None
    if synthesis:  # seeded by the image's name: the same LR whatever else is in the datasource
        lowres = partial(synthesis.lowres, hr_pixel_um=job.pixel_um,
                         rng=np.random.default_rng([r.seed, zlib.crc32(job.src.key.encode())]))
    # with no held-out split, the first training image that is included is kept (workers == 1 there)
    keep = job.held and (job.split == "valid" or not any(_WORK["kept"]))
    return _prepare(job.src, r, _WORK["tmp"], job.split, lowres, keep_image=keep, pixel_um=job.pixel_um,
                    pngs=_WORK["pngs"])


def _prepare(src: Source, r: Recipe, tmp: Path, split: str,
             lowres: Optional[Callable[[np.ndarray], np.ndarray]] = None, keep_image: bool = False,
             pixel_um: Optional[float] = None, pngs: bool = True):
    """Read, normalise and register one source image (QC figure), move it as the recipe aligns;
    returns its manifest record, the normalised LR and HR stacks and the margin (None, None, 0
    if excluded). With `lowres`, the LR is made from the HR by it (a degradation) instead of
    read; with `keep_image`, the whole raw pair (HR moved onto the LR) is saved under ``images/``."""
    hr_raw = plane_stack(src.pair.hr, src.scene, r)
    if lowres is not None:
        if hr_raw.shape[1] % r.scale or hr_raw.shape[2] % r.scale:
            h, w = hr_raw.shape[1] // r.scale * r.scale, hr_raw.shape[2] // r.scale * r.scale
            hr_raw = hr_raw[:, :h, :w]  # whole LR pixels only
        lr_raw = np.asarray(lowres(hr_raw), dtype=np.float32)
    else:
        lr_raw = plane_stack(src.pair.lr, src.scene, r)
    _check_shapes(src, lr_raw, hr_raw, r)
    ranges = {}
    for side, stack in (("lr", lr_raw), ("hr", hr_raw)):
        lo, hi = percentile_range(stack, r.percentile_low, r.percentile_high)
        if hi <= lo:
            path = src.pair.lr if side == "lr" else src.pair.hr
            raise FileFormatError(f"{path}: the image is flat (percentiles {r.percentile_low}-{r.percentile_high} "
                                  f"are both {lo:g}): empty or saturated")
        ranges[side] = [lo, hi]
    lr, hr = normalize(lr_raw, *ranges["lr"]), normalize(hr_raw, *ranges["hr"])
    record = {"source": src.key, "lr": src.pair.lr.name if src.pair.lr else "synthetic", "hr": src.pair.hr.name,
              "scene": src.scene,
              "split": split, "normalization": ranges, "included": True, "tiles": {}}
    reg, margin = None, 0
    if r.register:
        lr_mean, hr_mean = lr.mean(axis=0), hr.mean(axis=0)
        try:
            reg = register_pair(lr_mean, hr_mean, r.scale, r.transform)
        except BphoError as exc:
            record.update(included=False, reason=str(exc))
            return record, None, None, 0
        record.update(shift_hr_px=list(reg.shift), score=reg.score, score_before=reg.score_before)
        if reg.transform != "translation":
            record.update(rotation_deg=reg.rotation_deg, zoom=reg.zoom, flow_reach_hr_px=reg.reach)
        qc = tmp / "qc" / f"{_safe(src.key)}.png"
        # the HR moved onto the LR: the whole stack when it is what the dataset keeps (warped once)
        moved = apply_registration(hr, reg) if r.align == "hr" else None
        hr_after = moved.mean(axis=0) if moved is not None else apply_registration(hr_mean[None], reg)[0]
        left = residual(lr_mean, hr_after, r.scale)
        record["residual"] = left
        excluded = None
        if reg.score < r.min_registration_score:
            excluded = f"registration score {reg.score:.3f} < min_registration_score {r.min_registration_score}"
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
            hr = moved
        else:
            lr = apply(lr, (reg.shift[0] / r.scale, reg.shift[1] / r.scale))
    if keep_image:
        hr_moved = apply_registration(hr_raw, reg) if reg is not None else hr_raw
        record["image"] = {"margin": margin, "hr_pixel_um": pixel_um, "files": {}}
        for side, arr in (("lr", lr_raw), ("hr", hr_moved)):
            rel = f"images/{_safe(src.key)}_{side}.npy"
            (tmp / "images").mkdir(exist_ok=True)
            np.save(tmp / rel, np.ascontiguousarray(arr, dtype=np.float32))
            record["image"]["files"][side] = {"path": rel, "sha256": datasources.sha256_file(tmp / rel)}
    return record, lr, hr, margin


def _cut(src: Source, r: Recipe, rng: np.random.Generator, lr: np.ndarray, hr: np.ndarray, margin: int) -> dict:
    """Tiles of every size from one prepared image, where the HR has content; positions from `rng`."""
    half = r.frames // 2
    cut: Dict[int, Tuple[list, list, list]] = {size: ([], [], []) for size in r.tile_sizes}
    for t in range(half, lr.shape[0] - half):
        table = content_table(hr[t] > CONTENT_LEVEL)
        for size, (lr_tiles, hr_tiles, rows) in cut.items():
            s = size // r.scale
            for y, x in tile_positions(table, size, r.scale, margin, r.tiles_per_image, r.content_threshold, rng):
                ly, lx = y // r.scale, x // r.scale
                lr_tiles.append(lr[t - half:t + half + 1, ly:ly + s, lx:lx + s])
                hr_tiles.append(hr[t:t + 1, y:y + size, x:x + size])
                rows.append((src.key, src.scene, t, int(y), int(x)))
    return {size: (np.stack(a), np.stack(b), rows) for size, (a, b, rows) in cut.items() if rows}


def _safe(key: str) -> str:
    """A source key as a file name (keys of files in sub-folders hold '/')."""
    return key.replace("/", "__")


def _track(dataset: "Dataset", ds: datasources.Datasource) -> None:
    m = dataset.manifest
    tags = {"bpho.dataset": dataset.name, "bpho.dataset_digest": dataset.digest, "bpho.recipe": m["recipe"]["name"],
            "bpho.recipe_sha256": m["recipe"]["sha256"], "bpho.datasource": ds.name,
            "bpho.datasource_digest": ds.digest}
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
        tracking.log_dataset_input(ds.name, ds.digest, ds.path, context="source", tags={"kind": ds.kind})
        tracking.log_dataset_input(dataset.name, dataset.digest, dataset.path, context="built")


# --- reading a built dataset -------------------------------------------------------------


def load_tiles(folder: Path, size: int, split: str) -> Tuple[np.ndarray, np.ndarray]:
    base = Path(folder) / "tiles" / str(size)
    return (np.load(base / f"{split}_lr.npy", mmap_mode="r"), np.load(base / f"{split}_hr.npy", mmap_mode="r"))


@dataclass(frozen=True)
class ImagePair:
    """A whole held-out source image: raw LR (T, y, x) and raw HR (T, Y, X) float32, the HR
    moved onto the LR by the dataset's registration; `margin` HR pixels at each border hold
    values the shift invented (leave them out of scores); `pixel_um` is the HR pixel size."""

    name: str
    lr: np.ndarray
    hr: np.ndarray
    margin: int
    pixel_um: Optional[float]


@dataclass(frozen=True)
class Dataset:
    name: str
    path: Path
    manifest: dict

    @property
    def digest(self) -> str:
        return self.manifest["digest"]

    @property
    def tile_sizes(self) -> List[int]:
        return sorted(int(s) for s in self.manifest["tiles"])

    def tiles(self, size: int, split: str = "train") -> Tuple[np.ndarray, np.ndarray]:
        """Memory-mapped (LR, HR) float32 tiles: (N, frames, size/scale, size/scale) and (N, 1, size, size)."""
        if str(size) not in self.manifest["tiles"]:
            raise NotFoundError(f"dataset {self.name!r} has no tile size {size}; it has {self.tile_sizes}")
        if split not in SPLITS:
            raise NotFoundError(f"split {split!r}: use train or valid")
        return load_tiles(self.path, size, split)

    @property
    def validation_split(self) -> str:
        """'valid', or 'train' for a dataset without held-out images (it validates on a training image)."""
        return self.manifest.get("validation_images", {}).get("split", "valid")

    def validation_images(self) -> List[ImagePair]:
        """The whole source images training validates on and `bpho evaluate --dataset` scores."""
        if "validation_images" not in self.manifest:
            raise BphoError(f"dataset {self.name!r} was built by bpho 0.1, which kept no whole validation images; "
                            "rebuild it with the command that made it, adding --force")
        out = []
        for rec in self.manifest["sources"]:
            if "image" not in rec:
                continue
            img = rec["image"]
            lr, hr = (np.load(self.path / img["files"][side]["path"]) for side in ("lr", "hr"))
            out.append(ImagePair(rec["source"], lr, hr, int(img["margin"]), img["hr_pixel_um"]))
        return out

    def index(self, size: int, split: str = "train") -> List[dict]:
        with builtins.open(self.path / "tiles" / str(size) / f"{split}_tiles.csv", newline="") as fh:
            return list(csv.DictReader(fh))


def open(name: str) -> Dataset:  # noqa: A001
    dest = paths.named_dir("datasets", name)
    path = dest / MANIFEST
    if not path.is_file():
        raise NotFoundError(f"dataset {name!r} not found under {dest.parent}; see `bpho dataset list`, "
                            f"or build it with `bpho dataset make RECIPE --name {name}`")
    return Dataset(name=name, path=dest, manifest=json.loads(path.read_text()))


def names() -> List[str]:
    base = paths.root() / "datasets"
    return sorted(p.name for p in base.iterdir() if (p / MANIFEST).is_file()) if base.is_dir() else []
