"""Predict: LR images, z-stacks and movies (CZI or TIFF) to HR ImageJ TIFF that Fiji opens,
or OME-TIFF (``fmt="ome-tiff"``: physical pixel sizes, axes and channel names in OME-XML).

Every scene of every input becomes ``OUT/<stem>.tif`` or ``OUT/<stem>.ome.tif`` (and
``<stem>.png``, its first frame next to the LR) (``<stem>_s<N>...`` for multi-scene
files): axes (T, Z, C, Y, X) kept, pixel size y/x divided by the model's scale, float32.
Each channel and z plane is super-resolved on its own; a multi-frame model slides its
frame window along T (edges padded by reflection). Frames are written as they are
predicted, so output memory stays at one frame; the file appears only when complete.
"""

from __future__ import annotations

import queue
import sys
import threading
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List

import numpy as np
import tifffile
from tqdm import tqdm

from bpho import io, tracking
from bpho.config import PredictConfig
from bpho.errors import BphoError
from bpho.inference import load_model
from bpho.paths import atomic_file


def predict_files(model_uri: str, inputs: Iterable, out_dir, cfg: PredictConfig = PredictConfig(),
                  progress: bool = True) -> List[Path]:
    """Super-resolve image files (CZI, TIFF; every scene, frame and plane) into `out_dir`.

    Parameters
    ----------
    model_uri : str
        ``runs:/ID/model``, ``models:/NAME/VERSION`` or ``models:/NAME/latest``.
    inputs : iterable of path
        LR files; all are checked before the model is loaded or anything written.
    out_dir : path
        Output folder: one TIFF per input scene (``NAME.tif`` or ``NAME.ome.tif``) and a PNG preview.
    cfg : PredictConfig
        Tiles, context, precision, device, the 8-fold flip/rotation ensemble and the file format.

    Returns
    -------
    list of Path
        The files written.
    """
    fmt = cfg.format
    inputs = [Path(p) for p in inputs]
    for path in inputs:  # check every input before loading the model or writing anything
        io.file_kind(path)
    model = load_model(tracking.download_model(model_uri), device=cfg.device, tile=cfg.tile, overlap=cfg.overlap,
                       batch=cfg.batch, context=cfg.context, precision=cfg.precision, ensemble=cfg.ensemble)
    out_dir = Path(out_dir)
    written = []
    for path in tqdm(inputs, desc="files", unit="file", disable=not progress or len(inputs) < 2):
        n = io.count_scenes(path)
        for scene in range(n):
            img = io.read(path, scene=scene)
            stem = path.stem[:-4] if path.stem.endswith(".ome") else path.stem
            target = out_dir / (f"{stem}{FORMATS[fmt]}" if n == 1 else f"{stem}_s{scene}{FORMATS[fmt]}")
            written.append(_predict_image(model, img, target, progress, fmt))
    return written


FORMATS = {"imagej": ".tif", "ome-tiff": ".ome.tif"}


def _predict_image(model, img: io.Image, target: Path, progress: bool, fmt: str = "imagej") -> Path:
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

    first: list = []
    failed: list = []
    base = target.name[:-len(".ome.tif")] if target.name.endswith(".ome.tif") else target.stem
    png, png_part = target.with_name(f"{base}.png"), target.with_name(f".{base}.part.png")

    def draw():
        try:
            save_prediction_preview(png_part, img.data[0, 0, 0], first[0], s)
        except Exception as exc:  # raised in the caller, after the TIFF
            failed.append(exc)

    preview = threading.Thread(target=draw, daemon=True)

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
                    frame = next(series[(zi, ci)]).astype(np.float32, copy=False)
                    if not first:  # its PNG is drawn while the TIFF is written
                        first.append(frame)
                        preview.start()
                    yield frame

    pz, py, px = img.pixel_size
    if fmt == "ome-tiff":  # OME-XML: physical sizes in um, axes, channel names
        meta = {"axes": "TZCYX", "Channel": {"Name": [f"C{i}" for i in range(c)]},
                **({"PhysicalSizeX": px / s, "PhysicalSizeXUnit": "µm"} if px else {}),
                **({"PhysicalSizeY": py / s, "PhysicalSizeYUnit": "µm"} if py else {}),
                **({"PhysicalSizeZ": pz, "PhysicalSizeZUnit": "µm"} if pz else {})}
        kind: Dict[str, Any] = {"ome": True}
    else:  # ImageJ hyperstack; no calibration where the input has none (not 1 um a pixel)
        meta = {"axes": "TZCYX", **({"unit": "um"} if px and py else {}), **({"spacing": pz} if pz else {})}
        kind = {"imagej": True, **({"resolution": (s / px, s / py)} if px and py else {})}
    try:
        with atomic_file(target, suffix=".tif") as tmp:
            tifffile.imwrite(tmp, ahead(frames()), shape=(t, z, c, y * s, x * s), dtype=np.float32, metadata=meta,
                             **kind)
    finally:
        bar.close()  # also on an error, so that its message starts a clean line
        if preview.is_alive():
            preview.join()
        if failed or sys.exc_info()[0] is not None:
            png_part.unlink(missing_ok=True)
    if failed:
        raise failed[0]
    png_part.replace(png)
    return target


def ahead(items: Iterator, depth: int = 2) -> Iterator:
    """`items` computed in a thread, up to `depth` ahead of the consumer: the next frame is
    predicted while this one is written. An error in the thread is raised here."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def work():
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((done, None))
        except BaseException as exc:  # handed to the consumer
            q.put((done, exc))

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while True:
            item, exc = q.get()
            if exc is not None:
                raise exc
            if item is done:
                return
            yield item
    finally:
        stop.set()
        thread.join()


def save_prediction_preview(png: Path, lr: np.ndarray, hr: np.ndarray, scale: int, side: int = 512) -> None:
    """First frame, first channel and plane: LR (pixels repeated) | prediction, each at most
    `side` px wide (a big image is subsampled for the view; the TIFF holds every pixel), each
    scaled to its own 1-99.8th percentiles."""
    from bpho.plots import save_grid

    step = max(1, -(-max(hr.shape) // side))
    view = hr[::step, ::step]
    rows, cols = (np.arange(n) * step // scale for n in view.shape)
    lr_view = lr[np.ix_(np.minimum(rows, lr.shape[0] - 1), np.minimum(cols, lr.shape[1] - 1))]
    panels = []
    for image in (lr_view, view):
        lo, hi = np.percentile(image, (1, 99.8))
        panels.append((image - lo) / max(hi - lo, 1e-12))
    save_grid(png, [panels], labels=("LR", "bpho prediction"))
