"""bpho.io.open_image on real files: lazy (T, C, Z, Y, X) dask arrays read chunk by chunk (issue #22).

CZI written by pylibCZIrw (and compared with czifile, the reader bpho used before), TIFF
written by tifffile, OME-Zarr written by ome-zarr-py.
"""

from __future__ import annotations

import multiprocessing
import pickle
import subprocess
import sys
from pathlib import Path

import czifile
import numpy as np
import pytest
import tifffile
import zarr
from ome_zarr.format import FormatV04, FormatV05
from ome_zarr.writer import write_image
from pylibCZIrw import czi as pyczi

from bpho import io
from bpho.errors import FileFormatError

pytestmark = pytest.mark.unit

COMPRESSIONS = [None, "zstd0:ExplicitLevel=1", "zstd1:ExplicitLevel=1;PreProcess=HiLoByteUnpack"]


def _planes(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.normal(100, 30, shape).astype(dtype)
    # smooth-ish values with noise: zstd really compresses them (random bits would be stored raw)
    ramp = np.add.outer(np.arange(shape[-2]), np.arange(shape[-1])) % 200
    return (ramp + rng.integers(0, 50, shape)).astype(dtype)


def _czifile_scenes(path):
    """The reference: czifile's own assembly (bpho's reader before pylibCZIrw), cut into scenes.

    czifile places all scenes in one array over their union; the scenes are written near each other
    here so that stays small. Returns {scene: (T, C, Z, Y, X)}, RGB samples as channels."""
    with czifile.CziFile(str(path)) as f:
        union = f.asarray()  # axes STCZYX0, origin at the union's top-left corner
        assert f.axes == "STCZYX0"
        origin = f.start[f.axes.index("Y")], f.start[f.axes.index("X")]
        boxes = {}
        for e in f.subblock_directory:
            s, y, x = (e.start[e.axes.index(a)] for a in "SYX")
            h, w = e.shape[e.axes.index("Y")], e.shape[e.axes.index("X")]
            y0, x0, y1, x1 = boxes.get(s, (y, x, y + h, x + w))
            boxes[s] = (min(y0, y), min(x0, x), max(y1, y + h), max(x1, x + w))
    out = {}
    for s, (y0, x0, y1, x1) in boxes.items():
        part = union[s, ..., y0 - origin[0]:y1 - origin[0], x0 - origin[1]:x1 - origin[1], :]
        out[s] = np.moveaxis(part[:, 0], -1, 1) if part.shape[-1] > 1 else part[..., 0]
    return out


@pytest.mark.parametrize("compression", COMPRESSIONS, ids=["raw", "zstd0", "zstd1"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_czi_pylibczirw_reads_what_czifile_read(tmp_path, dtype, compression):
    """Several scenes (each with its own T/C/Z planes and stage position), every scene compared with the
    array written and, uncompressed, with czifile's reading (czifile 2019 cannot decode zstd)."""
    scenes = [_planes((2, 3, 2, 24 + 4 * s, 36 - 2 * s), dtype, seed=s) for s in range(3)]
    path = tmp_path / "scenes.czi"
    with pyczi.create_czi(str(path), compression_options=compression) as w:
        for s, data in enumerate(scenes):
            for t, c, z in np.ndindex(*data.shape[:3]):
                w.write(data[t, c, z], plane={"T": t, "C": c, "Z": z}, scene=s, location=(5 + 50 * s, 7 - 40 * s))
        w.write_metadata(scale_x=1e-7, scale_y=1e-7, scale_z=3e-7, channel_names={0: "a", 1: "b", 2: "c"})
    reference = _czifile_scenes(path) if compression is None else None
    assert io.count_scenes(path) == 3
    for s, data in enumerate(scenes):
        img = io.open_image(path, scene=s)
        assert img.data.dtype == dtype and img.shape == data.shape
        np.testing.assert_array_equal(img.data.compute(), data)
        np.testing.assert_array_equal(io.read(path, scene=s).data, data)
        if reference is not None:
            np.testing.assert_array_equal(img.data.compute(), reference[s])
        assert img.pixel_size == pytest.approx((0.3, 0.1, 0.1)) and img.channel_names == ("a", "b", "c")
        assert (img.scene, img.n_scenes, img.axes_source) == (s, 3, "STCZYX0")


@pytest.mark.parametrize("compression", COMPRESSIONS, ids=["raw", "zstd0", "zstd1"])
def test_czi_written_like_the_demo(tmp_path, compression):
    """The demo writes through io.write_czi: one scene, named channels, pixel size."""
    data = _planes((3, 2, 2, 40, 52), np.uint16, seed=3)
    path = io.write_czi(tmp_path / "demo.czi", data, (0.2, 0.04, 0.04), channel_names={0: "mito", 1: "er"},
                        compression=compression)
    img = io.read(path)
    np.testing.assert_array_equal(img.data, data)
    if compression is None:
        np.testing.assert_array_equal(img.data, _czifile_scenes(path)[0])
    assert img.pixel_size == pytest.approx((0.2, 0.04, 0.04)) and img.channel_names == ("mito", "er")


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_rgb_czi_channels_are_r_g_b(tmp_path, dtype):
    """Bgr24/Bgr48 pixels: pylibCZIrw returns them B, G, R; bpho's channels are R, G, B as czifile gave."""
    bgr = _planes((2, 20, 30, 3), dtype, seed=4)  # two Z planes of colour pixels, as pylibCZIrw takes them
    path = tmp_path / "rgb.czi"
    with pyczi.create_czi(str(path)) as w:
        for z in range(2):
            w.write(bgr[z], plane={"T": 0, "C": 0, "Z": z})
    img = io.read(path)
    assert img.shape == (1, 3, 2, 20, 30)
    np.testing.assert_array_equal(img.data[0], np.moveaxis(bgr[..., ::-1], -1, 0))
    np.testing.assert_array_equal(img.data, _czifile_scenes(path)[0])
    np.testing.assert_array_equal(io.open_image(path).data[0, 2, 1, 3:9, 4].compute(), bgr[1, 3:9, 4, 0])


def test_czi_areas_without_subblocks_read_as_zeros(tmp_path):
    """A scene of two tiles with a gap between them, and a T index with one tile only."""
    a, b = _planes((2, 16, 16), np.uint16, seed=5) + 1  # no zeros in the written pixels
    path = tmp_path / "gaps.czi"
    with pyczi.create_czi(str(path)) as w:
        w.write(a, plane={"T": 0}, location=(0, 0))
        w.write(b, plane={"T": 0}, location=(24, 8))
        w.write(b, plane={"T": 1}, location=(24, 8))
    img = io.read(path)
    assert img.shape == (2, 1, 1, 24, 40)
    expected = np.zeros((2, 24, 40), np.uint16)
    expected[0, :16, :16], expected[:, 8:, 24:] = a, b
    np.testing.assert_array_equal(img.data[:, 0, 0], expected)


def _write_tiff_sparse(path, shape, rows):
    """An uncompressed contiguous TIFF (as Fiji saves) of `shape`, written without the zeros (sparse),
    with values in `rows`."""
    tifffile.imwrite(path, shape=shape, dtype=np.uint16)  # header only: the pixel bytes are a hole
    mm = tifffile.memmap(path, mode="r+")
    mm[rows] = _planes((rows.stop - rows.start, shape[-1]), np.uint16, seed=6)
    mm.flush()
    del mm


def _write_tiff_tiled(path, shape, rows):
    data = np.zeros(shape, np.uint16)
    data[rows] = _planes((rows.stop - rows.start, shape[-1]), np.uint16, seed=6)
    tifffile.imwrite(path, data, tile=(256, 256), compression="zlib")


def _write_czi_tiled(path, shape, rows):
    """A mosaic of 1024 x 1024 zstd tiles, as ZEN stores large scans."""
    data = np.zeros(shape, np.uint16)
    data[rows] = _planes((rows.stop - rows.start, shape[-1]), np.uint16, seed=6)
    with pyczi.create_czi(str(path), compression_options="zstd1:ExplicitLevel=1") as w:
        for y in range(0, shape[0], 1024):
            for x in range(0, shape[1], 1024):
                w.write(data[y:y + 1024, x:x + 1024], plane={"T": 0, "C": 0, "Z": 0}, location=(x, y))


def _write_omezarr(path, shape, rows):
    data = np.zeros(shape, np.uint16)
    data[rows] = _planes((rows.stop - rows.start, shape[-1]), np.uint16, seed=6)
    write_image(data, str(path), axes="yx", scale_factors=[], storage_options={"chunks": (1024, 1024)})


# Run in a fresh process, so that its peak resident memory (which counts what libCZI and the memory
# map touch, not only Python's allocations) measures the band read alone.
_BAND = """
import re, sys
import dask, dask.array, numpy as np
dask.config.set(scheduler="synchronous")  # chunk by chunk: what one read holds, not how many threads run
from bpho import io
from bpho.io import czi, omezarr, tiff  # imported before measuring

def peak():  # this process's peak resident memory (VmHWM; ru_maxrss would include the parent's)
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\\s+(\\d+) kB", f.read()).group(1)) * 1024

before = peak()
img = io.open_image(sys.argv[1])
np.asarray(img.data[0, 0, 0, :8, :8])  # the first read sets up: lazy imports, dask's threads, the decoder
first = peak()
band = np.asarray(img.data[0, 0, 0, 4010:4074, :])
np.save(sys.argv[2], band)
print(first - before, peak() - first)
"""


@pytest.mark.parametrize("writer, name", [(_write_tiff_sparse, "big.tif"), (_write_tiff_tiled, "tiled.tif"),
                                          (_write_czi_tiled, "big.czi"), (_write_omezarr, "big.ome.zarr")],
                         ids=["tiff-contiguous", "tiff-tiled", "czi-mosaic", "ome-zarr"])
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="measures memory with Linux's /proc")
def test_a_row_band_of_a_large_plane_reads_only_its_chunks(tmp_path, writer, name):
    """8192 x 8192 uint16 (128 MiB a plane): opening the file and reading a corner, then a 64-row band,
    each grow the reading process's peak memory by a fraction of the plane; the band is `io.read`'s rows."""
    shape, rows = (8192, 8192), slice(4000, 4100)
    path = tmp_path / name
    writer(path, shape, rows)
    img = io.open_image(path)
    assert img.shape == (1, 1, 1) + shape and img.data.dtype == np.uint16
    assert max(img.data.chunksize[3:]) <= 2048 and img.data.chunksize[:3] == (1, 1, 1)

    proc = subprocess.run([sys.executable, "-c", _BAND, str(path), str(tmp_path / "band.npy")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    first, grown = (int(n) for n in proc.stdout.split())
    plane_bytes = shape[0] * shape[1] * 2
    assert first < plane_bytes / 2, f"the first read (of 8 x 8 pixels) grew the peak memory by {first / 2**20:.1f} MiB"
    assert grown < plane_bytes / 4, f"reading a 64-row band grew the peak memory by {grown / 2**20:.1f} MiB"
    band = np.load(tmp_path / "band.npy")
    assert band.shape == (64, 8192) and band.any()
    np.testing.assert_array_equal(band, io.read(path).data[0, 0, 0, 4010:4074, :])


def test_subsampled_plane_and_pickled_graph(tmp_path):
    """`data[t, c, z, ::k, ::k]` (predict's percentile sample) and a graph sent to another process
    (pickled: the open TIFF store is reopened there) read the same pixels."""
    data = _planes((2, 1, 3, 300, 260), np.uint16, seed=7)
    path = tmp_path / "tiled.ome.tif"
    tifffile.imwrite(path, data, ome=True, tile=(64, 64), compression="zlib", metadata={"axes": "TCZYX"})
    img = io.open_image(path)
    np.testing.assert_array_equal(img.data[1, 0, 2, ::7, ::5].compute(), data[1, 0, 2, ::7, ::5])
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(img.data)).compute(), data)
    czi = io.write_czi(tmp_path / "x.czi", data, (None, 0.1, 0.1))
    lazy = io.open_image(czi).data
    np.testing.assert_array_equal(lazy[1, 0, 2, ::-3, 7:200:9].compute(), data[1, 0, 2, ::-3, 7:200:9])
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(lazy)).compute(), data)


