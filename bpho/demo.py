"""Procedural demo microscopy, written as real CZI files.

The imaging group's data is private, so bpho ships realistic stand-ins. One scene is a
set of mitochondria-like tubes (random smooth, sometimes branching curves 0.3-0.7 um
wide, of varying brightness), some out-of-focus haze and a smooth background. The scene
is drawn on a fine grid (half the HR pixel) and imaged by two simulated microscopes:

- HR, like Airyscan: Gaussian PSF of FWHM 140 nm, small pixels, many photons;
- LR, like confocal: Gaussian PSF of FWHM 250 nm, pixels `scale` times larger, fewer
  photons, and a small misregistration against HR (sub-pixel to a few HR pixels).

Both detectors add Poisson photon noise, then gain, offset and Gaussian read noise, and
store uint16 counts (Poisson-Gaussian model). Everything is seeded. What was planted
(shifts, drift, optics) is written to ``demo_truth.json`` so later stages can be checked
against the truth.

Hard realism (``DemoConfig(realism="hard")``): the paired LR images get effects that none of
bpho's degradation models (Gaussian PSF, Poisson-Gaussian noise, translation) contain, as
in real pairs of living cells. Between the HR and the LR acquisition the sample turns (up to
2 degrees), grows or shrinks (up to 1 %), shifts and deforms smoothly (up to 3 HR px), and
each tube bleaches by its own factor (the haze and background less); the LR PSF is aberrated
(elliptical, with a coma-like side lobe); the point scanner's lines jitter along x; the
detector saturates and has hot pixels. The hard movie drifts faster along a turning path,
bleaches fast and has the LR's jitter and hot pixels. Scenes, HR images and the other folders
are the easy demo's (the hard effects draw from their own seeded generators). Each effect's
truth is in ``demo_truth.json``, and ``truth/paired_map/field_NNN.npy`` (float32, (2, h, w) on
the LR grid) holds, for each LR pixel, the (y, x) HR-pixel position (HR pixel k centred at k)
of the scene point its centre sees; without motion that is i * scale + (scale - 1) / 2.

Layout written by `make_demo_data(DIR)`::

    paired/lr/field_000.czi  paired/hr/field_000.czi   registered-pair stand-ins
    truth/paired_hr/field_000.tif                      the HR without detector noise (float32 ADU):
                                                       what a perfect model could output
    movie/lr/movie_000.czi   movie/hr/movie_000.czi    LR time-lapse and its HR truth
    truth/movie_hr/movie_000.tif                       the HR movie without detector noise (float32
                                                       ADU, (T, 1, 1, Y, X)): a perfect model's output
    hr_only/field_000.czi                              HR without LR
    denoise/noisy/field_000.czi  denoise/clean/...     single frames and averages of 50
    truth/paired_map/field_000.npy                     hard realism only: where each LR pixel looks
    montage.png, demo_truth.json
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
from scipy import ndimage, signal
from tqdm import tqdm

from bpho import io
from bpho.config import DemoConfig
from bpho.paths import atomic_dir
from bpho.errors import ConflictError

OVERSAMPLE = 2  # fine grid points per HR pixel along each axis
FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))


@dataclass(frozen=True)
class Microscope:
    """A simulated acquisition: optics, sampling and a Poisson-Gaussian detector.

    fwhm_nm: FWHM of the (Gaussian) PSF. pixel_um: pixel size. photons: expected photons
    at the brightest structures (99.9th percentile). gain: ADU per photon. offset: ADU
    added by the camera. read_noise: Gaussian noise standard deviation in ADU.
    """

    fwhm_nm: float
    pixel_um: float
    photons: float
    gain: float = 1.0
    offset: float = 100.0
    read_noise: float = 2.0


AIRYSCAN = Microscope(fwhm_nm=140.0, pixel_um=0.035, photons=400.0, gain=1.0, read_noise=1.5)


def confocal(scale: int, hr_pixel_um: float = AIRYSCAN.pixel_um) -> Microscope:
    """The confocal LR counterpart of `AIRYSCAN`: wider PSF, `scale`x larger pixels, fewer photons."""
    return Microscope(fwhm_nm=250.0, pixel_um=hr_pixel_um * scale, photons=60.0, gain=2.0,
                      read_noise=3.0)


# --- the scene -------------------------------------------------------------------------


@dataclass
class Tubes:
    """Centre lines of tubes in micrometres: one (N, 2) array of (y, x) points per tube."""

    lines: List[np.ndarray]
    widths_um: np.ndarray
    brightness: np.ndarray
    in_focus: np.ndarray  # bool per tube; out-of-focus tubes become haze


def random_tubes(rng: np.random.Generator, extent_um: float, density_per_um2: float = 0.12) -> Tubes:
    """Random smooth curves with persistent direction, some branching off earlier ones."""
    n = max(3, rng.poisson(density_per_um2 * extent_um**2))
    step = 0.01
    lines: List[np.ndarray] = []
    widths: List[float] = []
    for _ in range(n):
        if lines and rng.random() < 0.3:  # branch from a point on an earlier tube
            parent = lines[rng.integers(len(lines))]
            at = rng.integers(len(parent) - 1)
            start = parent[at]
            d = parent[at + 1] - parent[at]
            heading = np.arctan2(d[0], d[1]) + rng.choice([-1, 1]) * rng.uniform(0.6, 1.3)
        else:
            start = rng.uniform(-0.05, 1.05, 2) * extent_um
            heading = rng.uniform(0, 2 * np.pi)
        length = rng.uniform(1.5, 8.0)
        k = int(length / step)
        # heading: a smoothed random walk, so tubes bend gently (about 1 rad per um)
        turns = ndimage.gaussian_filter1d(rng.normal(0, 1.0, k), 30) * 0.12
        angle = heading + np.cumsum(turns)
        pts = start + np.cumsum(step * np.stack([np.sin(angle), np.cos(angle)], 1), axis=0)
        lines.append(pts)
        widths.append(rng.uniform(0.3, 0.7))
    n = len(lines)
    return Tubes(
        lines=lines,
        widths_um=np.asarray(widths),
        brightness=rng.lognormal(0.0, 0.35, n),
        in_focus=rng.random(n) > 0.25,
    )


def render_scene(tubes: Tubes, shape: Tuple[int, int], fine_um: float, rng: np.random.Generator,
                 step_um: float = 0.01) -> np.ndarray:
    """Fluorophore density on the fine grid (float64; a tube of brightness 1 and 0.5 um
    width peaks near 1): the tubes and their haze (`render_tubes`) over a smooth background.
    """
    out = render_tubes(tubes, shape, fine_um, step_um)
    background = ndimage.gaussian_filter(rng.random(shape), 3.0 / fine_um)
    background = (background - background.min()) / (np.ptp(background) or 1.0)
    return out + 0.04 * background + 0.02


def render_tubes(tubes: Tubes, shape: Tuple[int, int], fine_um: float, step_um: float = 0.01) -> np.ndarray:
    """The tubes' fluorophore density on the fine grid, without the background.

    A tube is its centre line convolved with a disc of its radius: the projection of a
    filled cylinder, with a chord-length profile. Out-of-focus tubes become a wide, dim haze.
    """
    out = np.zeros(shape)
    haze = np.zeros(shape)
    bins = np.linspace(0.3, 0.7, 5)
    for lo, hi in zip(bins[:-1], bins[1:]):
        density = np.zeros(shape)
        for pts, w, b, focus in zip(tubes.lines, tubes.widths_um, tubes.brightness, tubes.in_focus):
            if not lo <= w <= hi:
                continue
            p = pts / fine_um
            iy, ix = np.round(p[:, 0]).astype(int), np.round(p[:, 1]).astype(int)
            ok = (iy >= 0) & (iy < shape[0]) & (ix >= 0) & (ix < shape[1])
            np.add.at(density if focus else haze, (iy[ok], ix[ok]), b)
        r = 0.5 * (lo + hi) / 2 / fine_um
        yy, xx = np.mgrid[-int(r) - 1:int(r) + 2, -int(r) - 1:int(r) + 2]
        out += signal.fftconvolve(density, (yy**2 + xx**2 <= r**2).astype(float), mode="same")
    # a line of unit brightness sampled every step_um peaks at chord/step: 0.5 um / step
    out = np.clip(out, 0, None) * step_um / 0.5
    sigma = 0.6 / fine_um  # out-of-focus blur; scaled so the haze of a tube peaks at 0.3
    out += ndimage.gaussian_filter(haze, sigma) * 0.3 * np.sqrt(2 * np.pi) * sigma * step_um / fine_um
    return out


def blur_and_bin(scene: np.ndarray, fine_um: float, scope: Microscope,
                 shift_um: Tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Expected intensity per detector pixel: PSF blur, misregistration, pixel integration.

    shift_um: where the content lands relative to the scene (image(x) = scene(x - shift)).
    """
    sigma = scope.fwhm_nm / 1000.0 * FWHM_TO_SIGMA / fine_um
    blurred = ndimage.gaussian_filter(scene, sigma, mode="reflect")
    if any(shift_um):
        blurred = ndimage.shift(blurred, np.asarray(shift_um) / fine_um, order=3, mode="reflect")
    f = int(round(scope.pixel_um / fine_um))
    h, w = blurred.shape[0] // f, blurred.shape[1] // f
    return blurred[: h * f, : w * f].reshape(h, f, w, f).mean(axis=(1, 3))


