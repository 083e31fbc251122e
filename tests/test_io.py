"""bpho.io on real files: CZI written by pylibCZIrw, TIFF written by tifffile."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from pylibCZIrw import czi as pyczi

from bpho import io
from bpho.errors import FileFormatError

pytestmark = pytest.mark.unit


def _planes(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.normal(100, 30, shape).astype(dtype)
    return rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype)


@pytest.mark.parametrize(
    "shape, dtype, scale_um",
    [
        ((1, 1, 1, 31, 47), np.uint16, (None, 0.035, 0.035)),
        ((5, 1, 1, 16, 20), np.uint8, (None, 0.1, 0.12)),
        ((2, 3, 4, 17, 13), np.uint16, (0.25, 0.05, 0.05)),
        ((1, 2, 6, 24, 24), np.float32, (0.3, 0.07, 0.07)),
    ],
)
def test_czi_from_pylibczirw_reads_back_exactly(tmp_path, shape, dtype, scale_um):
    data = _planes(shape, dtype)
    path = tmp_path / "x.czi"
    with pyczi.create_czi(str(path)) as w:
        for t, c, z in np.ndindex(*shape[:3]):
            w.write(data[t, c, z], plane={"T": t, "C": c, "Z": z}, location=(40, 12))
        z, y, x = scale_um
        w.write_metadata(scale_x=x * 1e-6, scale_y=y * 1e-6, scale_z=(z or 0) * 1e-6)  # CZI stores metres
    img = io.read(path)
    assert img.data.shape == shape and img.data.dtype == dtype
    np.testing.assert_array_equal(img.data, data)
    assert img.pixel_size[1:] == pytest.approx(scale_um[1:])
    assert img.pixel_size[0] == (pytest.approx(scale_um[0]) if scale_um[0] else None)
    assert img.axes_source.endswith("YX0") and img.path == path and img.n_scenes == 1


def test_multiscene_czi_one_image_per_scene(tmp_path):
    path = tmp_path / "scenes.czi"
    scenes = [_planes((2, 1, 3, 20, 30), np.uint16, seed=s) for s in range(3)]
    with pyczi.create_czi(str(path)) as w:
        for s, data in enumerate(scenes):
            for t, c, z in np.ndindex(*data.shape[:3]):
                # stage positions far apart: the reader must not allocate the union of scenes
                w.write(data[t, c, z], plane={"T": t, "C": c, "Z": z}, scene=s, location=(s * 50_000, -s * 20_000))
        w.write_metadata(scale_x=1e-7, scale_y=1e-7)
    assert io.count_scenes(path) == 3
    images = list(io.read_scenes(path))
    assert [im.scene for im in images] == [0, 1, 2]
    for im, data in zip(images, scenes):
        np.testing.assert_array_equal(im.data, data)
        assert im.n_scenes == 3 and im.pixel_size[1:] == pytest.approx((0.1, 0.1))
    np.testing.assert_array_equal(io.read(path, scene=2).data, scenes[2])
    with pytest.raises(FileFormatError, match="3 scenes"):
        io.read(path)
    with pytest.raises(FileFormatError, match="scene 5 does not exist"):
        io.read(path, scene=5)


@pytest.mark.parametrize("compression", ["zstd0:ExplicitLevel=3", "zstd1:ExplicitLevel=3;PreProcess=HiLoByteUnpack",
                                         "zstd1:ExplicitLevel=1"])
def test_zstd_compressed_czi(tmp_path, compression):
    """ZEN compresses with zstd by default; czifile 2019 cannot decode it, bpho.io can."""
    data = (np.arange(3 * 40 * 50).reshape(3, 1, 1, 40, 50) * 37 % 60000).astype(np.uint16)
    path = io.write_czi(tmp_path / "z.czi", data, (None, 0.05, 0.05), compression=compression)
    np.testing.assert_array_equal(io.read(path).data, data)


def test_write_czi_roundtrip(tmp_path):
    data = _planes((3, 2, 2, 33, 21), np.uint16)
    path = io.write_czi(tmp_path / "w.czi", data, (0.2, 0.04, 0.04))
    img = io.read(path)
    np.testing.assert_array_equal(img.data, data)
    assert img.pixel_size == pytest.approx((0.2, 0.04, 0.04))
    assert not list(tmp_path.glob(".*")), "temporary files left behind"


def test_imagej_tiff_roundtrip_and_calibration(tmp_path):
    data = _planes((4, 2, 3, 25, 19), np.float64)
    path = io.write_imagej(tmp_path / "out.tif", data, (0.5, 0.0175, 0.0175), time_interval=2.5)
    img = io.read(path)
    assert img.data.dtype == np.float32  # ImageJ has no float64
    np.testing.assert_allclose(img.data, data.astype(np.float32))
    assert img.pixel_size == pytest.approx((0.5, 0.0175, 0.0175))
    with tifffile.TiffFile(path) as tf:  # what Fiji reads: hyperstack axes, unit, spacing, interval
        assert tf.is_imagej
        meta = tf.imagej_metadata
        assert (meta["frames"], meta["channels"], meta["slices"]) == (4, 2, 3)
        assert meta["hyperstack"] and meta["unit"] in ("um", "micron", "\\u00B5m")
        assert meta["spacing"] == pytest.approx(0.5) and meta["finterval"] == pytest.approx(2.5)
        num, den = tf.pages[0].tags["XResolution"].value
        assert den / num == pytest.approx(0.0175)
    with pytest.raises(FileFormatError, match="uint8, uint16 or float32"):
        io.write_imagej(tmp_path / "bad.tif", data.astype(np.int32), (None, 1, 1))
    assert not (tmp_path / "bad.tif").exists()


def test_ome_tiff_axes_and_physical_size(tmp_path):
    data = _planes((3, 2, 4, 10, 12), np.uint16)  # TCZYX
    path = tmp_path / "x.ome.tif"
    tifffile.imwrite(path, data, ome=True, metadata={"axes": "TCZYX", "PhysicalSizeX": 0.08, "PhysicalSizeY": 0.09,
                                                     "PhysicalSizeZ": 0.4})
    img = io.read(path)
    np.testing.assert_array_equal(img.data, data)
    assert img.pixel_size == pytest.approx((0.4, 0.09, 0.08))
    assert img.axes_source == "TCZYX"


def test_imagej_hyperstack_from_tifffile_and_plain_tiff(tmp_path):
    data = _planes((3, 5, 2, 10, 12), np.uint16)  # TZCYX, as ImageJ stores it
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, data, imagej=True, resolution=(1 / 0.1, 1 / 0.1),
                     metadata={"axes": "TZCYX", "unit": "um", "spacing": 0.3})
    img = io.read(path)
    np.testing.assert_array_equal(img.data, data.transpose(0, 2, 1, 3, 4))
    assert img.pixel_size == pytest.approx((0.3, 0.1, 0.1))

    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, data[0, 0, 0])
    img = io.read(plain)
    assert img.shape == (1, 1, 1, 10, 12) and img.pixel_size == (None, None, None)


@pytest.fixture
def good_czi(tmp_path):
    return io.write_czi(tmp_path / "good.czi", _planes((2, 1, 1, 64, 64), np.uint16), (None, 0.1, 0.1))


@pytest.mark.parametrize("case", ["empty", "text_named_czi", "truncated_czi", "truncated_tiff", "unknown_type",
                                  "missing", "tiff_named_czi"])
def test_bad_files_raise_a_clear_error(tmp_path, good_czi, case):
    if case == "empty":
        path = tmp_path / "empty.czi"
        path.write_bytes(b"")
        needle = "empty"
    elif case == "text_named_czi":
        path = tmp_path / "notes.czi"
        path.write_text("these are my notes, not an image\n")
        needle = "not a CZI file"
    elif case == "truncated_czi":
        path = tmp_path / "cut.czi"
        path.write_bytes(good_czi.read_bytes()[: good_czi.stat().st_size // 2])
        needle = "truncated"
    elif case == "truncated_tiff":
        path = tmp_path / "cut.tif"
        io.write_imagej(tmp_path / "whole.tif", _planes((4, 1, 1, 64, 64), np.uint16), (None, 1, 1))
        path.write_bytes((tmp_path / "whole.tif").read_bytes()[:5000])
        needle = "truncated"
    elif case == "unknown_type":
        path = tmp_path / "image.png"
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 100)
        needle = "unknown file type"
    elif case == "missing":
        path = tmp_path / "nowhere.czi"
        needle = "no such file"
    else:
        path = tmp_path / "really_a_tiff.czi"
        io.write_imagej(tmp_path / "t.tif", _planes((1, 1, 1, 8, 8), np.uint16), (None, 1, 1))
        path.write_bytes((tmp_path / "t.tif").read_bytes())
        needle = "not a CZI file"
    with pytest.raises(FileFormatError) as err:
        list(io.read_scenes(path))
    message = str(err.value)
    assert str(path) in message and needle in message
    assert "\n" not in message


@pytest.mark.parametrize("unit, factor", [("\u00b5m", 1.0), ("\u03bcm", 1.0), ("nm", 1e-3)])
def test_ome_tiff_physical_size_units(tmp_path, unit, factor):
    """Micrometres spelt with the micro sign (the OME schema's) or the Greek mu (written by some
    software), and nanometres: the pixel size is read in micrometres either way."""
    path = tmp_path / "u.ome.tif"
    tifffile.imwrite(path, _planes((1, 1, 1, 8, 8), np.uint16), ome=True,
                     metadata={"axes": "TCZYX", "PhysicalSizeX": 80.0, "PhysicalSizeXUnit": unit,
                               "PhysicalSizeY": 90.0, "PhysicalSizeYUnit": unit})
    assert io.read(path).pixel_size[1:] == pytest.approx((90.0 * factor, 80.0 * factor))