@pytest.mark.parametrize("fmt", [FormatV04(), FormatV05()], ids=["ngff-0.4-zarr-v2", "ngff-0.5-zarr-v3"])
def test_ome_zarr_written_by_ome_zarr_py(tmp_path, fmt):
    """Level 0 of a two-level pyramid, axes tczyx, units micrometre and nanometre, channel labels."""
    data = _planes((3, 2, 4, 40, 50), np.uint16, seed=8)  # TCZYX
    path = tmp_path / "img.ome.zarr"
    channels = [{"label": n, "color": "FFFFFF", "window": {"start": 0, "end": 300, "min": 0, "max": 65535}}
                for n in ("mito", "er")]
    write_image(data, str(path), axes="tczyx", fmt=fmt, scale={"t": 1.0, "c": 1.0, "z": 0.25, "y": 40.0, "x": 35.0},
                axes_units={"z": "micrometer", "y": "nanometer", "x": "nanometer"}, scale_factors=[2],
                omero={"channels": channels}, storage_options={"chunks": (1, 1, 2, 32, 32)})
    assert io.file_kind(path) == "ome-zarr" and io.count_scenes(path) == 1
    img = io.open_image(path)
    # level 0 (not the half-size level), one plane a chunk: the file's 32 x 32 chunks grouped
    assert img.shape == data.shape and img.data.chunksize == (1, 1, 1, 40, 50)
    np.testing.assert_array_equal(img.data[2, 1, 3].compute(), data[2, 1, 3])
    np.testing.assert_array_equal(io.read(path).data, data)
    assert img.pixel_size == pytest.approx((0.25, 0.04, 0.035))
    assert img.channel_names == ("mito", "er") and img.axes_source == "TCZYX"
    with pytest.raises(FileFormatError, match="one scene"):
        io.read(path, scene=1)