def _photons(pixels: np.ndarray, scope: Microscope, level: Optional[float]) -> np.ndarray:
    """Expected photons per pixel: `level` (default: the 99.9th percentile) gets `scope.photons`."""
    level = level or np.percentile(pixels, 99.9)
    return np.clip(pixels / level * scope.photons, 0, None)


def expected_adu(pixels: np.ndarray, scope: Microscope, level: Optional[float] = None) -> np.ndarray:
    """The mean of `detect`: what the detector reads without noise (float32 ADU)."""
    return (_photons(pixels, scope, level) * scope.gain + scope.offset).astype(np.float32)


def detect(pixels: np.ndarray, scope: Microscope, rng: np.random.Generator,
           level: Optional[float] = None, average: int = 1) -> np.ndarray:
    """Poisson-Gaussian detector: photons, gain, offset, read noise, uint16 ADU.

    level: the intensity that receives `scope.photons` (default: this image's 99.9th
    percentile). average: the mean of that many independent frames.
    """
    counts = rng.poisson(_photons(pixels, scope, level) * average) / average
    adu = counts * scope.gain + scope.offset + rng.normal(0, scope.read_noise / np.sqrt(average), counts.shape)
    return np.clip(np.round(adu), 0, 65535).astype(np.uint16)


def image(scene, fine_um, scope, rng, shift_um=(0.0, 0.0), level=None, average=1) -> np.ndarray:
    """Acquire `scene` with `scope` (see `blur_and_bin` and `detect`)."""
    return detect(blur_and_bin(scene, fine_um, scope, shift_um), scope, rng, level, average)


