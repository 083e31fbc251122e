"""`fitted`: the `physical` model with parameters estimated from real registered pairs.

For each pair the HR is registered onto the LR (as datasets do) and its dark level
(`hr_offset`, a low percentile) subtracted. Then:

- PSF width: the FWHM whose blurred, integrated HR best explains the real LR after a linear
  intensity mapping per pair (least squares; one FWHM for all pairs, bounded scalar search);
- noise: the residual (real LR minus that prediction) variance against the predicted mean, in
  intensity bins (robust, median absolute deviation), fitted by a line: the slope is the gain
  (ADU per photon), the intercept gives read noise; the dark level of the mapping is the
  offset; photons at the reference level = mapping slope x reference / gain.

Offset, background and read noise are not separable from a variance line; the fit puts the
whole dark level into `offset` (background 0), which gives the same mean and variance at
every intensity, i.e. the same Poisson-Gaussian statistics.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import List, Sequence, Tuple

import numpy as np

from bpho.degrade import DegradationModel, physical, register
from bpho.degrade.physical import HR_DARK_PERCENTILE, PhysicalParams
from bpho.errors import BphoError

degrade = physical.degrade  # the fitted model is the physical one with fitted parameters


@dataclass
class RegisteredPair:
    """One real pair for fitting: raw LR, HR registered onto it, the HR pixel size and the margin."""

    name: str
    lr: np.ndarray  # (Y, X) raw LR
    hr: np.ndarray  # (Y, X) raw HR, registered onto the LR
    hr_pixel_um: float
    margin: int = 0  # HR pixels at each border made up by the registration shift


@dataclass
class Fit:
    """A fitted physical degradation: its parameters, the pairs it was fitted on and how well it fits."""

    params: PhysicalParams
    pairs: List[str]
    fwhm_curve: List[Tuple[float, float]] = field(default_factory=list)  # (fwhm nm, relative residual)
    noise_points: List[Tuple[float, float]] = field(default_factory=list)  # (mean ADU, variance ADU^2)
    explained: float = 0.0  # R^2 of the intensity mapping at the best FWHM

    def noise_std(self, mean_adu: float) -> float:
        """The fitted detector's noise standard deviation (ADU) at a mean signal of `mean_adu`."""
        p = self.params
        return float(np.sqrt(max(p.gain * (mean_adu - p.offset), 0) + p.read_noise ** 2))


def _inner(img: np.ndarray, m: int) -> np.ndarray:
    return img[m:img.shape[0] - m, m:img.shape[1] - m] if m else img


def _mapping(s: np.ndarray, lr: np.ndarray) -> Tuple[float, float, float]:
    """Least-squares a, b in lr ~ a s + b; returns a, b and the residual sum of squares."""
    A = np.stack([s.ravel(), np.ones(s.size)], 1)
    (a, b), res, *_ = np.linalg.lstsq(A, lr.ravel(), rcond=None)
    rss = float(res[0]) if res.size else float(((A @ [a, b] - lr.ravel()) ** 2).sum())
    return float(a), float(b), rss


def fit(pairs: Sequence[RegisteredPair], scale: int, psf: str = "gaussian", max_fwhm_nm: float = 800.0,
        hr_offset_percentile: float = HR_DARK_PERCENTILE, bins: int = 24, bit_depth: int = 16) -> Fit:
    """Estimate `physical` parameters from registered pairs (see the module docstring)."""
    from scipy import optimize  # here: importing bpho.degrade (the commands' choices) stays quick

    if not pairs:
        raise BphoError("fitted: no registered pairs to fit on")
    base = PhysicalParams(scale=scale, psf=psf, background=0.0, bit_depth=bit_depth)
    m_lr = [int(np.ceil(p.margin / scale)) + 2 for p in pairs]
    offsets = [float(np.percentile(p.hr, hr_offset_percentile)) for p in pairs]
    total = sum(float(((_inner(p.lr, m) - _inner(p.lr, m).mean()) ** 2).sum()) for p, m in zip(pairs, m_lr))

    def signals(fwhm: float):
        for p, m, off in zip(pairs, m_lr, offsets):
            q = replace(base, psf_fwhm_nm=fwhm, hr_offset=off)
            yield _inner(physical.signal_of(p.hr, q, p.hr_pixel_um)[0], m), _inner(p.lr.astype(np.float64), m)

    curve = []

    def cost(fwhm: float) -> float:
        value = sum(_mapping(s, lr)[2] for s, lr in signals(fwhm)) / total
        curve.append((float(fwhm), float(value)))
        return value

    best = optimize.minimize_scalar(cost, bounds=(0.0, max_fwhm_nm), method="bounded", options={"xatol": 1.0})
    fwhm = float(best.x)
    means, resid, photons, darks = [], [], [], []
    for s, lr in signals(fwhm):
        a, b, _ = _mapping(s, lr)
        if a <= 0:
            raise BphoError("fitted: the LR does not brighten where the HR does; are the pairs matched?")
        mu = a * s + b
        means.append(mu.ravel())
        resid.append((lr - mu).ravel())
        photons.append(a * np.percentile(s, base.reference_percentile))  # ADU above dark at the reference
        darks.append(b)
    mu, r = np.concatenate(means), np.concatenate(resid)
    low, high = np.percentile(mu, (0.5, 99.8))
    edges = np.linspace(low, high, bins + 1)  # even in intensity: the bright end has leverage
    points, weights = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (mu >= lo) & (mu < hi)
        if inside.sum() >= 30:
            sel = r[inside]
            var = float((1.4826 * np.median(np.abs(sel - np.median(sel)))) ** 2)
            points.append((float(mu[inside].mean()), var))
            weights.append(np.sqrt(inside.sum()) / max(var, 1e-9))  # a variance estimate's error grows with it
    if len(points) < 3:
        raise BphoError("fitted: too few intensity levels to fit the noise; use larger or more pairs")
    pm, pv = np.array(points).T
    gain, intercept = np.polyfit(pm, pv, 1, w=np.asarray(weights))
    if gain <= 0:
        raise BphoError("fitted: the LR noise does not grow with intensity (no photon noise found); "
                        "use `physical` with known detector parameters")
    offset = float(np.median(darks))
    params = replace(base, psf_fwhm_nm=fwhm, hr_offset=float(np.median(offsets)), gain=float(gain), offset=offset,
                     read_noise=float(np.sqrt(max(intercept + gain * offset, 0.0))),
                     photons=float(np.median(photons) / gain)).validated()
    explained = 1.0 - best.fun
    return Fit(params=params, pairs=[p.name for p in pairs], fwhm_curve=sorted(curve), noise_points=points,
               explained=float(explained))


register(DegradationModel("fitted", PhysicalParams, degrade, fit=fit))  # estimated, not searched
