"""Property-based tests (hypothesis): readers, tilers, normalisation and degradations on random
shapes, dtypes and values never fail other than with bpho's documented errors."""

from __future__ import annotations

import re
import tempfile
import warnings
from pathlib import Path

import czifile
import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bpho import io
from bpho.datasets.tiling import content_table, tile_positions
from bpho.datasets.register import normalize, percentile_range
from bpho.degrade import classic, physical
from bpho.errors import BphoError, FileFormatError

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DTYPES = st.sampled_from([np.uint8, np.uint16, np.int16, np.float32, np.float64])


@st.composite
def images(draw):
    shape = draw(st.lists(st.integers(1, 4), min_size=0, max_size=2)) + draw(
        st.lists(st.integers(1, 24), min_size=2, max_size=2))
    return draw(hnp.arrays(draw(DTYPES), tuple(shape)))


# how bpho's documentation maps tifffile's axis letters (README, io): pages (I, Q) are Z, RGB samples (S) are C
TIFF_AXES = {"T": "T", "C": "C", "Z": "Z", "Y": "Y", "X": "X", "I": "Z", "Q": "Z", "S": "C"}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # tifffile: how it will store 3-sample data
@SETTINGS
@given(images())
@pytest.mark.unit
def test_tiff_reader_returns_the_pixels_or_a_clear_error(data):
    """The pixels come back where the TIFF's own axes put them (T, C, Z, Y, X), or the file is
    refused for the one documented reason: two of its axes would land on one of bpho's."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.tif"
        tifffile.imwrite(path, data)
        with tifffile.TiffFile(path) as tf:  # what the TIFF itself declares
            axes, stored = tf.series[0].axes, tf.series[0].asarray()
        mapped = [TIFF_AXES[a] for a in axes]
        if len(set(mapped)) < len(mapped):
            with pytest.raises(FileFormatError, match=rf"^{re.escape(str(path))}: TIFF axes {axes!r} map twice onto"):
                io.read(path)
            return
        img = io.read(path)
        order = mapped + [a for a in "TCZYX" if a not in mapped]  # bpho's missing axes: length 1
        want = np.transpose(stored.reshape(stored.shape + (1,) * (5 - stored.ndim)), [order.index(a) for a in "TCZYX"])
        assert img.data.dtype == data.dtype
        np.testing.assert_array_equal(img.data, want)


def _tiff_bytes(array) -> bytes:
    import io as stdio

    buffer = stdio.BytesIO()
    tifffile.imwrite(buffer, array)
    return buffer.getvalue()


SMALL_TIFF = np.arange(15, dtype=np.uint16).reshape(3, 5)


@SETTINGS
@given(st.binary(max_size=4096), st.sampled_from([".czi", ".tif", ".tiff"]))
@example(_tiff_bytes(SMALL_TIFF), ".tif")  # bytes that are an image: the reading branch runs every time
@example(_tiff_bytes(SMALL_TIFF)[:200], ".tif")  # ... and the same file cut short
@pytest.mark.unit
def test_random_bytes_are_refused_with_a_clear_error(blob, suffix):
    """Bytes are refused as a FileFormatError naming the file (one line), or, when they are an image
    by the format's own library, read as the pixels that library reads."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"junk{suffix}"
        path.write_bytes(blob)
        try:
            img = io.read(path)
        except FileFormatError as exc:
            assert str(exc).startswith(f"{path}: ") and "\n" not in str(exc), exc
            return
        reference = tifffile.imread(path) if suffix != ".czi" else czifile.imread(path)
        np.testing.assert_array_equal(img.data.squeeze(), reference.squeeze())
        if blob == _tiff_bytes(SMALL_TIFF):
            np.testing.assert_array_equal(img.data[0, 0, 0], SMALL_TIFF)


@SETTINGS
@given(hnp.arrays(bool, st.tuples(st.integers(1, 48), st.integers(1, 48))), st.sampled_from([4, 8, 16]),
       st.sampled_from([1, 2, 4]), st.integers(0, 6), st.integers(0, 50), st.floats(0, 1), st.integers(0, 2 ** 32 - 1))
@pytest.mark.unit
def test_tiles_stay_inside_on_the_grid_and_have_content(content, size, scale, margin, wanted, threshold, seed):
    pos = tile_positions(content_table(content), size, scale, margin, wanted, threshold, np.random.default_rng(seed))
    h, w = content.shape
    assert pos.shape[1] == 2 and len(pos) <= wanted and len({tuple(p) for p in pos}) == len(pos)
    for y, x in pos:
        assert y % scale == 0 and x % scale == 0
        assert margin <= y <= h - size - margin and margin <= x <= w - size - margin
        assert content[y:y + size, x:x + size].mean() >= threshold - 1e-9


@SETTINGS
@given(hnp.arrays(np.float32, st.tuples(st.integers(1, 3), st.integers(2, 20), st.integers(2, 20)),
                  elements=st.floats(-1e6, 1e6, width=32)))
