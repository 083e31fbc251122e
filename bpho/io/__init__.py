"""Reading microscope files into (T, C, Z, Y, X) arrays, and writing ImageJ TIFF.

The only place in bpho that knows about file formats. Every reader returns an
`Image` whose `data` has axes (T, C, Z, Y, X), singleton axes kept, and whose
`pixel_size` is (z, y, x) in micrometres, each None where the file does not say.

A file that is empty, truncated, not what its name claims, or of an unknown type
raises `bpho.errors.FileFormatError` naming the file and the problem.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Tuple

import numpy as np

from bpho.errors import FileFormatError

PixelSize = Tuple[Optional[float], Optional[float], Optional[float]]
AXES = "TCZYX"
SUFFIXES = {".czi": "czi", ".tif": "tiff", ".tiff": "tiff"}

_MAGIC = {
    "czi": (b"ZISRAWFILE",),
    "tiff": (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"),
}


@dataclass
class Image:
    """One image (one scene of a file).

    data: array with axes (T, C, Z, Y, X), the file's own dtype.
    pixel_size: (z, y, x) in micrometres; an element is None where the file does not say.
    axes_source: the file's own axes string (czifile's or tifffile's spelling).
    path: the file it came from.
    scene: the scene index for multi-scene CZI files, else 0.
    n_scenes: how many scenes the file holds.
    channel_names: one name per channel as the file's metadata gives it (None where it gives
        none; empty when the reader does not know).
    """

    data: np.ndarray
    pixel_size: PixelSize
    axes_source: str
    path: Path
    scene: int = 0
    n_scenes: int = 1
    channel_names: Tuple[Optional[str], ...] = ()

    def channel_name(self, index: int) -> Optional[str]:
        """The name of channel `index` in the file's metadata, or None."""
        return self.channel_names[index] if index < len(self.channel_names) else None

    @property
    def rgb(self) -> bool:
        """Colour samples (an RGB picture, e.g. a screenshot or a JPEG-like export), not grey channels."""
        return self.path.suffix.lower() in (".tif", ".tiff") and "S" in self.axes_source

    def check_grey(self) -> "Image":
        """Return the image itself if it holds grey channels; FileFormatError for an RGB picture."""
        from bpho.errors import FileFormatError

        if self.rgb:
            raise FileFormatError(f"{self.path}: an RGB picture, not grey microscopy channels; export the raw "
                                  "channels (in Fiji: Image > Color > Split Channels, save each as TIFF)")
        return self

    @property
    def shape(self) -> Tuple[int, int, int, int, int]:
        """(T, C, Z, Y, X)."""
        return tuple(int(n) for n in self.data.shape)  # type: ignore[return-value]


def file_kind(path: Path) -> str:
    """'czi' or 'tiff', after checking that the file exists and its bytes agree with its name."""
    path = Path(path)
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise FileFormatError(
            f"{path}: unknown file type {path.suffix!r}; bpho reads .czi, .tif and .tiff"
        )
    if not path.is_file():
        raise FileFormatError(f"{path}: no such file")
    size = path.stat().st_size
    if size == 0:
        raise FileFormatError(f"{path}: the file is empty (0 bytes)")
    with open(path, "rb") as fh:
        head = fh.read(16)
    if not head.startswith(_MAGIC[kind]):
        raise FileFormatError(
            f"{path}: not a {kind.upper()} file (its first bytes are {head[:10]!r}); "
            "check that the file was exported in the format its name claims"
        )
    return kind


def read_scenes(path) -> Iterator[Image]:
    """Yield every scene of a file, one `Image` each (TIFF files have one scene)."""
    path = Path(path)
    n = count_scenes(path)
    for scene in range(n):
        yield read(path, scene=scene)


def count_scenes(path) -> int:
    """How many scenes a file holds (1 for TIFF)."""
    path = Path(path)
    if file_kind(path) == "czi":
        from bpho.io import czi

        return czi.count_scenes(path)
    return 1


def read(path, scene: Optional[int] = None) -> Image:
    """Read one image as (T, C, Z, Y, X).

    For a multi-scene CZI, `scene` picks the scene; leaving it out is an error there,
    so no scene is silently dropped (use `read_scenes` for all of them).
    """
    path = Path(path)
    kind = file_kind(path)
    if kind == "czi":
        from bpho.io import czi

        return czi.read(path, scene=scene)
    from bpho.io import tiff

    if scene not in (None, 0):
        raise FileFormatError(f"{path}: TIFF files have one scene; scene={scene} does not exist")
    return tiff.read(path)


def open_image(path, scene: Optional[int] = None) -> Image:
    """Placeholder until the lazy readers land: `read`."""
    return read(path, scene)


def write_imagej(path, data: np.ndarray, pixel_size: PixelSize = (None, None, None),
                 time_interval: Optional[float] = None) -> Path:
    """Write (T, C, Z, Y, X) `data` as an ImageJ hyperstack TIFF that Fiji opens with axes and scale.

    pixel_size: (z, y, x) in micrometres (elements may be None). time_interval: seconds.
    float64 is stored as float32 and int32/uint32 are refused (ImageJ reads uint8,
    uint16 and float32). The file is written to a temporary name and renamed when
    complete.
    """
    from bpho.io import tiff

    return tiff.write_imagej(Path(path), data, pixel_size, time_interval)


def write_czi(path, data: np.ndarray, pixel_size: PixelSize = (None, None, None),
              channel_names=None, compression: Optional[str] = None) -> Path:
    """Write (T, C, Z, Y, X) `data` as a real CZI file (pylibCZIrw), with pixel size in micrometres."""
    from bpho.io import czi

    return czi.write(Path(path), data, pixel_size, channel_names, compression)


__all__ = ["write_czi", "Image", "read", "read_scenes", "count_scenes", "write_imagej", "file_kind", "AXES"]
