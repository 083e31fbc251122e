"""TIFF through tifffile: ImageJ hyperstacks, OME-TIFF and plain multi-page TIFF."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import tifffile
import zarr

from bpho.errors import FileFormatError
from bpho.io import Image, PixelSize, _lazy, _to_tczyx
from bpho.paths import atomic_file

# tifffile axis letters -> bpho axes. 'I' and 'Q' (an unnamed page sequence) become Z,
# as Fiji opens a plain multi-page TIFF as slices; 'S' (RGB samples) becomes C.
_TO_BPHO = {"T": "T", "C": "C", "Z": "Z", "Y": "Y", "X": "X", "I": "Z", "Q": "Z", "S": "C"}
_UM_PER_UNIT = {
    "m": 1e6, "cm": 1e4, "mm": 1e3, "um": 1.0, "\u00b5m": 1.0, "\u03bcm": 1.0, "micron": 1.0,
    "microns": 1.0, "micrometer": 1.0, "nm": 1e-3, "nanometer": 1e-3,
}


def open_image(path: Path) -> Image:
    """The first series of a TIFF (ImageJ or OME) as a lazy (T, C, Z, Y, X) dask array, with its pixel size.

    Uncompressed contiguous images (ImageJ's and Fiji's, tifffile's default) are memory-mapped,
    so a region reads only its bytes; others are read by strip or tile through tifffile's Zarr store.
    """
    try:
        with tifffile.TiffFile(path) as tf:
            series = tf.series[0]
            axes = series.axes
            pixel_size = _pixel_size(tf, series)
            names = _channel_names(tf)
        array = _open_array(path)
    except FileFormatError:
        raise
    except Exception as exc:
        raise FileFormatError(
            f"{path}: cannot read the TIFF ({type(exc).__name__}: {' '.join(str(exc).split())}); "
            "the file is probably truncated or corrupt"
        ) from None
    file_chunks = None if isinstance(array, np.memmap) else array.chunks
    data = _lazy(path, array, axes, file_chunks, opener=_open_array)
    return Image(data=_to_tczyx(data, axes, path, "TIFF", _TO_BPHO), pixel_size=pixel_size, axes_source=axes,
                 path=path, channel_names=names)


def _open_array(path: Path):
    """Level 0 of the first series: a read-only memory map where the data is stored contiguous and
    uncompressed in the file's byte order, else a Zarr array over tifffile's store."""
    with tifffile.TiffFile(path) as tf:
        series = tf.series[0]
        if series.dataoffset is not None and series.dtype.isnative:
            return tifffile.memmap(path, series=0, mode="r")
        store = series.aszarr(level=0)  # reopens the file when a chunk is read
    return zarr.open_array(store, mode="r")


def _channel_names(tf: tifffile.TiffFile) -> tuple:
    """Channel names from OME-XML (Channel Name), else from ImageJ's per-channel labels; () if none."""
    if tf.is_ome and tf.ome_metadata:
        try:
            root = ET.fromstring(tf.ome_metadata)
        except ET.ParseError:
            return ()
        pixels = next((e for e in root.iter() if e.tag.endswith("Pixels")), None)
        if pixels is None:
            return ()
        return tuple(ch.get("Name") or None for ch in pixels if ch.tag.endswith("Channel"))
    return ()


def _pixel_size(tf: tifffile.TiffFile, series) -> PixelSize:
    if tf.is_ome and tf.ome_metadata:
        return _ome_pixel_size(tf.ome_metadata)
    page = series.pages[0] if series.pages else tf.pages[0]
    tags = page.tags  # type: ignore[union-attr]  # the first page of a series is a TiffPage
    ij = tf.imagej_metadata or {}
    if ij:
        factor = _UM_PER_UNIT.get(str(ij.get("unit", "")).replace("\\u00B5", "µ").lower())
    else:
        unit = tags.valueof("ResolutionUnit")
        factor = 1e4 if unit == 3 else None  # centimetre; inch/none are screen DPI, not microscopy
    if factor is None:
        return (None, None, None)

    def size(tag):
        value = tags.valueof(tag)
        if not value or not value[0]:
            return None
        pixels_per_unit = value[0] / value[1]
        return factor / pixels_per_unit

    z = ij.get("spacing")
    return (float(z) * factor if z else None, size("YResolution"), size("XResolution"))


def _ome_pixel_size(xml: str) -> PixelSize:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return (None, None, None)
    pixels = next((e for e in root.iter() if e.tag.endswith("Pixels")), None)
    if pixels is None:
        return (None, None, None)

    def size(axis):
        value = pixels.get(f"PhysicalSize{axis}")
        if value is None:
            return None
        factor = _UM_PER_UNIT.get(pixels.get(f"PhysicalSize{axis}Unit", "µm").lower())
        return float(value) * factor if factor else None

    return (size("Z"), size("Y"), size("X"))


def write_imagej(path: Path, data: np.ndarray, pixel_size: PixelSize,
                 time_interval: Optional[float]) -> Path:
    """Write (T, C, Z, Y, X) `data` as an ImageJ hyperstack TIFF with its pixel size (um) and frame interval (s)."""
    data = np.asarray(data)
    if data.ndim != 5:
        raise ValueError(f"write_imagej expects (T, C, Z, Y, X) data, got shape {data.shape}")
    if data.dtype == np.float64 or data.dtype == np.float16:
        data = data.astype(np.float32)
    if data.dtype not in (np.uint8, np.uint16, np.float32):
        raise FileFormatError(
            f"{path}: ImageJ TIFF holds uint8, uint16 or float32, not {data.dtype}; convert first"
        )
    z, y, x = pixel_size
    metadata: Dict[str, object] = {"axes": "TZCYX", "unit": "um"}
    if z:
        metadata["spacing"] = float(z)
    if time_interval:
        metadata["finterval"] = float(time_interval)
    resolution = (1.0 / x, 1.0 / y) if x and y else None
    with atomic_file(path, suffix=".tif") as tmp:
        tifffile.imwrite(tmp, np.ascontiguousarray(data.transpose(0, 2, 1, 3, 4)), imagej=True,
                         metadata=metadata, resolution=resolution)
    return path
