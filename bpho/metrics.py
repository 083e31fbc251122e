"""Image quality metrics: PSNR, SSIM, MS-SSIM (piq), NRMSE, and Fourier ring correlation.

Comparison protocol (as in CARE evaluations), so a global intensity shift is never taken
for a resolution gain: the target is percentile-normalised (0.1 / 99.9 -> 0 / 1), the
prediction is mapped onto it by the least-squares scale and offset, and both are clipped
to [0, 1] (piq's input range) before PSNR / SSIM / MS-SSIM with data_range 1. NRMSE is the
RMSE of the same two images (the target's 0.1-99.9 percentile range is 1).

SSIM uses piq's Gaussian window (11 px, sigma 1.5) without piq's automatic downsampling;
MS-SSIM needs images larger than 160 px on the short side and is NaN below.

FRC: `frc(a, b)` correlates two independent acquisitions of the same field (bpho's
evaluation uses the prediction against the HR target, which was acquired independently of
the LR); `frc_single` splits one image in two by its checkerboard diagonals (the
"two-halves" method, with the half-pixel shift between halves undone in Fourier space).
Resolution is 1 / the first frequency where the curve falls below 1/7.

Flicker (`flicker`, movies): the RMSE between the prediction's frame-to-frame differences and the
target's, after the same protocol applied to the whole (T, Y, X) stacks (one normalisation of the
target, one scale and offset for the prediction, so that a brightness that pumps from frame to
frame counts); in NRMSE's unit, 0 when the prediction changes exactly as the target does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np
import torch
from scipy import ndimage

FRC_THRESHOLD = 1.0 / 7.0


def normalize_target(target: np.ndarray, low: float = 0.1, high: float = 99.9) -> np.ndarray:
    """`target` scaled so that its `low` and `high` percentiles become 0 and 1 (float64)."""
    lo, hi = np.percentile(target, (low, high))
    return ((target - lo) / max(hi - lo, 1e-12)).astype(np.float64)


def fit_to(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The fit of `pred` to `target`: a * pred + b with (a, b) minimising the squared error."""
    p = pred.astype(np.float64).ravel()
    a, b = np.polyfit(p, target.ravel(), 1) if np.ptp(p) > 0 else (0.0, float(target.mean()))
    return a * pred.astype(np.float64) + b


def prepare(pred: np.ndarray, target: np.ndarray):
    """The documented protocol: normalised target, fitted prediction, both clipped to [0, 1]."""
    t = normalize_target(target)
    return np.clip(fit_to(pred, t), 0, 1), np.clip(t, 0, 1)


def noise_ceiling_psnr(target: np.ndarray) -> float:
    """An estimate of the PSNR that a noise-free image would score against this noisy (Y, X)
    target under `compare`'s protocol: the target's own mean pixel-noise variance
    (`register.noise_variance`) after `normalize_target`. Where a noiseless truth exists (the demo)
    it can be checked against it; where none does (real acquisitions) it says how far any
    prediction can go. Detail finer than a pixel counts as noise, so it errs low on undersampled
    targets."""
    from bpho.datasets.register import noise_variance

    return float(-10 * np.log10(max(noise_variance(normalize_target(target)), 1e-12)))


def _tensor(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None, None]


def compare(pred: np.ndarray, target: np.ndarray) -> Dict[str, float]:
    """PSNR, SSIM, MS-SSIM (piq) and NRMSE of a (Y, X) prediction against its (Y, X) target."""
    import piq

    p, t = prepare(pred, target)
    pt, tt = _tensor(p), _tensor(t)
    out = {
        "psnr": float(piq.psnr(pt, tt, data_range=1.0)),
        "ssim": float(piq.ssim(pt, tt, data_range=1.0, downsample=False)),
        "nrmse": float(np.sqrt(np.mean((p - t) ** 2))),
    }
    out["ms_ssim"] = float(piq.multi_scale_ssim(pt, tt, data_range=1.0)) if min(p.shape) > 160 else float("nan")
    return out


