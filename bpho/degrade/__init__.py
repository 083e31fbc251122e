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
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Tuple

import numpy as np

from bpho.errors import BphoError

NAMES = ("classic", "physical", "fitted")


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
    if scale < 1 or hr.shape[-1] % scale or hr.shape[-2] % scale:
        raise BphoError(f"degrade: HR of {hr.shape[-2]}x{hr.shape[-1]} pixels is not divisible by scale={scale}")


def params_from(cls, settings: Dict[str, object]):
    """A params dataclass from KEY=VALUE strings or values, with each field's type; unknown keys refused."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, raw in settings.items():
        if key not in fields:
            raise BphoError(f"degradation {cls.__name__}: unknown parameter {key!r} (use {', '.join(fields)})")
        default = getattr(cls(), key)
        try:
            if isinstance(default, tuple):
                parts = raw.split(",") if isinstance(raw, str) else list(raw)
                value = tuple(float(p) for p in parts)
                if len(value) == 1:
                    value = (value[0], value[0])
            elif isinstance(default, bool):
                value = raw if isinstance(raw, bool) else str(raw).lower() in ("1", "true", "yes")
            elif isinstance(default, int):
                value = int(raw)
            elif isinstance(default, float) or default is None:
                value = float(raw) if raw not in ("", None, "none") else None
            else:
                value = str(raw)
        except ValueError:
            raise BphoError(f"degradation {cls.__name__}: {key}={raw!r} is not a valid {type(default).__name__}") from None
        values[key] = value
    return cls(**values).validated()


def spread(rng: np.random.Generator, bounds: Tuple[float, float]) -> float:
    lo, hi = bounds
    return float(lo if hi <= lo else rng.uniform(lo, hi))