# --- hard realism: what real pairs of living cells have and no degradation model does -----


def _motion(rng: np.random.Generator, n_hr: int, max_shift: float) -> dict:
    """Sample motion between the HR and the LR acquisition: a similarity (rotation up to 2 degrees,
    scale change up to 1 %, shift) about the field's centre, plus a smooth deformation (Gaussian-
    filtered noise: correlation length n/3, largest displacement component 1.5-3 HR px)."""
    field = np.stack([ndimage.gaussian_filter(rng.normal(size=(n_hr, n_hr)), n_hr / 6, mode="wrap") for _ in range(2)])
    amplitude = rng.uniform(1.5, 3.0)
    return {"rotation_deg": float(rng.uniform(-2, 2)), "scale": float(rng.uniform(0.99, 1.01)),
            "shift_hr_px": [float(v) for v in rng.uniform(-max_shift, max_shift, 2)],
            "deformation_max_hr_px": float(amplitude), "field": field * amplitude / np.abs(field).max()}


def lr_centres(shape: Tuple[int, int], scale: int) -> np.ndarray:
    """(2, h, w) HR pixel coordinates (HR pixel k centred at k) of the centres of LR pixels:
    LR pixel i covers HR pixels i*scale .. i*scale+scale-1, so its centre is i*scale + (scale-1)/2."""
    return np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64) * scale + (scale - 1) / 2


def _hr_position(motion: dict, p: np.ndarray, n_hr: int) -> np.ndarray:
    """Where in the HR image (HR pixel coordinates) lies the scene point that the LR acquisition
    finds at `p` ((2, ...) HR pixel coordinates of the LR's frame): c + scale R (p - c) + shift +
    deformation(p), c the field's centre; R turns (y, x) by rotation_deg from +x towards -y
    (counter-clockwise as displayed), as `bpho.datasets.register` does."""
    c = (n_hr - 1) / 2
    a = np.deg2rad(motion["rotation_deg"])
    rot = motion["scale"] * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    shift = np.asarray(motion["shift_hr_px"]).reshape(2, *([1] * (p.ndim - 1)))
    moved = np.einsum("ij,j...->i...", rot, p - c) + c + shift
    return moved + np.stack([ndimage.map_coordinates(f, p, order=1, mode="nearest") for f in motion["field"]])


