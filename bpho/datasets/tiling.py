"""Tiles: where an image has content (`content_table`, `tile_positions`), cutting matching LR/HR
tiles of several sizes (`cut_tiles`) and writing them as memory-mappable .npy (`TileWriter`,
`load_tiles`)."""

from __future__ import annotations

import builtins
import csv
import shutil
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from bpho import datasources
from bpho.datasets.recipe import Recipe
from bpho.datasets.sources import Source

CONTENT_LEVEL = 0.2  # a pixel counts as content above this normalised HR intensity


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


def frame_window(t: int, frames: int, n: int) -> List[int]:
    """The frames t - frames//2 .. t + frames//2 of a movie of `n` frames, reflected at its ends
    (numpy's reflect padding): a multi-frame model's input window for frame t, the same in the
    training tiles and in prediction, so the first and last frames are no surprise to it."""
    period = 2 * (n - 1) or 1
    return [min(i % period, period - i % period) for i in range(t - frames // 2, t + frames // 2 + 1)]


def cut_tiles(src: Source, r: Recipe, rng: np.random.Generator, lr: np.ndarray, hr: np.ndarray, margin: int) -> dict:
    """Tiles of every size from one prepared image, where the HR has content; positions from `rng`.
    Every frame is a centre, its window reflected at the movie's ends (`frame_window`)."""
    cut: Dict[int, Tuple[list, list, list]] = {size: ([], [], []) for size in r.tile_sizes}
    for t in range(lr.shape[0]):
        table = content_table(hr[t] > CONTENT_LEVEL)
        window = frame_window(t, r.frames, lr.shape[0])
        for size, (lr_tiles, hr_tiles, rows) in cut.items():
            s = size // r.scale
            for y, x in tile_positions(table, size, r.scale, margin, r.tiles_per_image, r.content_threshold, rng):
                ly, lx = y // r.scale, x // r.scale
                lr_tiles.append(lr[window, ly:ly + s, lx:lx + s])
                hr_tiles.append(hr[t:t + 1, y:y + size, x:x + size])
                rows.append((src.key, src.scene, t, int(y), int(x)))
    return {size: (np.stack(a), np.stack(b), rows) for size, (a, b, rows) in cut.items() if rows}


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
        """Append LR and HR tiles and their CSV rows (where each came from)."""
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
        with builtins.open(self.folder / f"{self.split}_tiles.csv", "w", newline="") as table:
            writer = csv.writer(table)
            writer.writerow(["source", "scene", "t", "y", "x"])
            writer.writerows(self.rows)
        digests[f"{self.split}_tiles.csv"] = datasources.sha256_file(self.folder / f"{self.split}_tiles.csv")
        return digests


def load_tiles(folder: Path, size: int, split: str) -> Tuple[np.ndarray, np.ndarray]:
    """Memory-mapped (LR, HR) tiles of one size and split of the dataset folder `folder`."""
    base = Path(folder) / "tiles" / str(size)
    return (np.load(base / f"{split}_lr.npy", mmap_mode="r"), np.load(base / f"{split}_hr.npy", mmap_mode="r"))