def test_ome_zarr_axes_mapped_by_name(tmp_path):
    """Axes the file leaves out are added; a 2-D image without units has no known pixel size."""
    data = _planes((2, 30, 20), np.uint16, seed=9)
    path = tmp_path / "cyx.zarr"
    write_image(data, str(path), axes="cyx", scale_factors=[])
    img = io.read(path)
    assert img.shape == (1, 2, 1, 30, 20) and img.axes_source == "CYX"
    np.testing.assert_array_equal(img.data[0, :, 0], data)
    assert img.pixel_size == (None, None, None) and img.channel_names == ()


def test_zarr_folder_without_multiscales_is_refused(tmp_path):
    """A plain Zarr group (no OME-NGFF metadata): one line naming the folder, from every entry point."""
    path = tmp_path / "plain.zarr"
    zarr.open_group(str(path), mode="w").create_array("0", shape=(10, 10), dtype="uint16")
    for call in (io.file_kind, io.open_image, io.read, io.count_scenes):
        with pytest.raises(FileFormatError) as err:
            call(path)
        message = str(err.value)
        assert message.startswith(f"{path}: ") and "multiscales" in message and "\n" not in message
    with pytest.raises(FileFormatError, match="no such folder"):
        io.read(tmp_path / "missing.zarr")


