"""OME-Zarr input: a NAME.zarr / NAME.ome.zarr folder (OME-NGFF 0.4 on Zarr v2, 0.5 on Zarr v3).

bpho reads level 0 (full resolution) of the first multiscale image, its axes mapped to
(T, C, Z, Y, X) by name, its pixel size from level 0's ``scale`` transformation and its
channel names from ``omero.channels[].label``. A bioformats2raw folder (images under 0/,
1/, ...) is read from its first image. The OME-Zarr writer is in bpho.predict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import zarr

from bpho.errors import FileFormatError
from bpho.io import Image, PixelSize, _lazy, _to_tczyx

# OME-NGFF space units (UDUNITS-2 names) -> micrometres
_UM_PER_UNIT = {
    "angstrom": 1e-4, "picometer": 1e-6, "nanometer": 1e-3, "micrometer": 1.0, "millimeter": 1e3,
    "centimeter": 1e4, "decimeter": 1e5, "meter": 1e6,
}


def _group(path: Path) -> Tuple[zarr.Group, Dict[str, Any]]:
    """The image group and its OME attributes (0.5 keeps them under "ome")."""
    if not path.is_dir():
        raise FileFormatError(f"{path}: no such folder (an OME-Zarr image is a folder NAME.zarr)")
    try:
        group = zarr.open_group(str(path), mode="r")
        attrs = _ome(group)
        if "bioformats2raw.layout" in attrs and "multiscales" not in attrs:  # images in 0/, 1/, ...
            group = group["0"]  # type: ignore[assignment]
            attrs = _ome(group)
    except Exception as exc:
        raise FileFormatError(
            f"{path}: not a readable Zarr folder ({type(exc).__name__}: {' '.join(str(exc).split())}); "
            "bpho reads OME-Zarr images (OME-NGFF 0.4 or 0.5)"
        ) from None
    return group, attrs


def _ome(group: zarr.Group) -> Dict[str, Any]:
    attrs: Dict[str, Any] = dict(group.attrs)
    return attrs.get("ome", attrs)


def multiscale(path: Path) -> Dict[str, Any]:
    """The first multiscales entry of the OME-Zarr folder; FileFormatError if there is none."""
    _, attrs = _group(path)
    multiscales = attrs.get("multiscales")
    if not multiscales or not isinstance(multiscales, list) or not multiscales[0].get("datasets"):
        raise FileFormatError(
            f"{path}: a Zarr folder without OME-NGFF multiscales metadata, so its axes and pixel size are "
            "unknown; write it as OME-Zarr (ome-zarr-py, bioformats2raw, or Fiji's OME-Zarr export)"
        )
    return multiscales[0]


def _level0(path: Path) -> zarr.Array:
    group, _ = _group(path)
    return group[multiscale(path)["datasets"][0]["path"]]  # type: ignore[return-value]


def _scale(transforms: Optional[List[Dict[str, Any]]]) -> Optional[List[float]]:
    for transform in transforms or []:
        if transform.get("type") == "scale" and "scale" in transform:
            return [float(v) for v in transform["scale"]]
    return None


def _pixel_size(ms: Dict[str, Any], axes: List[Dict[str, Any]]) -> PixelSize:
    """(z, y, x) in micrometres: level 0's scale (times the multiscale's own, if any) in each axis's unit."""
    scale = _scale(ms["datasets"][0].get("coordinateTransformations"))
    if scale is None:
        return (None, None, None)
    outer = _scale(ms.get("coordinateTransformations"))
    if outer is not None:
        scale = [a * b for a, b in zip(scale, outer)]
    size: Dict[str, Optional[float]] = {}
    for axis, value in zip(axes, scale):
        factor = _UM_PER_UNIT.get(str(axis.get("unit", "")).lower())  # no unit: the size is not known
        size[axis["name"].upper()] = float(f"{value * factor:.10g}") if factor and value > 0 else None
    return (size.get("Z"), size.get("Y"), size.get("X"))


def open_image(path: Path) -> Image:
    """Level 0 of the first multiscale image as a lazy (T, C, Z, Y, X) dask array, with its pixel size."""
    ms = multiscale(path)
    _, attrs = _group(path)
    # 0.4/0.5: a list of {"name", "type", "unit"}; 0.3: a list of names; 0.1/0.2: always t, c, z, y, x
    axes = [a if isinstance(a, dict) else {"name": a} for a in ms.get("axes", ["t", "c", "z", "y", "x"])]
    try:
        array = _level0(path)
    except FileFormatError:
        raise
    except Exception as exc:
        raise FileFormatError(f"{path}: cannot open the full-resolution array ({type(exc).__name__}: "
                              f"{' '.join(str(exc).split())}); the folder is incomplete or corrupt") from None
    names = "".join(str(a["name"]).upper()[:1] for a in axes)
    if len(names) != array.ndim:
        raise FileFormatError(f"{path}: the multiscales metadata names {len(names)} axes but the array has "
                              f"{array.ndim}; the OME-Zarr metadata is inconsistent")
    data = _lazy(path, array, names, array.chunks, opener=_level0)
    channels = attrs.get("omero", {}).get("channels", []) if isinstance(attrs.get("omero"), dict) else []
    return Image(
        data=_to_tczyx(data, names, path, "OME-Zarr"),
        pixel_size=_pixel_size(ms, axes),
        axes_source=names,
        path=path,
        channel_names=tuple((ch.get("label") or None) if isinstance(ch, dict) else None for ch in channels),
    )
