"""Reading a built dataset: its manifest, memory-mapped tiles and whole validation images.

``$BPHO_ROOT/datasets/NAME/`` (see builder.py for how it is made)."""

from __future__ import annotations

import builtins
import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from bpho import paths
from bpho.datasets.tiling import load_tiles
from bpho.errors import BphoError, NotFoundError

MANIFEST = "manifest.json"
SPLITS = ("train", "valid")


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
    """A built dataset: its name, folder and manifest (see builder.py for the layout)."""

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
        """Where each tile came from, in tile order: source, scene, t, y, x (HR origin), as strings."""
        with builtins.open(self.path / "tiles" / str(size) / f"{split}_tiles.csv", newline="") as fh:
            return list(csv.DictReader(fh))


def open(name: str) -> Dataset:  # noqa: A001
    """The built dataset `name` under ``$BPHO_ROOT/datasets/``; NotFoundError if there is none."""
    dest = paths.named_dir("datasets", name)
    path = dest / MANIFEST
    if not path.is_file():
        raise NotFoundError(f"dataset {name!r} not found under {dest.parent}; see `bpho dataset list`, "
                            f"or build it with `bpho dataset make RECIPE --name {name}`")
    return Dataset(name=name, path=dest, manifest=json.loads(path.read_text()))


def names() -> List[str]:
    """The names of the built datasets, sorted."""
    base = paths.root() / "datasets"
    return sorted(p.name for p in base.iterdir() if (p / MANIFEST).is_file()) if base.is_dir() else []
