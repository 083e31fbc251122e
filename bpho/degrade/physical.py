"""`physical`: a microscope's image formation applied to an HR image.

1. Blur with a PSF of FWHM `psf_fwhm_nm` (converted to pixels with the HR pixel size):
   a Gaussian (sigma = FWHM / 2.355) or an Airy disc. The HR was already blurred by its own
   optics, so give the extra blur: sqrt(FWHM_LR^2 - FWHM_HR^2) (250 nm confocal over 140 nm
   Airyscan: 207 nm).
2. `hr_offset` (the HR's dark level) is subtracted and the result integrated over the
   `scale` x `scale` HR pixels of each LR pixel (area mean).
3. Photons: the reference level (the 99.9th percentile of that image) receives `photons`
   expected photons, plus `background` photons everywhere; Poisson noise.
4. Camera: `gain` ADU per photon, `offset` ADU, Gaussian read noise of `read_noise` ADU,
   rounded and clipped to `bit_depth` bits.

Mean intensity: E[LR] = offset + gain (photons s / s_ref + background), with s the blurred,
integrated signal and s_ref its reference level: the input's relative intensities are
kept, in the detector's ADU. Variance: Var[LR] = gain (E[LR] - offset) + read_noise^2
(+ 1/12 from rounding): the Poisson-Gaussian model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from bpho.degrade import DegradationModel, as_float, bin_area, check_scale, like_input, reference_level, register
from bpho.errors import BphoError

FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
AIRY_HALF_MAX = 1.616340  # (2 J1(v) / v)^2 = 1/2 at v = 1.61634
HR_DARK_PERCENTILE = 0.5  # the HR's dark level: this low percentile of its pixels


@dataclass(frozen=True)
class PhysicalParams:
    """Parameters of the physical degradation (optics, detector, exposure), in physical units."""

    scale: int = 4
    psf_fwhm_nm: float = 207.0
    psf: str = "gaussian"  # gaussian | airy
    hr_offset: float = 0.0
    photons: float = 60.0
    background: float = 0.0
    gain: float = 2.0
    offset: float = 100.0
    read_noise: float = 3.0
    bit_depth: int = 16
    reference_percentile: float = 99.9
    hr_pixel_nm: Optional[float] = None  # default: the file's pixel size

    def validated(self) -> "PhysicalParams":
        """The parameters themselves when valid; otherwise one BphoError."""
        if self.psf not in ("gaussian", "airy"):
            raise BphoError(f"physical: psf={self.psf!r} (use gaussian or airy)")
        bad = [k for k in ("psf_fwhm_nm", "photons", "background", "gain", "read_noise") if getattr(self, k) < 0]
        if bad or self.scale < 1 or not 1 <= self.bit_depth <= 16 or self.photons == 0:
            raise BphoError(f"physical: invalid {bad or 'scale, bit_depth (1..16) or photons (> 0)'}")
        return self


def psf_kernel(fwhm_px: float, kind: str = "gaussian") -> Optional[np.ndarray]:
    """A normalised 2D PSF of the given FWHM in pixels (None for a Gaussian: filtered directly)."""
    if kind == "gaussian":
        return None
    from scipy import special  # here: importing bpho.degrade (the commands' choices) stays quick

    k = 2 * AIRY_HALF_MAX / fwhm_px
    r = int(np.ceil(4 * fwhm_px)) + 1
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1].astype(float)
    v = k * np.hypot(yy, xx)
    with np.errstate(invalid="ignore", divide="ignore"):
        airy = np.where(v > 0, (2 * special.j1(v) / v) ** 2, 1.0)
    return airy / airy.sum()


def blur(x: np.ndarray, fwhm_nm: float, pixel_nm: float, kind: str = "gaussian") -> np.ndarray:
    """Blur every frame of a (T, Y, X) stack with the PSF."""
    if fwhm_nm <= 0:
        return x
    from scipy import ndimage, signal

    fwhm_px = fwhm_nm / pixel_nm
    kernel = psf_kernel(fwhm_px, kind)
    if kernel is None:
        return ndimage.gaussian_filter(x, (0, fwhm_px * FWHM_TO_SIGMA, fwhm_px * FWHM_TO_SIGMA), mode="reflect")
    r = kernel.shape[0] // 2
    padded = np.pad(x, ((0, 0), (r, r), (r, r)), mode="reflect")
    return np.stack([signal.fftconvolve(f, kernel, mode="valid") for f in padded])


def pixel_nm(p: PhysicalParams, hr_pixel_um: Optional[float]) -> float:
    """The HR pixel size in nanometres: the parameter, else the file's; refused when neither is known."""
    nm = p.hr_pixel_nm or (hr_pixel_um * 1000.0 if hr_pixel_um else None)
    if not nm:
        raise BphoError("physical: the HR pixel size is unknown; set hr_pixel_nm=...")
    return nm


def signal_of(hr: np.ndarray, p: PhysicalParams, hr_pixel_um: Optional[float]) -> np.ndarray:
    """Steps 1-2: the blurred, integrated signal above the HR dark level, on the LR grid (float64)."""
    x = as_float(hr)
    check_scale(x, p.scale)
    return bin_area(blur(x - p.hr_offset, p.psf_fwhm_nm, pixel_nm(p, hr_pixel_um), p.psf), p.scale)


def degrade(hr: np.ndarray, p: PhysicalParams = PhysicalParams(), rng: Optional[np.random.Generator] = None,
            hr_pixel_um: Optional[float] = None, expected: bool = False) -> np.ndarray:
    """LR from HR through the PSF, pixel integration and a Poisson-Gaussian detector (the mean LR with `expected`)."""
    rng = rng or np.random.default_rng()
    s = signal_of(hr, p, hr_pixel_um)
    lam = np.clip(s / reference_level(s, p.reference_percentile) * p.photons, 0, None) + p.background
    if expected:
        return like_input(p.offset + p.gain * lam, hr, 2 ** p.bit_depth - 1)
    adu = p.gain * rng.poisson(lam) + p.offset + (rng.normal(0, p.read_noise, lam.shape) if p.read_noise else 0)
    return like_input(np.clip(np.round(adu), 0, 2 ** p.bit_depth - 1), hr, 2 ** p.bit_depth - 1)


def dark_level(pairs: Sequence) -> float:
    """The HR's dark level (`hr_offset`) of registered pairs: the median over pairs of a low
    percentile of each HR, as `fitted` measures it."""
    return float(np.median([np.percentile(p.hr, HR_DARK_PERCENTILE) for p in pairs]))


def search(pairs: Sequence):
    """The space `bpho tune degradation` searches: blur, photons and read noise. The HR's dark
    level is read from the pairs (`dark_level`) instead: left at 0 it counts as signal, and the
    search makes up for it with a wrong blur (on the demo: 42 nm for 207 nm). Gain and camera
    offset are not searched: the study's distance maps intensities linearly, so it cannot tell
    them apart; they keep their defaults (`fitted` estimates them), while photons and read noise
    set the noise."""
    hr_offset = dark_level(pairs)

    def suggest(trial) -> dict:
        return {"psf_fwhm_nm": trial.suggest_float("psf_fwhm_nm", 0.0, 600.0),
                "photons": trial.suggest_float("photons", 2.0, 2000.0, log=True),
                "read_noise": trial.suggest_float("read_noise", 0.0, 20.0),
                "hr_offset": hr_offset}

    return suggest


register(DegradationModel("physical", PhysicalParams, degrade, search=search))
