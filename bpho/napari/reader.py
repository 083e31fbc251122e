"""napari reader: bpho's images and a dataset's pictures.

- an image `bpho.io` reads (``bpho predict``'s ImageJ TIFF, OME-TIFF and OME-Zarr outputs, and
  the CZI / TIFF inputs): one layer per channel, lazily (dask), its singleton T and Z axes
  dropped, ``scale`` from the pixel size (micrometres), ``axis_labels`` t/z/y/x, the channel's
  name, and in ``metadata["bpho"]`` the axes, channel, pixel size, file and (OME-Zarr) the
  lineage ``bpho predict`` wrote: what the widget reads back;
- a dataset folder (``$BPHO_ROOT/datasets/NAME``, with its ``manifest.json``): its QC pictures
  (``qc/*.png``, LR over HR before and after registration) and tile previews (``previews/*.png``),
  one RGB layer each.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional

import numpy as np

from bpho import io
from bpho.errors import FileFormatError

SUFFIXES = (".czi", ".tif", ".tiff", ".zarr")


def get_reader(path) -> Optional[Callable[[object], List[tuple]]]:
    """The reader for `path` (a file or folder, or a list of one), or None where bpho cannot read it
    (napari then asks its other readers)."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if p.is_dir() and (p / "manifest.json").is_file():
        return read_dataset
    if p.suffix.lower() not in SUFFIXES:
        return None
    try:
        if io.open_image(p, scene=0).rgb:
            return None  # a picture: napari's own reader shows it in colour
    except FileFormatError:
        return None
    return read_image


def _one(path) -> Path:
    return Path(path[0] if isinstance(path, (list, tuple)) else path)


def read_image(path) -> List[tuple]:
    """(data, kwargs, "image") per channel of the image at `path` (the first scene of a CZI)."""
    path = _one(path)
    img = io.open_image(path, scene=0)
    t, c, z, _h, _w = img.shape
    axes = ("t" if t > 1 else "") + ("z" if z > 1 else "") + "yx"
    index = (slice(None) if t > 1 else 0, slice(None) if z > 1 else 0)
    pz, py, px = img.pixel_size
    scale = {"t": 1.0, "z": pz or 1.0, "y": py or 1.0, "x": px or 1.0}
    lineage = _lineage(path)
    name = io.image_name(path)
    layers = []
    for ci in range(c):
        channel = img.channel_name(ci)
        data = img.data[index[0], ci, index[1]]
        lo, hi = np.percentile(np.asarray(data[(0,) * (data.ndim - 2)]), (0.1, 99.9))
        meta = {"axes": axes, "channel": ci, "channel_name": channel, "pixel_size_um": img.pixel_size,
                "source": str(path)}
        layers.append((data, {"name": f"{name} {channel}" if c > 1 and channel else (
                              f"{name} c{ci}" if c > 1 else name),
                              "scale": tuple(scale[a] for a in axes), "axis_labels": tuple(axes),
                              "contrast_limits": (float(lo), float(max(hi, lo + 1e-6))),
                              "metadata": {**lineage, "bpho": meta}}, "image"))
    return layers


def _lineage(path: Path) -> dict:
    """What ``bpho predict`` recorded in an OME-Zarr output (model URI, run, dataset, digest); else {}."""
    if path.suffix.lower() != ".zarr":
        return {}
    from bpho.io import omezarr

    return dict((omezarr.multiscale(path).get("metadata") or {}).get("bpho") or {})


def read_dataset(path) -> List[tuple]:
    """(picture, kwargs, "image") for each QC picture and tile preview of the dataset folder at `path`."""
    from skimage.io import imread

    folder = _one(path)
    pngs = sorted((folder / "qc").glob("*.png")) + sorted((folder / "previews").glob("*.png"))
    return [(imread(png), {"name": f"{folder.name} {png.parent.name}/{png.stem}", "rgb": True,
                           "metadata": {"source": str(png)}}, "image") for png in pngs]
