"""Zeiss CZI through czifile, one scene at a time.

czifile's own `asarray` allocates the bounding box of all scenes (huge for scenes at
distant stage positions) and swallows decoding errors in its worker threads, so the
subblocks are placed here, one scene at a time, and every failure is raised. czifile
2019 has no zstd decoder (ZEN's default compression since 3.x); zstd0/zstd1 subblocks
are decoded here with imagecodecs.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import List, Optional

import czifile
import imagecodecs
import numpy as np

from bpho.errors import FileFormatError
from bpho.io import Image, PixelSize
from bpho.paths import atomic_file

_ZSTD0, _ZSTD1 = 5, 6
# Dimensions bpho maps to (T, C, Z, Y, X); S is the scene; '0' holds the samples of a pixel.
_MAPPED = {"T": 0, "C": 1, "Z": 2, "Y": 3, "X": 4}


def _open(path: Path) -> czifile.CziFile:
    try:
        f = czifile.CziFile(str(path))
        f.subblock_directory  # noqa: B018  (parse the directory now: a truncated file fails here)
    except Exception as exc:  # czifile raises struct.error, ValueError, its own errors...
        raise FileFormatError(
            f"{path}: cannot read the CZI structure ({type(exc).__name__}: {exc}); "
            "the file is probably truncated or corrupt, copy it again from the source"
        ) from None
    return f


def _entries(f, path: Path) -> list:
    # Pyramid levels (subsampled copies for viewers) are skipped: only full-resolution subblocks.
    entries = [e for e in f.subblock_directory if e.pyramid_type == 0 and e.shape == e.stored_shape]
    if not entries:
        raise FileFormatError(f"{path}: the CZI file holds no image subblocks")
    return entries


def _scene_of(entry) -> int:
    axes = entry.axes
    return entry.start[axes.index("S")] if "S" in axes else 0


def count_scenes(path: Path) -> int:
    """How many scenes the CZI file holds."""
    with _open(path) as f:
        return len({_scene_of(e) for e in _entries(f, path)})


def _pixel_size(f, path: Path) -> PixelSize:
    """(z, y, x) in micrometres from Metadata/Scaling (CZI stores metres)."""
    try:
        root = ET.fromstring(f.metadata())
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


def _channel_names(f) -> tuple:
    """Channel names from Metadata/Information/Image/Dimensions/Channels (None where unnamed)."""
    try:
        root = ET.fromstring(f.metadata())
    except Exception:
        return ()
    channels = root.find(".//Information/Image/Dimensions/Channels")
    if channels is None:
        return ()
    return tuple(ch.get("Name") or None for ch in channels.findall("Channel"))


def _decode(entry, path: Path) -> np.ndarray:
    segment = entry.data_segment()
    dtype = np.dtype(entry.dtype).base
    if entry.compression in (_ZSTD0, _ZSTD1):
        raw = segment.data(raw=True)
        tile = _zstd_decode(raw, entry.compression, dtype).reshape(entry.stored_shape)
        if entry.stored_shape[-1] == 3:
            tile = tile[..., ::-1]  # CZI stores BGR; czifile flips its own decodes the same way
    else:
        tile = segment.data(resize=False)
    return np.asarray(tile).reshape(entry.stored_shape)


def _zstd_decode(raw: bytes, compression: int, dtype: np.dtype) -> np.ndarray:
    hilo = False
    if compression == _ZSTD1:
        # zstd1: a small header (size byte, then chunks); chunk 1 flags "hi/lo byte packing",
        # where all low bytes of 16-bit pixels precede all high bytes.
        header = raw[0]
        hilo = header >= 3 and raw[1] == 1 and bool(raw[2] & 1)
        raw = raw[header:]
    data = np.frombuffer(imagecodecs.zstd_decode(raw), np.uint8)
    if hilo:
        half = data.size // 2
        packed = np.empty_like(data)
        packed[0::2], packed[1::2] = data[:half], data[half:]
        data = packed
    return data.view(dtype)


def read(path: Path, scene: Optional[int] = None) -> Image:
    """One scene of a CZI file (default: the only one) as (T, C, Z, Y, X), with its pixel size."""
    with _open(path) as f:
        entries = _entries(f, path)
        scenes = sorted({_scene_of(e) for e in entries})
        if scene is None:
            if len(scenes) > 1:
                raise FileFormatError(
                    f"{path}: the file holds {len(scenes)} scenes; pass scene=0..{len(scenes) - 1} "
                    "or read them all with bpho.io.read_scenes"
                )
            scene = scenes[0]
        elif not 0 <= scene < len(scenes):
            raise FileFormatError(f"{path}: scene {scene} does not exist (the file has {len(scenes)})")
        else:
            scene = scenes[scene]
        mine = [e for e in entries if _scene_of(e) == scene]
        data = _assemble(mine, path)
        return Image(
            data=data,
            pixel_size=_pixel_size(f, path),
            axes_source=f.axes,
            path=path,
            scene=scenes.index(scene),
            n_scenes=len(scenes),
            channel_names=_channel_names(f),
        )


def _assemble(entries: List, path: Path) -> np.ndarray:
    """Place the subblocks of one scene into a (T, C, Z, Y, X) array."""
    lo = np.full(5, np.iinfo(np.int64).max, dtype=np.int64)
    hi = np.full(5, np.iinfo(np.int64).min, dtype=np.int64)
    samples = set()
    placements = []
    for e in entries:
        start, size = np.zeros(5, np.int64), np.ones(5, np.int64)
        for ax, s, n in zip(e.axes, e.start, e.shape):
            if ax in _MAPPED:
                start[_MAPPED[ax]], size[_MAPPED[ax]] = s, n
            elif ax == "0":
                samples.add(n)
            elif ax not in "SB" and (s != 0 or n != 1):
                raise FileFormatError(
                    f"{path}: CZI dimension {ax!r} with more than one index is not supported; "
                    "export the image as separate files per that dimension"
                )
        placements.append((e, start, size))
        lo, hi = np.minimum(lo, start), np.maximum(hi, start + size)
    n_samples = samples.pop() if len(samples) == 1 else None
    if n_samples is None:
        raise FileFormatError(f"{path}: subblocks with different pixel types are not supported")
    shape = hi - lo
    if n_samples > 1:  # RGB pixels: the samples become the channel axis
        if shape[1] != 1:
            raise FileFormatError(f"{path}: RGB pixels in a multi-channel CZI are not supported")
        shape[1] = n_samples
    dtype = np.dtype(entries[0].dtype).base
    out = np.zeros(tuple(int(n) for n in shape), dtype=dtype)
    for e, start, _size in placements:
        try:
            tile = _decode(e, path)
        except FileFormatError:
            raise
        except Exception as exc:
            raise FileFormatError(
                f"{path}: cannot decode an image subblock ({type(exc).__name__}: {exc}); "
                "the file is probably truncated or corrupt"
            ) from None
        # tile axes follow e.axes; reorder to (T, C, Z, Y, X, samples)
        order = [e.axes.index(a) if a in e.axes else None for a in "TCZYX0"]
        keep = [i for i in order if i is not None]
        drop = tuple(i for i in range(tile.ndim) if i not in keep)
        tile = np.squeeze(tile, axis=drop) if drop else tile
        remaining = [i for i in range(len(e.axes)) if i not in drop]
        tile = np.transpose(tile, [remaining.index(i) for i in keep])
        for k, a in enumerate("TCZYX0"):
            if a not in e.axes:
                tile = np.expand_dims(tile, k)
        if n_samples > 1:
            # (T, 1, Z, Y, X, S) -> (T, S, Z, Y, X); CZI stores BGR, czifile already flipped to RGB
            tile = np.moveaxis(tile[:, 0], -1, 1)
        else:
            tile = tile[..., 0]
        index = tuple(slice(s - low, s - low + n) for s, low, n in zip(start, lo, tile.shape))
        if n_samples > 1:
            index = (index[0], slice(None)) + index[2:]
        out[index] = tile
    return out


def write(path: Path, data: np.ndarray, pixel_size: PixelSize, channel_names=None,
          compression: Optional[str] = None) -> Path:
    """Write (T, C, Z, Y, X) `data` as a single-scene CZI with pylibCZIrw, atomically.

    pixel_size: (z, y, x) in micrometres (CZI stores metres). compression: a pylibCZIrw
    option string such as ``"zstd1:ExplicitLevel=1;PreProcess=HiLoByteUnpack"``.
    """
    from pylibCZIrw import czi as pyczi

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
