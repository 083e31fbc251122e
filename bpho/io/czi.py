"""Zeiss CZI through pylibCZIrw (ZEISS's libCZI), one scene at a time, read by region.

pylibCZIrw decodes every compression ZEN writes (zstd0/zstd1 included) and composes the
subblocks of a plane region (mosaic tiles, overlaps) itself; bpho only maps the file's
layout to (T, C, Z, Y, X) and reads one scene's rectangle, so scenes at distant stage
positions never allocate their union. Areas that no subblock covers read as zeros.
"""

from __future__ import annotations

import contextlib
import itertools
import operator
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple

import numpy as np
from pylibCZIrw import czi as pyczi

from bpho.errors import FileFormatError
from bpho.io import Image, PixelSize, _lazy
from bpho.paths import atomic_file

# pylibCZIrw pixel types -> (numpy dtype, samples per pixel); Bgr* are colour pixels, stored B, G, R.
_PIXEL_TYPES = {"Gray8": (np.uint8, 1), "Gray16": (np.uint16, 1), "Gray32Float": (np.float32, 1),
                "Bgr24": (np.uint8, 3), "Bgr48": (np.uint16, 3), "Bgr96Float": (np.float32, 3)}


@contextlib.contextmanager
def _open(path: Path) -> Iterator[pyczi.CziReader]:
    """The open reader; a file libCZI cannot open is a FileFormatError (errors while reading pass through)."""
    stack = contextlib.ExitStack()
    try:
        reader = stack.enter_context(pyczi.open_czi(str(path)))
    except Exception as exc:  # pylibCZIrw raises RuntimeError with libCZI's message
        raise FileFormatError(
            f"{path}: cannot read the CZI structure ({type(exc).__name__}: {_one_line(exc)}); "
            "the file is probably truncated or corrupt, copy it again from the source"
        ) from None
    with stack:
        yield reader


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


class _Layout:
    """Where each scene lies: its plane rectangle (x, y, w, h), its T/C/Z ranges, the pixel type."""

    def __init__(self, reader: pyczi.CziReader, path: Path):
        rects: Dict[int, list] = {}
        tcz: Dict[int, list] = {}
        pixel_types = set()

        def visit(_index, info) -> bool:
            if info.get_zoom() != 1.0:  # pyramid levels (subsampled copies for viewers)
                return True
            coord = info.coordinate.to_dict()
            for dim, value in coord.items():
                if dim not in "TCZS" and value != 0:
                    raise FileFormatError(
                        f"{path}: CZI dimension {dim!r} with more than one index is not supported; "
                        "export the image as separate files per that dimension"
                    )
            scene = coord.get("S", 0)
            r = info.logicalRect
            box = rects.setdefault(scene, [r.x, r.y, r.x + r.w, r.y + r.h])
            box[:] = [min(box[0], r.x), min(box[1], r.y), max(box[2], r.x + r.w), max(box[3], r.y + r.h)]
            index = [coord.get(d, 0) for d in "TCZ"]
            span = tcz.setdefault(scene, index + [i + 1 for i in index])
            span[:] = [min(a, b) for a, b in zip(span[:3], index)] + [max(a, b + 1) for a, b in zip(span[3:], index)]
            pixel_types.add(info.pixelType.name)
            return True

        try:
            reader.enumerate_subblocks(visit)
        except FileFormatError:
            raise
        except Exception as exc:
            raise FileFormatError(f"{path}: cannot read the CZI subblock directory ({type(exc).__name__}: "
                                  f"{_one_line(exc)}); the file is probably truncated or corrupt") from None
        if not rects:
            raise FileFormatError(f"{path}: the CZI file holds no image subblocks")
        if len(pixel_types) != 1:
            raise FileFormatError(f"{path}: subblocks with different pixel types are not supported")
        pixel_type = pixel_types.pop()
        if pixel_type not in _PIXEL_TYPES:
            raise FileFormatError(f"{path}: CZI pixel type {pixel_type} is not supported; "
                                  f"bpho reads {', '.join(_PIXEL_TYPES)}")
        self.dtype, self.samples = np.dtype(_PIXEL_TYPES[pixel_type][0]), _PIXEL_TYPES[pixel_type][1]
        self.scenes = sorted(rects)
        self.rects = {s: (x0, y0, x1 - x0, y1 - y0) for s, (x0, y0, x1, y1) in rects.items()}
        self.tcz = tcz
        if self.samples > 1 and any(span[4] - span[1] > 1 for span in tcz.values()):
            raise FileFormatError(f"{path}: RGB pixels in a multi-channel CZI are not supported")


