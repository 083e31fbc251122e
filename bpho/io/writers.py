"""HR images written block by block: ImageJ hyperstack TIFF, OME-TIFF and OME-Zarr (OME-NGFF 0.5).

An output is laid out first (`create`: the whole file or store, empty), its blocks are then
written in any order and from any process (`write_block`: every block lands in bytes of its own:
fixed offsets of one contiguous TIFF image, whole shards of a Zarr array), and `finish` adds what
needs every pixel (the OME-Zarr pyramid and its metadata) and renames the hidden
``.NAME.part...`` to NAME. A run that dies leaves only the hidden part (an OME-Zarr part has no
multiscales metadata, so no reader takes it for an image); the next run overwrites it.

Axes are (T, C, Z, Y, X), float32. Memory follows the block: nothing holds a whole plane.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from bpho.errors import BphoError
from bpho.io import PixelSize

SUFFIXES = {"imagej": ".tif", "ome-tiff": ".ome.tif", "ome-zarr": ".ome.zarr"}
TIFF_PAGE_LIMIT = 2 ** 32  # bytes: a classic (ImageJ) TIFF counts a page's bytes in 32 bits
CHUNK = 512  # HR px: the OME-Zarr chunk side (what a viewer reads); blocks are whole shards of chunks


@dataclass(frozen=True)
class Layout:
    """Where and how an output is written; small and picklable (sent to Dask workers).

    fmt: imagej, ome-tiff or ome-zarr. part: the hidden path written to; target: its final name.
    shape: (T, C, Z, Y, X) of the HR image. offset: TIFF only, the byte where its contiguous pixels start.
    shard: OME-Zarr only, the shard side in HR px (blocks must be aligned to it).
    """

    fmt: str
    part: str
    target: str
    shape: Tuple[int, int, int, int, int]
    offset: int = 0
    shard: int = 0


def part_path(target: Path) -> Path:
    """The hidden name `target` is written under until it is complete."""
    stem = target.name[:-len(SUFFIXES["ome-zarr"])] if target.name.endswith(".ome.zarr") else target.name
    return target.with_name(f".{stem}.part")


def create(target: Path, fmt: str, shape: Sequence[int], pixel_size: PixelSize,
           channel_names: Sequence[str], shard: int) -> Layout:
    """Lay out an empty (T, C, Z, Y, X) float32 output for `target` under its hidden part name.

    TIFF: the whole image as one contiguous block of pixels after its tags (tifffile writes
    the tags; the pixels are left sparse until written). OME-Zarr: a Zarr v3 group with the
    full-resolution array ``0`` in `shard` px shards of `CHUNK` px chunks (zstd).
    """
    target = Path(target)
    t, c, z, y, x = (int(n) for n in shape)
    part = part_path(target)
    _remove(part)
    part.parent.mkdir(parents=True, exist_ok=True)
    try:
        return _create(part, target, fmt, (t, c, z, y, x), pixel_size, channel_names, shard)
    except BaseException:
        _remove(part)
        raise


def _create(part: Path, target: Path, fmt: str, shape: Tuple[int, int, int, int, int], pixel_size: PixelSize,
            channel_names: Sequence[str], shard: int) -> Layout:
    import tifffile

    t, c, z, y, x = shape
    if fmt == "ome-zarr":
        import zarr

        group = zarr.open_group(str(part), mode="w", zarr_format=3)
        chunk = CHUNK if shard % CHUNK == 0 else shard
        group.create_array("0", shape=shape, dtype="float32", chunks=(1, 1, 1, chunk, chunk),
                           shards=(1, 1, 1, shard, shard), fill_value=0.0)
        return Layout(fmt, str(part), str(target), shape, shard=shard)
    if fmt == "imagej" and y * x * 4 >= TIFF_PAGE_LIMIT:
        raise BphoError(f"{target}: one HR plane of {y} x {x} px is {y * x * 4 / 2 ** 30:.1f} GiB, more than an "
                        "ImageJ TIFF page holds (4 GiB); use --format ome-tiff (BigTIFF) or ome-zarr")
    pz, py, px = pixel_size
    if fmt == "ome-tiff":
        meta: Dict[str, object] = {"axes": "TZCYX", "Channel": {"Name": list(channel_names)},
                                   **({"PhysicalSizeX": px, "PhysicalSizeXUnit": "µm"} if px else {}),
                                   **({"PhysicalSizeY": py, "PhysicalSizeYUnit": "µm"} if py else {}),
                                   **({"PhysicalSizeZ": pz, "PhysicalSizeZUnit": "µm"} if pz else {})}
        kind: Dict[str, Any] = {"ome": True, "bigtiff": t * c * z * y * x * 4 >= 2 ** 31}
    else:  # ImageJ hyperstack; no calibration where the input has none (not 1 um a pixel)
        meta = {"axes": "TZCYX", **({"unit": "um"} if px and py else {}), **({"spacing": pz} if pz else {})}
        kind = {"imagej": True, **({"resolution": (1 / px, 1 / py)} if px and py else {})}
    offset, _size = _io(part, lambda: tifffile.imwrite(part, shape=(t, z, c, y, x), dtype=np.float32,
                                                       metadata=meta, returnoffset=True, **kind))
    return Layout(fmt, str(part), str(target), shape, offset=int(offset))


def write_block(layout: Layout, t: int, c: int, z: int, y: int, x: int, data: np.ndarray) -> None:
    """Write one HR block (2D float32) at (t, c, z, y, x) of `layout`'s output."""
    data = np.ascontiguousarray(data, dtype="<f4")
    h, w = data.shape
    if layout.fmt == "ome-zarr":
        import zarr

        if y % layout.shard or x % layout.shard:
            raise ValueError(f"block at ({y}, {x}) is not aligned to the {layout.shard} px shards")

        def put_zarr():
            zarr.open_array(f"{layout.part}/0", mode="r+")[t, c, z, y:y + h, x:x + w] = data
        _io(Path(layout.part), put_zarr)
        return
    n_t, n_c, n_z, n_y, n_x = layout.shape
    page = (t * n_z + z) * n_c + c  # ImageJ and OME pages both run in T, Z, C order

    def put():
        fd = os.open(layout.part, os.O_WRONLY)
        try:
            if x == 0 and w == n_x:  # whole rows: one contiguous run of bytes
                _pwrite_all(fd, data.data.cast("B"), layout.offset + (page * n_y + y) * n_x * 4)
            else:
                for row in range(h):
                    _pwrite_all(fd, data[row].data.cast("B"),
                                layout.offset + ((page * n_y + y + row) * n_x + x) * 4)
        finally:
            os.close(fd)
    _io(Path(layout.part), put)


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    """os.pwrite until every byte is written (a write may be short)."""
    while len(data):
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


