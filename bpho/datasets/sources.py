"""Where a dataset's images come from: the sources of a datasource, reading one plane stack,
the train / valid / test split by source file, and the LR of each source (read, or made from the HR).

An LR provider gives each source's LR and HR stacks: `ReadLR` reads the pair's LR file,
`DegradedLR` degrades the HR (`bpho synthesize`); the builder is the same for both.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy as np

from bpho import datasources, io
from bpho.datasets.recipe import Recipe
from bpho.errors import BphoError, FileFormatError


@dataclass(frozen=True)
class Source:
    """One image of a pair: a scene of a file pair (multi-scene files give several)."""

    key: str
    pair: datasources.Pair
    scene: int


def plane_stack(path: Path, scene: int = 0, channel: int = 0, z: Union[int, str] = 0) -> np.ndarray:
    """One channel of one scene as (T, Y, X) float32: z plane `z`, or ``"max"`` for the maximum projection.

    Parameters
    ----------
    path : Path
        A CZI or TIFF file (read by `bpho.io`).
    scene, channel : int
        Which scene and channel.
    z : int or "max"
        The z plane, or the maximum projection over z.

    Returns
    -------
    ndarray
        (T, Y, X) float32; a missing channel or plane, NaN or inf is a one-line FileFormatError.
    """
    img = io.read(path, scene=scene).check_grey()
    n_c, n_z = img.shape[1], img.shape[2]
    if not 0 <= channel < n_c:
        raise FileFormatError(f"{path}: channel {channel} does not exist (the file has {n_c}); "
                              f"set channel=0..{n_c - 1}")
    if z != "max" and not 0 <= int(z) < n_z:
        raise FileFormatError(f"{path}: z plane {z} does not exist (the file has {n_z}); set z=0..{n_z - 1} or z=max")
    data = img.data[:, channel]
    data = data.max(axis=1) if z == "max" else data[:, int(z)]
    stack = data.astype(np.float32)
    if not np.isfinite(stack).all():
        raise FileFormatError(f"{path}: the image holds NaN or infinite values; fix or re-export it")
    return stack


def check_shapes(src: Source, lr: np.ndarray, hr: np.ndarray, r: Recipe) -> None:
    """Raise a one-line BphoError naming the file unless the (T, y, x) LR and (T, Y, X) HR of
    `src` have the same frames (at least the recipe's window), HR = LR x scale and room for a tile."""
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


def pair_sources(ds: datasources.Datasource) -> List[Source]:
    """Every LR/HR image pair of a datasource: a scene of a file pair (multi-scene files give several)."""
    if not ds.pairs:
        raise BphoError(f"datasource {ds.name!r} has no LR/HR pairs to build a dataset from")
    out = []
    for pair in ds.pairs:
        n_lr, n_hr = io.count_scenes(pair.lr), io.count_scenes(pair.hr)
        if n_lr != n_hr:
            raise BphoError(f"{pair.lr}: {n_lr} scenes, but {pair.hr} has {n_hr}; pairs need the same scenes")
        out += [Source(pair.stem if n_lr == 1 else f"{pair.stem}#s{s}", pair, s) for s in range(n_lr)]
    return out


def hr_sources(ds: datasources.Datasource) -> List[Source]:
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


def split_sources(stems: List[str], valid_fraction: float, seed: int, test_fraction: float = 0.0) -> Dict[str, str]:
    """Assign whole source files to train, valid or test (seeded; no file in two splits).

    The files are shuffled once by `seed`; the first ``round(valid_fraction * n)`` are valid (at
    least one, and one left for training, when valid_fraction > 0 and there are two files), the
    next ``round(test_fraction * n)`` test (at least one when test_fraction > 0), the rest train.
    The validation files do not depend on `test_fraction`: holding a test split out only moves
    files from train to test, and with test_fraction 0 the split is what it always was.

    Raises BphoError when test_fraction > 0 leaves no room for a test file beside at least one
    training file (and the validation files asked for).
    """
    order = sorted(stems)
    np.random.default_rng(seed).shuffle(order)
    n_valid = int(round(valid_fraction * len(order)))
    if valid_fraction > 0 and len(order) >= 2:
        n_valid = min(max(n_valid, 1), len(order) - 1)
    n_test = 0
    if test_fraction > 0:
        n_test = min(max(int(round(test_fraction * len(order))), 1), len(order) - n_valid - 1)
        if n_test < 1:
            raise BphoError(f"test_fraction={test_fraction}: {len(order)} source image(s) leave none to test on beside "
                            f"{n_valid} to validate on and one to train on; add images, or set test_fraction=0")
    return {stem: ("valid" if i < n_valid else "test" if i < n_valid + n_test else "train")
            for i, stem in enumerate(order)}


def pixel_sizes(ds: datasources.Datasource) -> Dict[Path, Optional[float]]:
    """Each file's (x) pixel size in um, as recorded when the datasource was added (None if unknown)."""
    return {ds.path / f["path"]: (f.get("pixel_size_um") or [None] * 3)[-1] for f in ds.manifest["files"]}


@dataclass(frozen=True)
class ReadLR:
    """The LR of each source is its pair's LR file."""

    record = None  # nothing to add to the manifest

    def kinds(self, r: Recipe) -> Tuple[str, ...]:
        """The datasource kinds it reads: the recipe's."""
        return (r.kind,)

    def sources(self, ds: datasources.Datasource) -> List[Source]:
        """The LR/HR pairs of `ds`."""
        return pair_sources(ds)

    def __call__(self, src: Source, hr: np.ndarray, r: Recipe, pixel_um: Optional[float]):
        """Raw (LR, HR) stacks of `src` given its raw HR stack: the LR read from its file."""
        assert src.pair.lr is not None  # `sources` gives pairs of files
        return plane_stack(src.pair.lr, src.scene, r.channel, r.z), hr


@dataclass(frozen=True)
class DegradedLR:
    """The LR of each source is made from its HR by a degradation: `degrade(hr, hr_pixel_um, rng)`
    maps a raw (T, Y, X) HR stack to a raw (T, Y/scale, X/scale) LR stack, seeded by the source's
    name (the same LR whatever else is in the datasource); `record` (the degradation's name,
    parameters and what it was fitted on) goes into the manifest."""

    record: dict
    degrade: Callable[..., np.ndarray]

    def kinds(self, r: Recipe) -> Tuple[str, ...]:
        """The datasource kinds it reads: the recipe's, or HR-only ones."""
        return (r.kind, "hr")

    def sources(self, ds: datasources.Datasource) -> List[Source]:
        """The HR images of `ds`."""
        return hr_sources(ds)

    def __call__(self, src: Source, hr: np.ndarray, r: Recipe, pixel_um: Optional[float]):
        """Raw (LR, HR) stacks of `src`: the HR cropped to whole LR pixels and its degradation."""
        h, w = hr.shape[1] // r.scale * r.scale, hr.shape[2] // r.scale * r.scale
        hr = hr[:, :h, :w]  # whole LR pixels only
        rng = np.random.default_rng([r.seed, zlib.crc32(src.key.encode())])
        return np.asarray(self.degrade(hr, hr_pixel_um=pixel_um, rng=rng), dtype=np.float32), hr


LRProvider = Union[ReadLR, DegradedLR]  # what `builder.make(lr_provider=...)` takes