class _Scene:
    """One scene as a (T, C, Z, Y, X) array-like: numpy basic indexing reads that region with pylibCZIrw.

    Holds only the path and the layout, so dask can send it to other processes; each read opens
    the file (cheap: libCZI reads the subblock directory).
    """

    ndim = 5

    def __init__(self, path: Path, scene: Optional[int], rect: Tuple[int, int, int, int], start: Tuple[int, ...],
                 shape: Tuple[int, ...], dtype: np.dtype, samples: int):
        self.path, self.scene, self.rect, self.start = path, scene, rect, start
        self.shape, self.dtype, self.samples = shape, dtype, samples

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (5 - len(key))
        ranges = []
        for k, n in zip(key, self.shape):
            if isinstance(k, slice):
                ranges.append(range(*k.indices(n)))
            else:
                i = operator.index(k)
                ranges.append(range(i + n if i < 0 else i, (i + n if i < 0 else i) + 1))
        ts, cs, zs, ys, xs = ranges
        out = np.zeros([len(r) for r in ranges], self.dtype)
        if out.size:
            y0, x0 = min(ys), min(xs)
            roi = (self.rect[0] + x0, self.rect[1] + y0, max(xs) + 1 - x0, max(ys) + 1 - y0)
            rows, cols = slice(ys.start - y0, None, ys.step), slice(xs.start - x0, None, xs.step)
            with _open(self.path) as reader:
                for (i, t), (k, z) in itertools.product(enumerate(ts), enumerate(zs)):
                    plane = {"T": self.start[0] + t, "Z": self.start[2] + z}
                    if self.samples > 1:  # colour pixels: samples B, G, R as channels R, G, B
                        tile = reader.read(roi=roi, plane={**plane, "C": self.start[1]}, scene=self.scene)
                        out[i, :, k] = np.moveaxis(tile[rows, cols, ::-1][..., list(cs)], -1, 0)
                        continue
                    for j, c in enumerate(cs):
                        tile = reader.read(roi=roi, plane={**plane, "C": self.start[1] + c}, scene=self.scene)
                        out[i, j, k] = tile[rows, cols, 0]
        drop = tuple(0 if not isinstance(k, slice) else slice(None) for k in key)
        return out[drop]


def count_scenes(path: Path) -> int:
    """How many scenes the CZI file holds."""
    with _open(path) as reader:
        return len(_Layout(reader, path).scenes)


def _pixel_size(xml: str) -> PixelSize:
    """(z, y, x) in micrometres from Metadata/Scaling (CZI stores metres)."""
    try:
        root = ET.fromstring(xml)
    except Exception:
        return (None, None, None)
    found = {}
    for dist in root.iter("Distance"):
        value = dist.findtext("Value")
        try:
            metres = float(value or "")  # no value: ValueError
        except (TypeError, ValueError):
            continue
        if metres > 0:
            found[dist.get("Id")] = float(f"{metres * 1e6:.10g}")  # no 0.19999999999999998
    return (found.get("Z"), found.get("Y"), found.get("X"))


def _channel_names(xml: str) -> tuple:
    """Channel names from Metadata/Information/Image/Dimensions/Channels (None where unnamed)."""
    try:
        root = ET.fromstring(xml)
    except Exception:
        return ()
    channels = root.find(".//Information/Image/Dimensions/Channels")
    if channels is None:
        return ()
    return tuple(ch.get("Name") or None for ch in channels.findall("Channel"))


def open_image(path: Path, scene: Optional[int] = None) -> Image:
    """One scene of a CZI file (default: the only one) as a lazy (T, C, Z, Y, X) dask array."""
    with _open(path) as reader:
        layout = _Layout(reader, path)
        try:
            xml = reader.raw_metadata
        except Exception:
            xml = ""
        has_scenes = bool(reader.scenes_bounding_rectangle_no_pyramid)
    scenes = layout.scenes
    if scene is None:
        if len(scenes) > 1:
            raise FileFormatError(
                f"{path}: the file holds {len(scenes)} scenes; pass scene=0..{len(scenes) - 1} "
                "or read them all with bpho.io.read_scenes"
            )
        scene = 0
    elif not 0 <= scene < len(scenes):
        raise FileFormatError(f"{path}: scene {scene} does not exist (the file has {len(scenes)})")
    s = scenes[scene]
    rect, span = layout.rects[s], layout.tcz[s]
    n_tcz = [b - a for a, b in zip(span[:3], span[3:])]
    if layout.samples > 1:
        n_tcz[1] = layout.samples  # colour pixels: the samples (as R, G, B) become the channel axis
    shape = (*n_tcz, rect[3], rect[2])
    source = _Scene(path, s if has_scenes else None, rect, tuple(span[:3]), shape, layout.dtype, layout.samples)
    return Image(
        data=_lazy(path, source, "TCZYX"),
        pixel_size=_pixel_size(xml),
        axes_source=("S" if has_scenes else "") + "TCZYX0",
        path=path,
        scene=scene,
        n_scenes=len(scenes),
        channel_names=_channel_names(xml),
    )


def write(path: Path, data: np.ndarray, pixel_size: PixelSize, channel_names=None,
          compression: Optional[str] = None) -> Path:
    """Write (T, C, Z, Y, X) `data` as a single-scene CZI with pylibCZIrw, atomically.

    pixel_size: (z, y, x) in micrometres (CZI stores metres). compression: a pylibCZIrw
    option string such as ``"zstd1:ExplicitLevel=1;PreProcess=HiLoByteUnpack"``.
    """
    data = np.asarray(data)
    if data.ndim != 5:
        raise ValueError(f"write_czi expects (T, C, Z, Y, X) data, got shape {data.shape}")
    if data.dtype not in (np.uint8, np.uint16, np.float32):
        raise ValueError(f"CZI holds uint8, uint16 or float32 pixels, not {data.dtype}")
    with atomic_file(Path(path), suffix=".czi") as tmp:
        with pyczi.create_czi(str(tmp), exist_ok=True, compression_options=compression) as writer:
            for t, c, z in np.ndindex(*data.shape[:3]):
                writer.write(np.ascontiguousarray(data[t, c, z]), plane={"T": t, "C": c, "Z": z})
            z_um, y_um, x_um = pixel_size
            writer.write_metadata(
                document_name=Path(path).stem,
                channel_names=channel_names or {},
                scale_x=(x_um or 0.0) * 1e-6,
                scale_y=(y_um or 0.0) * 1e-6,
                scale_z=(z_um or 0.0) * 1e-6,
            )
    return Path(path)
