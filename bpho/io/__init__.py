"""Reading microscope files into (T, C, Z, Y, X) arrays, and writing ImageJ TIFF and CZI.

The only place in bpho that knows about file formats: CZI (pylibCZIrw), TIFF, ImageJ and
OME-TIFF (tifffile), and OME-Zarr folders (NAME.zarr, OME-NGFF 0.4 and 0.5). Every reader
returns an `Image` whose `data` has axes (T, C, Z, Y, X), singleton axes kept, and whose
`pixel_size` is (z, y, x) in micrometres, each None where the file does not say.

`open_image(path, scene)` reads nothing but the file's structure and metadata: its `data`
is a dask array whose chunks are at most one (t, c, z) plane and at most about
2048 x 2048 pixels (or the file's own tiles or strips), so a region such as
``np.asarray(img.data[t, c, z, y0:y1, :])`` reads only the chunks it touches, and images
larger than memory can be processed chunk by chunk. `read(path, scene)` is the same
image computed into a numpy array.

A file that is empty, truncated, not what its name claims, or of an unknown type
raises `bpho.errors.FileFormatError` naming the file and the problem.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Tuple

import numpy as np

from bpho.errors import FileFormatError

PixelSize = Tuple[Optional[float], Optional[float], Optional[float]]
AXES = "TCZYX"
SUFFIXES = {".czi": "czi", ".tif": "tiff", ".tiff": "tiff"}
FOLDER_SUFFIXES = {".zarr": "ome-zarr"}  # NAME.zarr and NAME.ome.zarr folders
CHUNK = 2048  # largest chunk side in Y and X (pixels) where the file itself has no smaller tiles

_MAGIC = {
    "czi": (b"ZISRAWFILE",),
    "tiff": (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"),
}


@dataclass
class Image:
    """One image (one scene of a file).

    data: array with axes (T, C, Z, Y, X), the file's own dtype: a numpy array from `read`,
        a lazy dask array from `open_image`.
    pixel_size: (z, y, x) in micrometres; an element is None where the file does not say.
    axes_source: the file's own axes string (tifffile's spelling for TIFF, e.g. "TZCYX"; the
        CZI dimensions, e.g. "STCZYX0"; the axis names for OME-Zarr).
    path: the file it came from.
    scene: the scene index for multi-scene CZI files, else 0.
    n_scenes: how many scenes the file holds.
    channel_names: one name per channel as the file's metadata gives it (None where it gives
        none; empty when the reader does not know).
    """

    data: Any  # np.ndarray or dask.array.Array
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


def image_name(path: Path) -> str:
    """An image's name without its suffixes: ``cell`` for cell.czi, cell.tif, cell.ome.tif and cell.ome.zarr."""
    name = path.name[:-len(".ome.zarr")] if path.name.endswith(".ome.zarr") else path.stem
    return name[:-4] if name.endswith(".ome") else name