def _moved_scene(scene: np.ndarray, motion: dict) -> np.ndarray:
    """The fine-grid scene as the LR acquisition finds it: resampled through the motion (fine
    point u is HR coordinate (u - (OVERSAMPLE - 1) / 2) / OVERSAMPLE)."""
    n = scene.shape[0]
    u = np.mgrid[0:n, 0:n].astype(np.float64)
    where = _hr_position(motion, (u - (OVERSAMPLE - 1) / 2) / OVERSAMPLE, n // OVERSAMPLE)
    return ndimage.map_coordinates(scene, where * OVERSAMPLE + (OVERSAMPLE - 1) / 2, order=1, mode="reflect")


def _aberrated_psf(rng: np.random.Generator, fine_um: float) -> Tuple[np.ndarray, dict]:
    """An aberrated LR PSF (astigmatism, coma): an elliptical Gaussian (FWHM about 230 x 320 nm, the
    long axis at a random angle) and a side lobe (15 % of the light, 150 nm off along the long axis)."""
    fwhm = (rng.uniform(210, 250), rng.uniform(300, 340))
    angle = rng.uniform(0, np.pi)
    r = int(np.ceil(3 * max(fwhm) / 1000 / fine_um * FWHM_TO_SIGMA)) + 4
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1] * fine_um * 1000  # nm
    along, across = xx * np.cos(angle) + yy * np.sin(angle), -xx * np.sin(angle) + yy * np.cos(angle)

    def gauss(offset):
        g = np.exp(-0.5 * (((along - offset) / (fwhm[1] * FWHM_TO_SIGMA)) ** 2
                           + (across / (fwhm[0] * FWHM_TO_SIGMA)) ** 2))
        return g / g.sum()

    weight, offset = 0.15, 150.0
    # the side lobe moves the PSF's centroid off the main lobe: image content appears moved by it,
    # so an LR pixel centre sees, on average, the truth map's position minus this offset
    centroid = weight * offset / (fine_um * 1000 * OVERSAMPLE)  # HR px
    return (1 - weight) * gauss(0) + weight * gauss(offset), {
        "fwhm_nm": [float(f) for f in fwhm], "angle_deg": float(np.rad2deg(angle)),
        "side_lobe": {"weight": weight, "offset_nm": offset},
        "centroid_offset_hr_px": [float(centroid * np.sin(angle)), float(centroid * np.cos(angle))]}


def _bin(image: np.ndarray, factor: int) -> np.ndarray:
    """Pixel integration: the mean over `factor` x `factor` blocks."""
    h, w = image.shape[0] // factor, image.shape[1] // factor
    return image[: h * factor, : w * factor].reshape(h, factor, w, factor).mean(axis=(1, 3))


def _bleached_scene(rng: np.random.Generator, scene: np.ndarray, tubes: Tubes,
                    fine_um: float) -> Tuple[np.ndarray, dict]:
    """Photobleaching by the HR acquisition: each in-focus tube keeps its own fraction (0.6-0.95) of
    its brightness; out-of-focus tubes (the haze) and the background, lit less, lose half as much."""
    keep = rng.uniform(0.6, 0.95, len(tubes.lines))
    keep = np.where(tubes.in_focus, keep, 1 - (1 - keep) / 2)
    mean = float(keep[tubes.in_focus].mean()) if tubes.in_focus.any() else 1.0
    background = 1 - (1 - mean) / 2
    density = render_tubes(replace(tubes, brightness=tubes.brightness * keep), scene.shape, fine_um)
    bleached = density + background * (scene - render_tubes(tubes, scene.shape, fine_um))
    return bleached, {"bleach_mean": mean, "bleach_tubes": [float(k) for k in keep], "bleach_background": background}