@pytest.mark.unit
def test_normalisation_is_finite_and_monotone(stack):
    lo, hi = percentile_range(stack, 2, 99.8)
    out = normalize(stack, lo, hi)
    assert out.dtype == np.float32 and np.isfinite(out).all()
    order = np.argsort(stack, axis=None, kind="stable")
    assert np.all(np.diff(out.ravel()[order]) >= -1e-6)


@SETTINGS
@given(st.integers(1, 3), st.sampled_from([1, 2, 4]), st.integers(1, 6), st.integers(1, 6),
       st.sampled_from([np.uint16, np.float32]), st.integers(0, 2 ** 32 - 1), st.booleans())
@pytest.mark.unit
def test_degradations_keep_shape_type_and_finiteness(frames, scale, ny, nx, dtype, seed, physical_model):
    rng = np.random.default_rng(seed)
    hr = (rng.random((frames, ny * scale, nx * scale)) * 4000).astype(dtype)
    if physical_model:
        lr = physical.degrade(hr, physical.PhysicalParams(scale=scale), rng, hr_pixel_um=0.035)
    else:
        lr = classic.degrade(hr, classic.ClassicParams(scale=scale), rng)
    assert lr.shape == (frames, ny, nx) and lr.dtype == hr.dtype and np.isfinite(lr).all()
    odd = np.pad(hr, ((0, 0), (0, 1), (0, 0)))  # one HR row too many for whole LR pixels
    if scale > 1:
        with pytest.raises(BphoError, match=rf"HR of {ny * scale + 1}x{nx * scale} pixels is not divisible by "
                                            rf"scale={scale}$"):
            classic.degrade(odd, classic.ClassicParams(scale=scale), rng)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(scale=st.sampled_from([2, 3, 4]), lr_tile=st.integers(4, 12), extra=st.tuples(st.integers(0, 25), st.integers(0, 25)),
       one_more=st.booleans(), register=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_datasets_build_from_pairs_of_any_size_and_scale(tmp_path_factory, monkeypatch, scale, lr_tile, extra,
                                                         one_more, register, seed):
    """End to end (real CZI, datasource, registration, QC figures, tiles, whole validation images):
    odd sizes, an LR just one pixel larger than a tile, scales 2, 3 and 4. The build either
    succeeds with tiles of the right shapes or refuses with bpho's one-line error."""
    from scipy import ndimage

    from bpho import datasources
    from bpho.datasets import builder
    from bpho.datasets.register import downsample

    work = tmp_path_factory.mktemp("build")
    monkeypatch.setenv("BPHO_ROOT", str(work / "root"))
    rng = np.random.default_rng(seed)
    ly, lx = (lr_tile + 1, lr_tile + 1) if one_more else (lr_tile + extra[0], lr_tile + extra[1])
    for i in range(2):
        hr = ndimage.gaussian_filter(rng.random((ly * scale, lx * scale)), scale) * 4000 + 100
        hr = ndimage.shift(hr, rng.uniform(-1, 1, 2), mode="nearest")  # LR seen slightly shifted
        lr = downsample(hr, scale) + rng.normal(0, 5, (ly, lx))
        for side, img, px in (("lr", lr, 0.14), ("hr", hr, 0.14 / scale)):
            (work / "src" / side).mkdir(parents=True, exist_ok=True)
            io.write_czi(work / "src" / side / f"f{i}.czi", img.astype(np.uint16)[None, None, None], (None, px, px))
    datasources.add("pairs", [work / "src"], kind="paired", progress=False)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = builder.make("paired_001", datasource="pairs", name="d", progress=False, track=False,
                              settings=[f"scale={scale}", f"tile_sizes={lr_tile * scale}", "tiles_per_image=4",
                                        "valid_fraction=0.5", "content_threshold=0", f"register={register}"])
    except BphoError as exc:  # a documented refusal, one line at the CLI: only for images too small to register
        too_small = [w for w in caught if "LR pixels is too small to register" in str(w.message)]
        assert register and too_small and str(exc).startswith("dataset d: "), exc
        assert any(r in str(exc) for r in ("every training pair was left out", "every valid image was excluded",
                                            "no tile passed the content threshold")), exc
        return
    lr_tiles, hr_tiles = ds.tiles(lr_tile * scale, "train")
    assert lr_tiles.shape[1:] == (1, lr_tile, lr_tile) and hr_tiles.shape[1:] == (1, lr_tile * scale, lr_tile * scale)
    assert np.isfinite(lr_tiles).all() and np.isfinite(hr_tiles).all()
    assert len(list((ds.path / "qc").glob("*.png"))) == (2 if register else 0)
    for pair in ds.validation_images():
        assert pair.hr.shape[1:] == (pair.lr.shape[1] * scale, pair.lr.shape[2] * scale)