def file_kind(path: Path) -> str:
    """'czi', 'tiff' or 'ome-zarr', after checking that the file exists and its bytes agree with its name."""
    path = Path(path)
    if path.suffix.lower() in FOLDER_SUFFIXES:
        from bpho.io import omezarr

        omezarr.multiscale(path)  # a clear error for a missing folder or one without OME-NGFF metadata
        return FOLDER_SUFFIXES[path.suffix.lower()]
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise FileFormatError(
            f"{path}: unknown file type {path.suffix!r}; bpho reads .czi, .tif, .tiff and .zarr (OME-Zarr)"
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
    """How many scenes a file holds (1 for TIFF and OME-Zarr)."""
    path = Path(path)
    if file_kind(path) == "czi":
        from bpho.io import czi

        return czi.count_scenes(path)
    return 1


def open_image(path, scene: Optional[int] = None) -> Image:
    """Open one image lazily: `data` is a (T, C, Z, Y, X) dask array that reads nothing until computed.

    Parameters
    ----------
    path : file (.czi, .tif, .tiff) or OME-Zarr folder (.zarr).
    scene : for a multi-scene CZI, the scene; leaving it out is an error there, so no scene
        is silently dropped (use `read_scenes` for all of them). TIFF and OME-Zarr have one.

    Returns
    -------
    Image whose `data` chunks are at most one (t, c, z) plane and, in Y and X, the file's
    tiles or strips grouped up to `CHUNK` pixels (CZI and uncompressed TIFF: `CHUNK`).
    Structural problems raise `FileFormatError` here; a chunk that cannot be decoded (a file
    truncated or corrupt after its header) raises it when that chunk is computed.
    """
    path = Path(path)
    kind = file_kind(path)
    if kind == "czi":
        from bpho.io import czi

        return czi.open_image(path, scene=scene)
    if scene not in (None, 0):
        raise FileFormatError(f"{path}: {'TIFF files' if kind == 'tiff' else 'OME-Zarr images'} have one scene; "
                              f"scene={scene} does not exist")
    if kind == "tiff":
        from bpho.io import tiff

        return tiff.open_image(path)
    from bpho.io import omezarr

    return omezarr.open_image(path)


def read(path, scene: Optional[int] = None) -> Image:
    """Read one image as (T, C, Z, Y, X) into memory: `open_image(path, scene)` computed.

    For a multi-scene CZI, `scene` picks the scene; leaving it out is an error there,
    so no scene is silently dropped (use `read_scenes` for all of them).
    """
    img = open_image(path, scene)
    # synchronous: no thread pool, so a process forked after a read (the dataset builder's workers) can read
    return dataclasses.replace(img, data=np.asarray(img.data.compute(scheduler="synchronous")))


class _Guarded:
    """An array-like over a file (shape, dtype, numpy basic indexing) for `dask.array.from_array`.

    A failure while reading becomes one `FileFormatError` naming the file. With `opener`, the
    array is (re)opened by `opener(path)` in the process that reads and is not pickled, so dask
    can send the object to other processes.
    """

    def __init__(self, path: Path, array: Any, opener: Optional[Callable[[Path], Any]] = None):
        self.path, self._array, self._opener = path, array, opener
        self.shape, self.dtype = tuple(int(n) for n in array.shape), np.dtype(array.dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, key) -> np.ndarray:
        try:
            if self._array is None:
                self._array = self._opener(self.path)  # type: ignore[misc]
                if tuple(self._array.shape) != self.shape:
                    raise ValueError(f"the image is now {tuple(self._array.shape)}, was {self.shape} when opened")
            return np.asarray(self._array[key])
        except FileFormatError:
            raise
        except Exception as exc:
            raise FileFormatError(
                f"{self.path}: cannot read image data ({type(exc).__name__}: {' '.join(str(exc).split())}); "
                "the file is probably truncated or corrupt, copy it again from the source"
            ) from None

    def __getstate__(self) -> Dict[str, Any]:
        return {**self.__dict__, "_array": None} if self._opener else dict(self.__dict__)


def _lazy(path: Path, array: Any, axes: str, file_chunks: Optional[Sequence[int]] = None,
          opener: Optional[Callable[[Path], Any]] = None):
    """`array` (axes named by `axes`) as a dask array: chunks of one index on every axis but
    Y, X and S (colour samples, kept whole), and in Y and X the file's chunks grouped up to `CHUNK`."""
    import dask.array as da

    chunks = []
    for i, (n, a) in enumerate(zip(array.shape, axes)):
        if a in "YX":
            f = int(file_chunks[i]) if file_chunks else CHUNK
            chunks.append(min(int(n), f if f >= CHUNK else f * (CHUNK // f)))
        else:
            chunks.append(int(n) if a == "S" else 1)
    source = _Guarded(path, array, opener)
    return da.from_array(source, chunks=tuple(chunks), lock=False, fancy=False,
                         meta=np.empty((0,) * source.ndim, source.dtype))


def _to_tczyx(data, axes: str, path: Path, kind: str, to_bpho: Optional[Dict[str, str]] = None):
    """`data` (numpy or dask) with axes `axes` as (T, C, Z, Y, X): axes renamed by `to_bpho`,
    singleton axes bpho has no name for dropped, missing axes added."""
    to_bpho = to_bpho or {a: a for a in AXES}
    mapped = [to_bpho.get(a) for a in axes]
    for a, m, n in zip(axes, mapped, data.shape):
        if m is None and n > 1:
            raise FileFormatError(f"{path}: {kind} axis {a!r} (size {n}) is not supported")
    data = data[tuple(slice(None) if m is not None else 0 for m in mapped)]
    mapped = [m for m in mapped if m is not None]
    if len(set(mapped)) != len(mapped):
        # e.g. both channels and RGB samples, or pages and slices: refuse rather than guess
        raise FileFormatError(f"{path}: {kind} axes {axes!r} map twice onto one of {AXES}; not supported")
    for a in AXES:
        if a not in mapped:
            data = data[..., None]
            mapped.append(a)
    return data.transpose([mapped.index(a) for a in AXES])


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


__all__ = ["write_czi", "Image", "open_image", "read", "read_scenes", "count_scenes", "write_imagej", "file_kind",
           "AXES"]