def _jitter(rng: np.random.Generator, pixels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Scan-line jitter of a point scanner: line i's content moves by shifts[i] LR px along x
    (std 0.25, correlated over neighbouring lines), i.e. jittered(i, x) = pixels(i, x - shifts[i])."""
    shifts = ndimage.gaussian_filter1d(rng.normal(size=pixels.shape[0]), 1.0)
    shifts = shifts / (shifts.std() or 1.0) * 0.25
    rows = [ndimage.shift(row, d, order=3, mode="nearest") for row, d in zip(pixels, shifts)]
    return np.clip(np.stack(rows), 0, None), shifts


def _saturate(adu: np.ndarray, ceiling: Optional[int] = None) -> Tuple[np.ndarray, int]:
    """Detector saturation: readings above a fixed ceiling (default: this image's 99.5th
    percentile, so that the brightest ~0.5 % of the pixels clip) read the ceiling."""
    ceiling = int(np.percentile(adu, 99.5)) if ceiling is None else ceiling
    return np.minimum(adu, ceiling), ceiling


def _hot_pixels(rng: np.random.Generator, shape: Tuple[int, int], fraction: float = 5e-4) -> np.ndarray:
    """Hot pixels: a few (~0.05 %) positions that always read high; (k, 2) (row, column)."""
    k = max(1, int(round(shape[0] * shape[1] * fraction)))
    return np.stack(np.unravel_index(rng.choice(shape[0] * shape[1], k, replace=False), shape), 1)


def _turning_drift(rng: np.random.Generator, frames: int) -> np.ndarray:
    """Stage drift of a long time-lapse: 0.15-0.25 um per frame (the easy movie: about 0.05) along a
    direction that turns slowly (up to 0.15 rad per frame); (frames, 2) (y, x) positions in um, 0 first."""
    speed, turn, heading = rng.uniform(0.15, 0.25), rng.uniform(-0.15, 0.15), rng.uniform(0, 2 * np.pi)
    a = heading + turn * np.arange(frames - 1)
    return np.concatenate([np.zeros((1, 2)), np.cumsum(speed * np.stack([np.sin(a), np.cos(a)], 1), axis=0)])


def hard_lr(scene: np.ndarray, tubes: Tubes, fine_um: float, scope: Microscope, scale: int, level: float,
            rng: np.random.Generator, max_shift: float) -> Tuple[np.ndarray, np.ndarray, dict]:
    """The LR of a pair with every hard effect: (uint16 LR, truth map, truth record).

    The sample is bleached by the HR acquisition, then moves; the aberrated PSF blurs it, the
    detector integrates LR pixels along jittered scan lines; `level` (the exposure, set on the
    unbleached sample) gets `scope.photons`; the detector saturates, and hot pixels read its
    ceiling. The truth map (float32, (2, h, w)) is `_hr_position` at `lr_centres`: the motion,
    without the jitter (recorded per line) and the PSF's centroid offset (recorded with the PSF).
    """
    n_hr = scene.shape[0] // OVERSAMPLE
    bleached, bleach = _bleached_scene(rng, scene, tubes, fine_um)
    motion = _motion(rng, n_hr, max_shift)
    kernel, psf = _aberrated_psf(rng, fine_um)
    blurred = signal.fftconvolve(_moved_scene(bleached, motion), kernel, mode="same")
    pixels, shifts = _jitter(rng, _bin(np.clip(blurred, 0, None), int(round(scope.pixel_um / fine_um))))
    adu, ceiling = _saturate(detect(pixels, scope, rng, level))
    hot = _hot_pixels(rng, adu.shape)
    adu[hot[:, 0], hot[:, 1]] = ceiling
    saturated = adu == ceiling
    saturated[hot[:, 0], hot[:, 1]] = False  # hot pixels are not counted as saturated
    truth_map = _hr_position(motion, lr_centres(adu.shape, scale), n_hr).astype(np.float32)
    record = {k: v for k, v in motion.items() if k != "field"}
    record.update(bleach, psf=psf, jitter_lr_px=[float(v) for v in shifts], saturation_adu=ceiling,
                  saturated_fraction=float(saturated.mean()), hot_pixels=hot.tolist())
    return adu, truth_map, record


# --- the demo data set -----------------------------------------------------------------


def _write(path: Path, frames: np.ndarray, pixel_um: float) -> None:
    data = frames.reshape((-1, 1, 1) + frames.shape[-2:])
    io.write_czi(path, data, (None, pixel_um, pixel_um), channel_names={0: "mito"})


def make_demo_data(out_dir, config: DemoConfig = DemoConfig(), force: bool = False,
                   progress: bool = True) -> Path:
    """Write the demo data set to `out_dir` (built in a temporary folder, then renamed).

    Parameters
    ----------
    out_dir : path
        Refused if it exists and is not empty, unless `force`, which replaces it whole.
    config : DemoConfig
        Sizes, seed and realism (bpho/config.py).

    Returns
    -------
    Path
        `out_dir`, holding the layout in this module's docstring.
    """
    out = Path(out_dir).absolute()
    if out.exists() and any(out.iterdir()) and not force:
        raise ConflictError(f"{out}: already exists and is not empty; pass --force to replace it")
    if out.exists() and not any(out.iterdir()):
        out.rmdir()
    rng = np.random.default_rng(config.seed)
    hr = AIRYSCAN
    lr = confocal(config.scale, hr.pixel_um)
    fine = hr.pixel_um / OVERSAMPLE
    settings = asdict(config)
    if config.realism == "easy":  # left out, so that the easy demo's truth file is as before realism existed
        del settings["realism"]
    truth: Dict = {"config": settings, "hr": asdict(hr), "lr": asdict(lr), "paired": {}, "movie": {}}
    hard = config.realism == "hard"  # hard effects draw from their own generators: scenes and HR stay the easy demo's
    jobs = config.paired_fields + config.movies + config.hr_only_fields + config.denoise_fields
    bar = tqdm(total=jobs, desc="demo data", unit="image", disable=not progress)
    with atomic_dir(out, replace=force) as tmp:
        # paired: the same field through both microscopes, LR slightly misregistered
        for i in range(config.paired_fields):
            name = f"field_{i:03d}"
            n = config.paired_size * OVERSAMPLE
            tubes = random_tubes(rng, n * fine)
            scene = render_scene(tubes, (n, n), fine, rng)
            shift = rng.uniform(-config.max_shift_hr_px, config.max_shift_hr_px, 2)
            hr_pixels = blur_and_bin(scene, fine, hr)
            _write(tmp / "paired/hr" / f"{name}.czi", detect(hr_pixels, hr, rng), hr.pixel_um)
            (tmp / "truth/paired_hr").mkdir(parents=True, exist_ok=True)
            io.write_imagej(tmp / "truth/paired_hr" / f"{name}.tif", expected_adu(hr_pixels, hr)[None, None, None],
                            pixel_size=(None, hr.pixel_um, hr.pixel_um))
            lr_pixels = blur_and_bin(scene, fine, lr, tuple(shift * hr.pixel_um))
            lr_img = detect(lr_pixels, lr, rng)  # drawn in hard mode too, so that what follows stays the easy demo's
            record: Dict[str, object] = {"lr_offset_hr_px": [float(s) for s in shift]}
            if hard:  # the same microscope settings (exposure level) as the easy LR
                lr_img, truth_map, record = hard_lr(scene, tubes, fine, lr, config.scale,
                                                    np.percentile(lr_pixels, 99.9),
                                                    np.random.default_rng([config.seed, 17, i]), config.max_shift_hr_px)
                (tmp / "truth/paired_map").mkdir(parents=True, exist_ok=True)
                np.save(tmp / "truth/paired_map" / f"{name}.npy", truth_map)
            _write(tmp / "paired/lr" / f"{name}.czi", lr_img, lr.pixel_um)
            truth["paired"][name] = record
            bar.update()
        # movies: tubes drifting (global drift + own motion), slight bleaching
        for i in range(config.movies):
            name = f"movie_{i:03d}"
            n = config.movie_size * OVERSAMPLE
            tubes = random_tubes(rng, n * fine)
            drift = rng.normal(0, 0.04, 2)  # um per frame
            own = rng.normal(0, 0.02, (len(tubes.lines), 2))
            hr_frames: List[np.ndarray] = []
            lr_frames: List[np.ndarray] = []
            clean_frames: List[np.ndarray] = []  # the HR without detector noise
            levels: Dict[Microscope, float] = {}
            record = {"drift_um_per_frame": [float(d) for d in drift]}
            bleach_time = 60.0
            if hard:  # a stronger drift along a turning path, fast bleaching, the LR's scan-line jitter and hot pixels
                gen = np.random.default_rng([config.seed, 19, i])
                positions, bleach_time = _turning_drift(gen, config.movie_frames), 15.0
                hot, ceiling, jitter = _hot_pixels(gen, (config.movie_size // config.scale,) * 2), None, []
            for t in range(config.movie_frames):
                offset = positions[t] if hard else drift * t
                moved = replace(tubes, lines=[p + offset + v * t for p, v in zip(tubes.lines, own)],
                                brightness=tubes.brightness * np.exp(-t / bleach_time))
                scene = render_scene(moved, (n, n), fine, np.random.default_rng([config.seed, i]))
                for scope, frames in ((hr, hr_frames), (lr, lr_frames)):
                    pixels = blur_and_bin(scene, fine, scope)
                    # exposure set on the first frame, so bleaching shows as in a real movie
                    level = levels.setdefault(scope, np.percentile(pixels, 99.9))
                    if scope is hr:
                        clean_frames.append(expected_adu(pixels, hr, level))
                    if hard and scope is lr:
                        pixels, shifts = _jitter(gen, pixels)
                        adu, ceiling = _saturate(detect(pixels, scope, rng, level), ceiling)  # ceiling set on frame 0
                        adu[hot[:, 0], hot[:, 1]] = ceiling
                        jitter.append([float(d) for d in shifts])
                        frames.append(adu)
                    else:
                        frames.append(detect(pixels, scope, rng, level))
            _write(tmp / "movie/hr" / f"{name}.czi", np.stack(hr_frames), hr.pixel_um)
            _write(tmp / "movie/lr" / f"{name}.czi", np.stack(lr_frames), lr.pixel_um)
            (tmp / "truth/movie_hr").mkdir(parents=True, exist_ok=True)
            io.write_imagej(tmp / "truth/movie_hr" / f"{name}.tif", np.stack(clean_frames)[:, None, None],
                            pixel_size=(None, hr.pixel_um, hr.pixel_um))
            if hard:
                record = {"position_um": positions.tolist(), "drift_um": np.diff(positions, axis=0).tolist(),
                          "bleach_time_frames": bleach_time,
                          "bleach_factor": [float(np.exp(-t / bleach_time)) for t in range(config.movie_frames)],
                          "jitter_lr_px": jitter, "saturation_adu": ceiling, "hot_pixels": hot.tolist()}
            truth["movie"][name] = record
            bar.update()
        for i in range(config.hr_only_fields):
            n = config.paired_size * OVERSAMPLE
            scene = render_scene(random_tubes(rng, n * fine), (n, n), fine, rng)
            _write(tmp / "hr_only" / f"field_{i:03d}.czi", image(scene, fine, hr, rng), hr.pixel_um)
            bar.update()
        # denoising: confocal at Nyquist-ish pixels, very few photons; clean = mean of 50 frames
        noisy_scope = Microscope(fwhm_nm=250.0, pixel_um=0.07, photons=15.0, gain=4.0, read_noise=3.0)
        for i in range(config.denoise_fields):
            n = config.denoise_size * 4  # fine grid of 0.0175 um for 0.07 um pixels
            scene = render_scene(random_tubes(rng, n * fine), (n, n), fine, rng)
            _write(tmp / "denoise/noisy" / f"field_{i:03d}.czi", image(scene, fine, noisy_scope, rng),
                   noisy_scope.pixel_um)
            _write(tmp / "denoise/clean" / f"field_{i:03d}.czi", image(scene, fine, noisy_scope, rng, average=50),
                   noisy_scope.pixel_um)
            bar.update()
        truth["denoise"] = {"microscope": asdict(noisy_scope), "average": 50}
        (tmp / "demo_truth.json").write_text(json.dumps(truth, indent=2))
        save_montage(tmp, tmp / "montage.png")
    bar.close()
    return out


def save_montage(data_dir: Path, png: Path) -> Path:
    """A PNG of what was made: LR | HR pairs, movie frames, HR-only, noisy | clean."""
    from bpho.plots import pyplot

    plt = pyplot()

    def first(pattern):
        files = sorted(data_dir.glob(pattern))
        return io.read(files[0]).data[:, 0, 0] if files else None

    panels = []
    for title, pattern in [("paired LR (confocal)", "paired/lr/*.czi"), ("paired HR (Airyscan)", "paired/hr/*.czi"),
                           ("movie LR, frame 0", "movie/lr/*.czi"), ("movie HR, frame 0", "movie/hr/*.czi"),
                           ("HR only", "hr_only/*.czi"), ("denoise: noisy", "denoise/noisy/*.czi"),
                           ("denoise: clean (mean of 50)", "denoise/clean/*.czi")]:
        frames = first(pattern)
        if frames is not None:
            panels.append((title, frames[0]))
    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.3))
    for ax, (title, img) in zip(np.atleast_1d(axes), panels):
        lo, hi = np.percentile(img, (1, 99.8))
        ax.imshow(img, cmap="magma", vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png