def finish(layout: Layout, pixel_size: PixelSize, channel_names: Sequence[str], metadata: dict,
           overwrite: bool = False) -> Path:
    """Complete `layout`'s output and give it its final name.

    OME-Zarr: levels 1, 2, ... (each the 2 x 2 mean of the one before, down to one chunk) and
    the OME-NGFF multiscales metadata through ome-zarr-py: axes t, c, z, y, x with units,
    each level's scale in micrometres (1 where the input has no pixel size), the channel names
    (omero), and `metadata` under ``multiscales[0].metadata.bpho``.
    """
    part, target = Path(layout.part), Path(layout.target)
    if layout.fmt == "ome-zarr":
        _io(part, lambda: _pyramid(layout, pixel_size, channel_names, metadata))
    if target.exists():
        if not overwrite:
            raise BphoError(f"{target}: already exists; remove it or pass --overwrite")
        _remove(target)
    os.replace(part, target)
    return target


def _pyramid(layout: Layout, pixel_size: PixelSize, channel_names: Sequence[str], metadata: dict) -> None:
    import dask.array as da
    import zarr
    from ome_zarr.writer import write_multiscales_metadata

    group = zarr.open_group(layout.part, mode="r+")
    level, levels = zarr.open_array(f"{layout.part}/0", mode="r"), ["0"]
    while max(level.shape[-2:]) > CHUNK:
        name = str(len(levels))
        source = da.from_zarr(level)
        smaller = da.coarsen(np.mean, source, {3: 2, 4: 2}, trim_excess=True).astype(np.float32)
        level = group.create_array(name, shape=smaller.shape, dtype="float32",
                                   chunks=(1, 1, 1, CHUNK, CHUNK), fill_value=0.0)
        da.to_zarr(smaller.rechunk((1, 1, 1, CHUNK, CHUNK)), level, compute=True)
        levels.append(name)
    pz, py, px = pixel_size
    unit = "micrometer" if px and py else None
    axes: List[Dict[str, str]] = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"}]
    for name, size in (("z", pz if unit else None), ("y", py), ("x", px)):
        axes.append({"name": name, "type": "space", **({"unit": "micrometer"} if unit and size else {})})
    datasets = [{"path": name, "coordinateTransformations": [{"type": "scale", "scale": [
        1.0, 1.0, float(pz or 1.0), float(py or 1.0) * 2 ** k, float(px or 1.0) * 2 ** k]}]}
        for k, name in enumerate(levels)]
    omero = {"channels": [{"label": n, "active": True} for n in channel_names]}
    write_multiscales_metadata(group, datasets=datasets, axes=axes, name=Path(layout.target).name,
                               metadata={"omero": omero, "bpho": metadata})


def discard(layout: Optional[Layout]) -> None:
    """Remove a part that will not be completed (an error, a stopped run)."""
    if layout is not None:
        _remove(Path(layout.part))


def _remove(path: Path) -> None:
    from bpho.paths import remove_tree

    if path.is_dir():
        remove_tree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _io(path: Path, write):
    """Run `write`; a full disk or a file-size limit becomes one line naming `path`."""
    try:
        return write()
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise BphoError(f"{path}: {os.strerror(exc.errno)} while writing; nothing was kept. Free space or "
                            "choose another --out, then run the command again") from None
        raise
