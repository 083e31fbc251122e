"""Demo data: real CZI files, right shapes and scale, LR measurably blurrier and noisier than HR."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from bpho import io
from bpho.synthetic import DemoConfig, make_demo_data
from bpho.errors import ConflictError

from conftest import SMALL


def test_layout_shapes_and_pixel_sizes(demo):
    s = SMALL.scale
    lr_files = sorted((demo / "paired/lr").glob("*.czi"))
    assert [p.name for p in lr_files] == [p.name for p in sorted((demo / "paired/hr").glob("*.czi"))]
    assert len(lr_files) == SMALL.paired_fields
    for lr_path in lr_files:
        lr, hr = io.read(lr_path), io.read(demo / "paired/hr" / lr_path.name)
        assert hr.shape == (1, 1, 1, SMALL.paired_size, SMALL.paired_size)
        assert lr.shape == (1, 1, 1, SMALL.paired_size // s, SMALL.paired_size // s)
        assert lr.data.dtype == hr.data.dtype == np.uint16
        assert lr.pixel_size[2] == pytest.approx(s * hr.pixel_size[2])
        assert 0.03 <= hr.pixel_size[2] <= 0.045  # Airyscan-like sampling
    movie_lr = io.read(demo / "movie/lr/movie_000.czi")
    movie_hr = io.read(demo / "movie/hr/movie_000.czi")
    assert movie_lr.shape[0] == movie_hr.shape[0] == SMALL.movie_frames >= 10
    assert movie_hr.shape[-1] == s * movie_lr.shape[-1]
    assert len(list((demo / "hr_only").glob("*.czi"))) == SMALL.hr_only_fields
    noisy, clean = io.read(demo / "denoise/noisy/field_000.czi"), io.read(demo / "denoise/clean/field_000.czi")
    assert noisy.shape == clean.shape
    png = (demo / "montage.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_noiseless_hr_truth_is_the_mean_of_the_acquired_hr(demo):
    """truth/paired_hr holds what a perfect model could output: the HR detector's expected reading."""
    for hr_path in sorted((demo / "paired/hr").glob("*.czi")):
        hr = io.read(hr_path).data[0, 0, 0].astype(np.float64)
        clean = io.read(demo / "truth/paired_hr" / f"{hr_path.stem}.tif")
        assert clean.data.dtype == np.float32 and clean.shape[-2:] == hr.shape
        assert clean.pixel_size[2] == pytest.approx(io.read(hr_path).pixel_size[2])
        clean = clean.data[0, 0, 0].astype(np.float64)
        residual = hr - clean  # Poisson-Gaussian noise: zero mean, variance gain * photons + read noise^2
        assert abs(residual.mean()) < 0.2
        bright = clean > np.percentile(clean, 90)
        assert residual[bright].var() > 2 * residual[~bright].var()  # signal-dependent, as photon noise is


def test_movie_moves(demo):
    frames = io.read(demo / "movie/hr/movie_000.czi").data[:, 0, 0].astype(float)
    first, last = frames[0], frames[-1]
    assert np.corrcoef(first.ravel(), frames[1].ravel())[0, 1] > np.corrcoef(first.ravel(), last.ravel())[0, 1]


def _relative_noise(img: np.ndarray) -> float:
    """Noise std in flat background (where blur cannot matter) over the signal range."""
    smooth = ndimage.gaussian_filter(img, 2)
    background = smooth < np.percentile(smooth, 30)
    lo, hi = np.percentile(img, (50, 99.9))
    return float(np.std((img - smooth)[background]) / (hi - lo))


def test_lr_is_blurrier_and_noisier_than_hr(demo):
    truth = json.loads((demo / "demo_truth.json").read_text())
    s = SMALL.scale
    for name, planted in truth["paired"].items():
        hr = io.read(demo / "paired/hr" / f"{name}.czi")
        lr = io.read(demo / "paired/lr" / f"{name}.czi")
        h, l = hr.data[0, 0, 0].astype(float), lr.data[0, 0, 0].astype(float)
        # HR moved onto the LR content and integrated over LR pixels: the same field on the LR grid
        h = ndimage.shift(h, planted["lr_offset_hr_px"], order=3, mode="reflect")
        h_on_lr = h.reshape(h.shape[0] // s, s, h.shape[1] // s, s).mean(axis=(1, 3))
        # Which extra Gaussian blur makes HR look most like LR? Confocal 250 nm vs Airyscan
        # 140 nm means about sqrt(250^2 - 140^2) = 207 nm FWHM; a sharp LR would pick 0.
        px_nm = lr.pixel_size[2] * 1000
        crop = (slice(4, -4), slice(4, -4))

        def match(fwhm_nm):
            blurred = ndimage.gaussian_filter(h_on_lr, fwhm_nm / 2.3548 / px_nm) if fwhm_nm else h_on_lr
            return np.corrcoef(blurred[crop].ravel(), l[crop].ravel())[0, 1]

        scores = {f: match(f) for f in range(0, 425, 25)}
        best = max(scores, key=scores.get)
        assert 125 <= best <= 300, (name, best, scores)
        assert scores[best] > scores[0] + 0.002
        assert _relative_noise(l) > 2 * _relative_noise(hr.data[0, 0, 0].astype(float))


def test_seeded_and_reproducible(tmp_path):
    cfg = DemoConfig(seed=3, paired_fields=1, paired_size=64, movies=1, movie_frames=2, movie_size=64,
                     hr_only_fields=1, denoise_fields=1, denoise_size=32)
    a = make_demo_data(tmp_path / "a", cfg, progress=False)
    b = make_demo_data(tmp_path / "b", cfg, progress=False)
    for rel in ("paired/lr/field_000.czi", "movie/hr/movie_000.czi", "denoise/clean/field_000.czi"):
        np.testing.assert_array_equal(io.read(a / rel).data, io.read(b / rel).data)
    with pytest.raises(ConflictError, match="--force"):
        make_demo_data(a, cfg, progress=False)
    c = make_demo_data(a, DemoConfig(**{**cfg.__dict__, "seed": 4}), force=True, progress=False)
    assert not np.array_equal(io.read(c / "paired/lr/field_000.czi").data, io.read(b / "paired/lr/field_000.czi").data)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # no temporary folders left
