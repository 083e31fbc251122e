"""`classic`: the crappifier of point-scanning super-resolution work (Fang et al. 2021).

Per image, noise amounts are drawn from ranges: Poisson noise at `poisson_peak` photons for
the reference level (the image's 99.9th percentile; 0 turns it off), additive Gaussian noise
of standard deviation `gauss_std` times the reference level, optional salt-and-pepper noise
(a fraction `salt_pepper` of pixels set to 0 or to the reference level); then the noisy HR
is downsampled by `scale`, by area mean (``area``: what a larger pixel integrates) or
bilinear interpolation (``bilinear``: sampling; aliases).

Mean intensity: Poisson and Gaussian noise have zero mean, and the area mean keeps the mean, so
float output has the input's mean in expectation. uint16 output is clipped at 0 (a slight rise
where Gaussian noise reaches below zero). Salt-and-pepper moves the mean towards half the
reference level by the fraction it replaces. Noise variance of an output pixel over a
flat HR field of value c (the reference): (c^2 gauss_std^2 + c^2 / poisson_peak) / scale^2
for ``area``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from bpho.degrade import (DegradationModel, as_float, bin_area, check_scale, like_input, reference_level,
                          register, spread)
from bpho.errors import BphoError


@dataclass(frozen=True)
class ClassicParams:
    """Parameters of the classic degradation (tuples are ranges drawn per image)."""

    scale: int = 4
    gauss_std: Tuple[float, float] = (0.01, 0.05)  # x reference level, drawn per image
    poisson_peak: Tuple[float, float] = (20.0, 100.0)  # photons at the reference level, drawn per image; 0: off
    salt_pepper: float = 0.0
    downsample: str = "area"  # area | bilinear
    reference_percentile: float = 99.9
    level: Optional[float] = None  # the reference level itself (default: from the percentile)

    def validated(self) -> "ClassicParams":
        """The parameters themselves when valid; otherwise one BphoError."""
        if self.downsample not in ("area", "bilinear"):
            raise BphoError(f"classic: downsample={self.downsample!r} (use area or bilinear)")
        if min(self.gauss_std) < 0 or min(self.poisson_peak) < 0 or not 0 <= self.salt_pepper < 1 or self.scale < 1:
            raise BphoError("classic: gauss_std, poisson_peak >= 0, 0 <= salt_pepper < 1, scale >= 1")
        return self


def degrade(hr: np.ndarray, p: ClassicParams = ClassicParams(), rng: Optional[np.random.Generator] = None,
            hr_pixel_um: Optional[float] = None, expected: bool = False) -> np.ndarray:
    """LR from HR; see the module docstring. `hr_pixel_um` is not needed (the model is in pixels)."""
    rng = rng or np.random.default_rng()
    x = as_float(hr)
    check_scale(x, p.scale)
    level = p.level or reference_level(x, p.reference_percentile)
    x = x / level
    if not expected:
        peak, std = spread(rng, p.poisson_peak), spread(rng, p.gauss_std)
        if peak > 0:
            x = rng.poisson(np.clip(x, 0, None) * peak) / peak
        x = x + rng.normal(0.0, std, x.shape) if std > 0 else x
        if p.salt_pepper > 0:
            hit = rng.random(x.shape) < p.salt_pepper
            x = np.where(hit, (rng.random(x.shape) < 0.5).astype(float), x)
    if p.downsample == "area":
        lr = bin_area(x, p.scale)
    else:
        from skimage.transform import resize  # here: importing bpho.degrade (the commands' choices) stays quick

        shape = (x.shape[1] // p.scale, x.shape[2] // p.scale)
        lr = np.stack([resize(f, shape, order=1, anti_aliasing=False, mode="reflect") for f in x])
    return like_input(lr * level, hr)


def search(pairs):
    """The space `bpho tune degradation` searches (one noise amount per trial, not a range; the
    downsampling); `pairs` are not needed."""
    def suggest(trial) -> dict:
        std = trial.suggest_float("gauss_std", 1e-3, 0.3, log=True)
        peak = trial.suggest_float("poisson_peak", 1.0, 1000.0, log=True)
        return {"gauss_std": (std, std), "poisson_peak": (peak, peak),
                "downsample": trial.suggest_categorical("downsample", ["area", "bilinear"])}

    return suggest


register(DegradationModel("classic", ClassicParams, degrade, search=search))
