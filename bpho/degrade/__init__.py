"""Low-resolution synthesis ("crappifiers"): HR -> LR degradation models.

Each model is a small typed function ``degrade(hr, params, rng, hr_pixel_um) -> lr`` on a
(Y, X) image or a (T, Y, X) stack (frames get independent noise), float or uint16 counts
(uint16 in gives uint16 out), with a frozen dataclass of named parameters:

- ``classic``  (`classic.py`): noise on the HR, then downsampling; the point-scanning
  super-resolution crappifier;
- ``physical`` (`physical.py`): PSF blur in nanometres, integration over LR pixels,
  background, Poisson photons, gain, offset, read noise, quantisation;
- ``fitted``   (`fitted.py`): `physical` with its parameters estimated from real pairs.

``expected=True`` returns the noise-free mean LR instead of a sample (for comparisons).

The registry: each module declares its degradation with one `register` line at its end (a
`DegradationModel`: name, parameter class, degrade function, and the Optuna search space of
``bpho tune degradation``, or a fit when it is estimated from real pairs, as ``fitted`` is).
`bpho synthesize`, ``bpho tune degradation`` (and its report) and the commands' choices read
`DEGRADATIONS`; a new degradation is one module here and its import at the end of this file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from bpho.config import from_settings
from bpho.errors import BphoError


def as_float(hr: np.ndarray) -> np.ndarray:
    """(T, Y, X) float64 from a (Y, X) or (T, Y, X) array; NaN/inf refused."""
    x = np.asarray(hr, dtype=np.float64)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise BphoError(f"degrade: expected a (Y, X) image or (T, Y, X) stack, got shape {np.shape(hr)}")
    if not np.isfinite(x).all():
        raise BphoError("degrade: the image holds NaN or infinite values")
    return x


def like_input(lr: np.ndarray, hr: np.ndarray, max_value: float = 65535) -> np.ndarray:
    """Back to the input's layout and type: uint16 counts are rounded and clipped, floats stay float32."""
    if np.ndim(hr) == 2:
        lr = lr[0]
    if np.asarray(hr).dtype == np.uint16:
        return np.clip(np.round(lr), 0, min(max_value, 65535)).astype(np.uint16)
    return lr.astype(np.float32)


def bin_area(x: np.ndarray, scale: int) -> np.ndarray:
    """Mean over scale x scale pixel blocks of the last two axes (integration over LR pixels)."""
    if scale == 1:
        return x
    *lead, h, w = x.shape
    h, w = h // scale, w // scale
    return x[..., :h * scale, :w * scale].reshape(*lead, h, scale, w, scale).mean(axis=(-3, -1))


def reference_level(x: np.ndarray, percentile: float) -> float:
    """The intensity that parameters such as `photons` refer to (a high percentile; 1 if the image is dark)."""
    level = float(np.percentile(x, percentile))
    return level if level > 0 else 1.0


def check_scale(hr: np.ndarray, scale: int) -> None:
    """Refuse a scale below 1 or one that does not divide the HR's height and width."""
    if scale < 1 or hr.shape[-1] % scale or hr.shape[-2] % scale:
        raise BphoError(f"degrade: HR of {hr.shape[-2]}x{hr.shape[-1]} pixels is not divisible by scale={scale}")


def spread(rng: np.random.Generator, bounds: Tuple[float, float]) -> float:
    """A value drawn uniformly from `bounds` (their lower end when the range is empty)."""
    lo, hi = bounds
    return float(lo if hi <= lo else rng.uniform(lo, hi))


@dataclass(frozen=True)
class DegradationModel:
    """A degradation, by name.

    Attributes
    ----------
    name : str
        What ``--degradation`` and the manifests call it.
    params : type
        Its parameters: a frozen dataclass with defaults, a ``scale`` field and ``validated()``.
    degrade : callable
        ``degrade(hr, params, rng=None, hr_pixel_um=None, expected=False) -> lr``.
    search : callable, optional
        The space ``bpho tune degradation`` searches: ``search(pairs)`` (the registered
        training pairs, `fitted.RegisteredPair`) returns ``suggest(trial) -> {parameter:
        value}`` for an Optuna trial; None: not searched.
    fit : callable, optional
        For a degradation estimated from real pairs instead: ``fit(pairs, scale)`` returns an
        object with ``params``, ``pairs`` (their names) and ``explained``.
    """

    name: str
    params: type
    degrade: Callable
    search: Optional[Callable] = None
    fit: Optional[Callable] = None

    def params_from(self, settings: Mapping[str, object]):
        """Its parameters from {name: value or text} (`config.from_settings`), validated."""
        return from_settings(self.params, settings, f"degradation {self.name}").validated()


DEGRADATIONS: Dict[str, DegradationModel] = {}


def register(model: DegradationModel) -> DegradationModel:
    """Add `model` to the registry under its name (a later one with the same name replaces it)."""
    DEGRADATIONS[model.name] = model
    return model


def degradation_model(name: str) -> DegradationModel:
    """The registered degradation `name`; an unknown name gets one line listing the known ones."""
    try:
        return DEGRADATIONS[str(name)]
    except KeyError:
        raise BphoError(f"degradation {name!r} is unknown; use one of {', '.join(DEGRADATIONS)}") from None


from bpho.degrade import classic, physical, fitted  # noqa: E402,F401  each registers itself, in this order