def flicker(pred: np.ndarray, target: np.ndarray) -> float:
    """Temporal flicker of a (T, Y, X) prediction against its (T, Y, X) target, T >= 2.

    Both stacks are prepared as `compare` prepares an image, but once for the whole stack: the
    target scaled so that its 0.1 / 99.9 percentiles over all frames become 0 / 1, the prediction
    mapped onto it by one least-squares scale and offset, both clipped to [0, 1]. Flicker is then
    ``sqrt(mean((p[t+1] - p[t] - (h[t+1] - h[t]))**2))`` over every t and pixel: the RMSE of the
    frame-to-frame changes against the target's, in units of the target's range (as NRMSE). It is
    0 for a prediction that changes as the target does (a copy of the target, or one shifted by the
    same amount in every frame, where the target stands still), and about ``s * sqrt(2)`` for
    independent noise of standard deviation ``s`` added to each frame of a still target. Lower is
    better; what a per-frame score cannot see: noise frozen in place scores as well as noise that
    changes every frame, but only the latter shimmers.
    """
    if pred.ndim != 3 or pred.shape != target.shape or pred.shape[0] < 2:
        raise ValueError(f"flicker needs two equal (T, Y, X) stacks with T >= 2, got {pred.shape} and {target.shape}")
    p, t = prepare(pred, target)
    return float(np.sqrt(np.mean((np.diff(p, axis=0) - np.diff(t, axis=0)) ** 2)))


@dataclass(frozen=True)
class FRC:
    """frequencies: cycles per pixel (0 .. 0.5); curve: correlation per ring;
    resolution_px: 1 / the first frequency below 1/7 (None if it never falls below)."""

    frequencies: np.ndarray
    curve: np.ndarray
    resolution_px: Optional[float]

    def resolution_nm(self, pixel_um: Optional[float]) -> Optional[float]:
        """The resolution in nm for HR pixels of `pixel_um` micrometres (None without a pixel size)."""
        if self.resolution_px is None or not pixel_um:
            return None
        return self.resolution_px * pixel_um * 1000.0


def frc(a: np.ndarray, b: np.ndarray, bin_width: float = 1.0) -> FRC:
    """Fourier ring correlation of two equally shaped (Y, X) images (Hann-windowed, square crop)."""
    n = min(a.shape)
    a, b = a[:n, :n].astype(np.float64), b[:n, :n].astype(np.float64)
    window = np.outer(np.hanning(n), np.hanning(n))
    fa = np.fft.fftshift(np.fft.fft2((a - a.mean()) * window))
    fb = np.fft.fftshift(np.fft.fft2((b - b.mean()) * window))
    yy, xx = np.indices((n, n)) - n // 2
    rings = (np.hypot(yy, xx) / bin_width).astype(int).ravel()
    last = n // 2
    num = np.bincount(rings, (fa * fb.conj()).real.ravel(), minlength=last + 1)[: last + 1]
    da = np.bincount(rings, (np.abs(fa) ** 2).ravel(), minlength=last + 1)[: last + 1]
    db = np.bincount(rings, (np.abs(fb) ** 2).ravel(), minlength=last + 1)[: last + 1]
    curve = num / np.sqrt(np.maximum(da * db, 1e-300))
    freqs = np.arange(last + 1) * bin_width / n
    smooth = ndimage.uniform_filter1d(curve, 3)
    below = np.flatnonzero((smooth < FRC_THRESHOLD) & (freqs > 0.02))
    resolution = float(1.0 / freqs[below[0]]) if below.size else None
    return FRC(freqs, curve, resolution)


def frc_single(image: np.ndarray) -> FRC:
    """One-image FRC: the (even, even) and (odd, odd) pixels as two halves; resolution in
    original pixels. Valid only where pixel noise is independent (raw acquisitions): any
    filtering, interpolation or denoising correlates neighbouring pixels and makes the
    halves agree beyond the true resolution."""
    h, w = (image.shape[0] // 2) * 2, (image.shape[1] // 2) * 2
    a = image[0:h:2, 0:w:2].astype(np.float64)
    b = image[1:h:2, 1:w:2].astype(np.float64)
    b = np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(b), (0.5, 0.5))).real  # undo the half-pixel offset
    half = frc(a, b)
    res = half.resolution_px * 2 if half.resolution_px else None
    return FRC(half.frequencies / 2, half.curve, res)
