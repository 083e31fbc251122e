"""Reading a built dataset: its manifest, memory-mapped tiles, and its whole held-out images:
validation images (training scores them every epoch and keeps the best epoch: they take part
in a choice) and, when the recipe held some out (``test_fraction``), test images (never tiled,
never seen by training or any choice: what published numbers are scored on).

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
SPLITS = ("train", "valid")  # the splits that have tiles; test images are kept whole only


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
        """The dataset's content digest (from its manifest)."""
        return self.manifest["digest"]

    @property
    def tile_sizes(self) -> List[int]:
        """The HR tile sizes the dataset was cut in, smallest first."""
        return sorted(int(s) for s in self.manifest["tiles"])

    def tiles(self, size: int, split: str = "train") -> Tuple[np.ndarray, np.ndarray]:
        """Memory-mapped (LR, HR) float32 tiles: (N, frames, size/scale, size/scale) and (N, 1, size, size)."""
        if str(size) not in self.manifest["tiles"]:
            raise NotFoundError(f"dataset {self.name!r} has no tile size {size}; it has {self.tile_sizes}")
        if split not in SPLITS:
            raise NotFoundError(f"split {split!r}: use train or valid (test images have no tiles: test_images())")
        return load_tiles(self.path, size, split)

    @property
    def validation_split(self) -> str:
        """'valid', or 'train' for a dataset without held-out images (it validates on a training image)."""
        return self.manifest.get("validation_images", {}).get("split", "valid")

    def validation_images(self) -> List[ImagePair]:
        """The whole source images training validates on (and chooses its best epoch on); `bpho
        evaluate --dataset` scores them only when the dataset has no test images."""
        if "validation_images" not in self.manifest:
            raise BphoError(f"dataset {self.name!r} was built by bpho 0.1, which kept no whole validation images; "
                            "rebuild it with the command that made it, adding --force")
        return self._whole_images(lambda split: split != "test")

    @property
    def has_test_images(self) -> bool:
        """Whether the recipe held test images out (``test_fraction`` > 0)."""
        return bool(self.manifest.get("test_images", {}).get("sources"))

    def test_images(self) -> List[ImagePair]:
        """The whole test source images: never tiled, never seen by training or by any choice (the
        epoch is chosen on the validation images). Empty for a dataset built with test_fraction 0."""
        return self._whole_images(lambda split: split == "test") if self.has_test_images else []

    def _whole_images(self, wanted) -> List[ImagePair]:
        out = []
        for rec in self.manifest["sources"]:
            if "image" not in rec or not wanted(rec["split"]):
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
