"""Predict: LR images, z-stacks and movies (CZI or TIFF) to HR ImageJ TIFF that Fiji opens.

Every scene of every input becomes ``OUT/<stem>.tif`` (and ``<stem>.png``, its first frame
next to the LR) (``<stem>_s<N>.tif`` for multi-scene
files): axes (T, Z, C, Y, X) kept, pixel size y/x divided by the model's scale, float32.
Each channel and z plane is super-resolved on its own; a multi-frame model slides its
frame window along T (edges padded by reflection). Frames are written as they are
predicted, so output memory stays at one frame; the file appears only when complete.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, List

import numpy as np
import tifffile
from tqdm import tqdm

from bpho import io, tracking
from bpho.errors import BphoError
from bpho.inference import load_model
from bpho.paths import atomic_file


def predict_files(model_uri: str, inputs: Iterable, out_dir, device: str = "auto", tile: int = 128,
                  overlap: int = 16, batch: int = 4, half: bool = False, progress: bool = True,
                  context: int = 16) -> List[Path]:
    inputs = [Path(p) for p in inputs]
    for path in inputs:  # check every input before loading the model or writing anything
        io.file_kind(path)
    model = load_model(tracking.download_model(model_uri), device=device, tile=tile, overlap=overlap, batch=batch,
                       context=context, half=half)
    out_dir = Path(out_dir)
    written = []
    for path in tqdm(inputs, desc="files", unit="file", disable=not progress or len(inputs) < 2):
        n = io.count_scenes(path)
        for scene in range(n):
            img = io.read(path, scene=scene)
            target = out_dir / (f"{path.stem}.tif" if n == 1 else f"{path.stem}_s{scene}.tif")
            written.append(_predict_image(model, img, target, progress))
    return written


def _predict_image(model, img: io.Image, target: Path, progress: bool) -> Path:
    t, c, z, y, x = img.shape
    if model.frames > 1 and t < model.frames:
        raise BphoError(f"{img.path}: {t} frames is shorter than the model's frame window ({model.frames})")
    img.check_grey()
    if not np.isfinite(img.data).all():
        raise BphoError(f"{img.path}: the image holds NaN or infinite values; fix or re-export it")
    if not img.data.any():
        raise BphoError(f"{img.path}: the image is all zero (an empty or failed acquisition); check the file")
    s = model.scale
    bar = tqdm(total=t * c * z, desc=img.path.name, unit="frame", disable=not progress, leave=False)

    first = []

    def frames():
        # one (c, z) series at a time along T; pages must come out in ImageJ's T, Z, C order
        series = {}
        for zi in range(z):
            for ci in range(c):
                series[(zi, ci)] = model.predict_frames(img.data[:, ci, zi])
        for _ in range(t):
            for zi in range(z):
                for ci in range(c):
                    bar.update()
                    frame = next(series[(zi, ci)]).astype(np.float32)
                    if not first:
                        first.append(frame)
                    yield frame

    pz, py, px = img.pixel_size
    meta = {"axes": "TZCYX", "unit": "um", **({"spacing": pz} if pz else {})}
    resolution = {"resolution": (s / px, s / py)} if px and py else {}
    try:
        with atomic_file(target, suffix=".tif") as tmp:
            tifffile.imwrite(tmp, frames(), shape=(t, z, c, y * s, x * s), dtype=np.float32, imagej=True,
                             metadata=meta, **resolution)
    finally:
        bar.close()  # also on an error, so that its message starts a clean line
    save_preview(target.with_suffix(".png"), img.data[0, 0, 0], first[0], s)
    return target


def save_preview(png: Path, lr: np.ndarray, hr: np.ndarray, scale: int) -> None:
    """First frame, first channel and plane: LR (pixels repeated) | prediction."""
    from bpho.plots import pyplot

    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(10, 5.3))
    for ax, image, title in ((axes[0], np.kron(lr, np.ones((scale, scale))), "LR"), (axes[1], hr, "bpho prediction")):
        lo, hi = np.percentile(image, (1, 99.8))
        ax.imshow(image, cmap="magma", vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(png, dpi=72)
    plt.close(fig)
