"""The pictures people check a dataset by: LR over HR before and after registration
(`save_qc`), and random training tiles (`save_tile_preview`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from bpho.datasets.register import Registration, downsample
from bpho.plots import save_grid


def _overlay(lr_up: np.ndarray, hr: np.ndarray) -> np.ndarray:
    """Magenta LR over green HR: grey where they agree, coloured fringes where they do not."""
    a, b = np.clip(lr_up, 0, 1), np.clip(hr, 0, 1)
    return np.stack([a, b, a], axis=-1)


def save_qc(png: Path, key: str, lr: np.ndarray, hr_before: np.ndarray, hr_after: np.ndarray, scale: int,
            reg: Registration, left: Optional[dict] = None) -> None:
    """LR (magenta) over HR (green), before and after registration, at most ~768 px wide.

    Shown on the LR grid times k (LR pixels repeated, HR averaged), so the QC costs a
    fraction of the build even for 2048 px images.
    """
    # k divides the scale, so the HR averaged over scale/k pixels matches the LR repeated k times
    k = max(d for d in range(1, scale + 1) if scale % d == 0 and d <= max(1, 768 // max(lr.shape)))
    lr_view = np.repeat(np.repeat(lr, k, axis=0), k, axis=1)
    views = [downsample(h, scale // k) if scale // k > 1 else h for h in (hr_before, hr_after)]
    png.parent.mkdir(parents=True, exist_ok=True)
    save_grid(png, [[_overlay(lr_view, v) for v in views]], labels=("before", "after registration"),
              title=f"{key}: LR (magenta) on HR (green); {_described(reg)}, NCC {reg.score_before:.3f} -> "
                    f"{reg.score:.3f}" + (f"; residual {left['median_hr_px']:.2f} (p90 {left['p90_hr_px']:.2f}) HR px"
                                          if left and left.get("median_hr_px") is not None else ""))


def _described(reg: Registration) -> str:
    text = f"shift dy={reg.shift[0]:+.2f} dx={reg.shift[1]:+.2f} HR px"
    if reg.transform != "translation":
        text += f", rotation {reg.rotation_deg:+.2f} deg, zoom {reg.zoom:.4f}"
    if reg.flow is not None:
        text += f", local flow up to {reg.reach:.1f} HR px"
    return text


def save_tile_preview(png: Path, lr: np.ndarray, hr: np.ndarray, size: int, rng: np.random.Generator,
                      n: int = 6) -> None:
    """`n` random tiles, one per row: LR (centre frame, pixels repeated) | HR, both from 0 to 1."""
    pick = rng.choice(len(lr), size=min(n, len(lr)), replace=False) if len(lr) else np.zeros(0, int)
    png.parent.mkdir(parents=True, exist_ok=True)
    if not len(pick):
        return
    scale = size // lr.shape[-1]
    rows = [[np.kron(lr[i, lr.shape[1] // 2], np.ones((scale, scale))), hr[i, 0]] for i in pick]
    save_grid(png, rows, labels=(f"LR {lr.shape[-1]} px", f"HR {size} px"))
