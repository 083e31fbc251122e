"""Normalisation and LR -> HR registration (scikit-image), on numpy arrays.

Axes: 2D images are (Y, X); stacks are (T, Y, X). Shifts are (dy, dx) in HR pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np
from scipy import ndimage, optimize
from skimage.registration import phase_cross_correlation
from skimage.transform import resize

from bpho.errors import BphoError

MIN_INTERIOR = 4  # LR pixels per side that registration compares after leaving out the shifted border


def percentile_range(stack: np.ndarray, low: float, high: float) -> Tuple[float, float]:
    lo, hi = np.percentile(stack, (low, high))
    return float(lo), float(hi)


def normalize(stack: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """CARE-style percentile normalisation to float32: lo -> 0, hi -> 1 (not clipped)."""
    return ((stack.astype(np.float32) - lo) / max(hi - lo, 1e-12)).astype(np.float32)


def upsample(image: np.ndarray, scale: int, order: int = 3) -> np.ndarray:
    """Spline upsampling of a (Y, X) image by `scale` (order 0 nearest, 1 bilinear, 3 bicubic),
    pixel areas kept aligned (LR pixel i covers HR pixels i*scale .. i*scale + scale - 1)."""
    if scale == 1:
        return image.astype(np.float32)
    shape = (image.shape[0] * scale, image.shape[1] * scale)
    return resize(image.astype(np.float32), shape, order=order, mode="reflect", anti_aliasing=False)


def ncc(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised cross-correlation (Pearson) of two equally shaped images."""
    a = a.astype(np.float64).ravel() - a.mean()
    b = b.astype(np.float64).ravel() - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else 0.0


@dataclass(frozen=True)
class Registration:
    """shift: (dy, dx) in HR pixels that moves the upsampled LR onto the HR.
    score: NCC of upsampled LR and HR after registration, on the interior both cover;
    score_before: the same without registration."""

    shift: Tuple[float, float]
    score: float
    score_before: float

    @property
    def margin(self) -> int:
        """HR pixels at each border that the shift fills with made-up values."""
        return int(np.ceil(max(abs(s) for s in self.shift))) + 2


def downsample(image: np.ndarray, scale: int) -> np.ndarray:
    """Area mean over scale x scale blocks: an HR (Y, X) image on the LR pixel grid."""
    h, w = image.shape[0] // scale, image.shape[1] // scale
    return image[: h * scale, : w * scale].reshape(h, scale, w, scale).mean(axis=(1, 3))


def register_pair(lr: np.ndarray, hr: np.ndarray, scale: int) -> Registration:
    """Translation that registers the (Y, X) LR image onto the (Y, X) HR image, sub-pixel.

    Compared on the LR grid (HR averaged over LR pixels: no interpolation of the noisy LR):
    phase cross-correlation without phase normalisation (robust to photon noise) gives the
    shift to 1/100 LR pixel; it is then refined by maximising the normalised
    cross-correlation on the interior both images cover (Powell; the HR is moved by a
    Fourier shift). On the 8 default demo pairs the refinement cut the worst error from
    0.28 to 0.21 HR pixels (mean 0.08 -> 0.06).
    """
    hr_on_lr = downsample(hr, scale)
    coarse, _, _ = phase_cross_correlation(hr_on_lr, lr, upsample_factor=100, normalization=None)
    coarse = np.asarray(coarse, dtype=float) * scale
    m = int(np.ceil((np.abs(coarse).max() + scale) / scale)) + 2
    if min(lr.shape) - 2 * m < MIN_INTERIOR:
        raise BphoError(f"{lr.shape[0]}x{lr.shape[1]} LR pixels is too small to register: a shift of "
                        f"{np.abs(coarse).max() / scale:.1f} LR px leaves under {MIN_INTERIOR} px inside; "
                        "use bigger images or register=False")
    inner = (slice(m, -m), slice(m, -m))
    spectrum = np.fft.fft2(hr_on_lr)

    def score(shift) -> float:
        moved = np.fft.ifft2(ndimage.fourier_shift(spectrum, -np.asarray(shift) / scale)).real
        return ncc(moved[inner], lr[inner])

    best = optimize.minimize(lambda s: -score(s), coarse, method="Powell",
                             bounds=[(c - scale, c + scale) for c in coarse], options={"xtol": 0.01})
    shift = (float(best.x[0]), float(best.x[1]))
    return Registration(shift=shift, score=score(shift), score_before=ncc(hr_on_lr[inner], lr[inner]))


def apply(stack: np.ndarray, shift: Tuple[float, float]) -> np.ndarray:
    """Shift every (Y, X) frame of a (T, Y, X) stack by (dy, dx) pixels (cubic spline)."""
    if not any(shift):
        return stack
    return np.stack([ndimage.shift(frame, shift, order=3, mode="nearest") for frame in stack]).astype(np.float32)