def _truncate(path, keep):
    path.write_bytes(path.read_bytes()[:keep])


def test_truncated_tiff_fails_when_its_chunk_is_read(tmp_path):
    """Opening reads the structure only; the cut tile fails when computed, as one line naming the file."""
    data = _planes((2, 128, 128), np.uint16, seed=10)  # two pages: Z
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, data, tile=(64, 64), compression="zlib")  # the last tile's bytes end the file
    _truncate(path, path.stat().st_size - 200)
    img = io.open_image(path)  # the structure is intact
    np.testing.assert_array_equal(img.data[0, 0, 0].compute(), data[0])
    with pytest.raises(FileFormatError) as err:
        img.data[0, 0, 1].compute()
    message = str(err.value)
    assert message.startswith(f"{path}: cannot read image data") and "corrupt" in message and "\n" not in message


def test_truncated_zarr_chunk_fails_when_it_is_read(tmp_path):
    """A chunk file cut in half: the other plane reads, this one fails as one line naming the folder."""
    data = _planes((1, 1, 2, 64, 64), np.uint16, seed=11)
    path = tmp_path / "cut.ome.zarr"
    write_image(data, str(path), axes="tczyx", scale_factors=[], storage_options={"chunks": (1, 1, 1, 64, 64)})
    level0 = path / zarr.open_group(str(path), mode="r").attrs["ome"]["multiscales"][0]["datasets"][0]["path"]
    chunk = level0 / "c" / "0" / "0" / "1" / "0" / "0"  # Zarr v3's key of chunk (t, c, z, y, x) = (0, 0, 1, 0, 0)
    _truncate(chunk, chunk.stat().st_size // 2)  # z=1's chunk
    img = io.open_image(path)
    np.testing.assert_array_equal(img.data[0, 0, 0].compute(), data[0, 0, 0])
    with pytest.raises(FileFormatError) as err:
        io.read(path)
    message = str(err.value)
    assert message.startswith(f"{path}: cannot read image data") and "\n" not in message


def test_corrupt_czi_subblock_fails_when_its_plane_is_read(tmp_path):
    """A zstd subblock whose frame header is zeroed: libCZI's error becomes one line naming the file."""
    data = _planes((1, 1, 2, 64, 64), np.uint16, seed=12)
    path = io.write_czi(tmp_path / "bad.czi", data, (None, 0.1, 0.1), compression="zstd0:ExplicitLevel=1")
    raw = bytearray(path.read_bytes())
    second = raw.find(b"ZISRAWSUBBLOCK", raw.find(b"ZISRAWSUBBLOCK") + 1)
    frame = raw.find(b"\x28\xb5\x2f\xfd", second)  # the zstd frame of plane z=1
    raw[frame:frame + 8] = bytes(8)
    path.write_bytes(bytes(raw))
    img = io.open_image(path)
    np.testing.assert_array_equal(img.data[0, 0, 0].compute(), data[0, 0, 0])
    with pytest.raises(FileFormatError) as err:
        img.data[0, 0, 1].compute()
    message = str(err.value)
    assert message.startswith(f"{path}: cannot read image data") and "\n" not in message


def _read_in_child(path, queue):
    queue.put(io.read(path).data)


@pytest.mark.parametrize("name", ["x.czi", "x.tif", "x.ome.zarr"])
def test_a_process_forked_after_a_read_reads_too(tmp_path, name):
    """The dataset builder forks its workers after reading files: a thread pool left by `io.read` in
    the parent (dask's threaded scheduler) would deadlock them."""
    data = _planes((1, 1, 2, 32, 32), np.uint16, seed=13)
    path = tmp_path / name
    if name.endswith(".czi"):
        io.write_czi(path, data, (None, 0.1, 0.1))
    elif name.endswith(".tif"):
        tifffile.imwrite(path, data[0, 0], tile=(16, 16), compression="zlib")
    else:
        write_image(data, str(path), axes="tczyx", scale_factors=[])
    np.testing.assert_array_equal(io.read(path).data, data)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_read_in_child, args=(path, queue))
    child.start()
    try:
        np.testing.assert_array_equal(queue.get(timeout=60), data)
    finally:
        child.join(5)
        if child.is_alive():
            child.kill()
