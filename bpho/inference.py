"""A trained model as a callable on whole images: normalisation, tiling with overlap, blending.

Arrays: an LR image is (Y, X); an LR stack is (T, Y, X) (time-lapse frames). Outputs are
float32, `scale` times larger, in the input's intensity units: the LR is normalised by its
own percentiles (the dataset's `percentile_low/high`), the network predicts normalised HR,
and the result is mapped back with the same two values.

A model folder holds ``weights.safetensors`` (tensors only: nothing is unpickled) and
``bpho_model.json`` (network config, normalisation, dataset lineage).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from bpho.config import InferenceConfig
from bpho.datasets.tiling import frame_window
from bpho.errors import BphoError, BphoWarning
from bpho.models import build_model, model_config

WEIGHTS, META = "weights.safetensors", "bpho_model.json"
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# what a bpho 0.1 model folder did not record, because it was all there was
BPHO_01_MODEL = {"depth": None, "head_channels": None, "padding": "zeros"}
# ... and what models saved before bpho 0.3 did not record (their networks were all residual)
BPHO_02_MODEL = {"head_relu": True, "residual": True}


def pick_device(device: str = "auto") -> torch.device:
    """The torch device for `device` (auto: CUDA when available); a missing CUDA gets one line."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise BphoError("--device cuda: no CUDA device is available here; use --device cpu or auto")
    return with_index(torch.device(device))


def with_index(device: torch.device) -> torch.device:
    """A CUDA device with its index (``cuda`` -> ``cuda:<current>``): some CUDA calls, such as
    ``set_per_process_memory_fraction``, refuse a device without one."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())  # type: ignore[unreachable]
    return device


def save_model(folder: Path, net: torch.nn.Module, meta: dict) -> Path:
    """Write the network's weights (safetensors) and `meta` (bpho_model.json) into `folder`; returns it."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(folder / WEIGHTS))
    (folder / META).write_text(json.dumps(meta, indent=2))
    return folder


def blocks(h: int, w: int, size: int) -> list:
    """The blocks (y, x, h, w) an (h, w) LR image is predicted in: `size` px squares from the top
    left (smaller at the right and bottom edges). Each is tiled on its own with `context` px of
    the image around it, so memory follows the block and blocks can be predicted in any order
    or process with the same result."""
    return [(y, x, min(size, h - y), min(size, w - x)) for y in range(0, h, size) for x in range(0, w, size)]


def _blend_window(n: int, ramp: int) -> np.ndarray:
    """1 in the middle, linear ramps of length `ramp` at both ends (never 0)."""
    w = np.ones(n, np.float32)
    if ramp > 0:
        r = (np.arange(ramp, dtype=np.float32) + 1) / (ramp + 1)
        w[:ramp], w[-ramp:] = np.minimum(w[:ramp], r), np.minimum(w[-ramp:], r[::-1])
    return w


def _fitted(n: int, tile: int, overlap: int) -> int:
    """The smallest tile side, at most `tile`, that covers n with as few tiles as `tile` needs:
    no more pixels are predicted twice than the overlap asks for."""
    if n <= tile:
        return n
    count = int(np.ceil((n - overlap) / (tile - overlap)))
    return int(np.ceil((n + (count - 1) * overlap) / count))


def _starts(n: int, tile: int, overlap: int) -> list:
    """The fewest tile origins covering 0..n with at least `overlap` between neighbours, evenly spread."""
    if n <= tile:
        return [0]
    count = int(np.ceil((n - overlap) / max(tile - overlap, 1)))
    return sorted({int(round(v)) for v in np.linspace(0, n - tile, count)})


@dataclass
class SuperResolver:
    """A loaded bpho model. `tile`, `overlap` and `context` are in LR pixels.

    Each tile is predicted from a window `context` pixels wider on every side (the image is
    mirrored beyond its edges once, for all tiles alike) and only its own part is kept, so a
    pixel is predicted from at least the same neighbourhood whatever the tile size (on the demo
    the PSNR moves by 0.001 dB from 32 to 256 px tiles). `overlap` blends what is left of the seams.
    Tiles are cut, predicted and blended on the model's device; one HR frame comes back. An
    image wider or higher than `block` px is predicted in `block` px squares, each tiled on its
    own with the image around it as context (memory follows the block, not the image).
    `precision` (fp32, fp16, bf16) is the network's; blending is always float32.
    `ensemble`: each tile (with its context, every frame alike) is predicted in its 8 flips and
    90-degree rotations, each prediction turned back and the 8 averaged (8 forward passes a tile).
    """

    net: torch.nn.Module
    meta: dict
    device: torch.device
    tile: int = 128  # load_model's on a CPU; 512 on a GPU
    overlap: int = InferenceConfig.overlap
    batch: int = InferenceConfig.batch
    precision: str = InferenceConfig.precision
    context: int = InferenceConfig.context
    ensemble: bool = InferenceConfig.ensemble
    block: int = InferenceConfig.block

    def __post_init__(self):
        if (self.tile < 1 or self.overlap < 0 or self.context < 0 or self.batch < 1 or self.overlap >= self.tile
                or self.block < 1):
            raise BphoError(f"inference tiles: tile={self.tile}, overlap={self.overlap}, context={self.context}, "
                            f"batch={self.batch}, block={self.block}; need tile >= 1, 0 <= overlap < tile, "
                            "context >= 0, batch >= 1, block >= 1")
        if self.precision not in PRECISIONS:
            raise BphoError(f"inference precision {self.precision!r}: use one of {', '.join(PRECISIONS)}")

    @property
    def scale(self) -> int:
        """The model's upscaling factor (HR pixels per LR pixel)."""
        return int(self.meta["model"]["scale"])

    @property
    def frames(self) -> int:
        """The LR frames the model takes per output frame."""
        return int(self.meta["model"]["frames"])

    def _normalisation(self, data: np.ndarray):
        p = self.meta["normalization"]
        lo, hi = np.percentile(data, (p["percentile_low"], p["percentile_high"]))
        if not np.isfinite([lo, hi]).all():
            raise BphoError("the input holds NaN or infinite values")
        return float(lo), float(max(hi - lo, 1e-6))


    def predict_block(self, series, t: int, box, lo: float, span: float) -> np.ndarray:
        """The HR of block `box` = (y, x, h, w) of frame `t` of a (T, Y, X) LR `series` (a numpy
        array, or a lazy one such as dask's: only the rows and columns the block needs, with its
        context and the model's frame window, are read), normalised by (`lo`, `span`);
        (h*scale, w*scale) float32 in the input's units."""
        n_t, h, w = series.shape
        frames = frame_window(t, self.frames, n_t)
        rows, cols = self._around(box, h, w)
        r0, c0 = int(rows.min()), int(cols.min())
        region = np.asarray(series[frames, r0:int(rows.max()) + 1, c0:int(cols.max()) + 1])
        padded = (region[:, rows - r0][:, :, cols - c0].astype(np.float32) - lo) / span
        return self._predict_padded(padded, box[2], box[3], lo, span)

    def _around(self, box, h: int, w: int):
        """Row and column indices of `box` with `context` px around it, mirrored beyond the image
        (numpy's reflect padding; edge padding for an image one pixel high or wide)."""
        y, x, bh, bw = box
        c = self.context
        rows, cols = np.arange(y - c, y + bh + c), np.arange(x - c, x + bw + c)
        if min(h, w) <= 1:
            return np.clip(rows, 0, h - 1), np.clip(cols, 0, w - 1)
        return _reflect_all(rows, h), _reflect_all(cols, w)

    def predict_normalized(self, window: np.ndarray, lo: float = 0.0, span: float = 1.0) -> np.ndarray:
        """(frames, h, w) normalised LR -> (h*scale, w*scale) HR, tiled and blended block by block,
        times `span` plus `lo` (the input's units)."""
        f, h, w = window.shape
        s = self.scale
        out = np.empty((h * s, w * s), np.float32)
        for box in blocks(h, w, self.block):
            y, x, bh, bw = box
            rows, cols = self._around(box, h, w)
            padded = window[:, rows][:, :, cols]
            out[y * s:(y + bh) * s, x * s:(x + bw) * s] = self._predict_padded(padded, bh, bw, lo, span)
        return out

    @torch.no_grad()
    def _predict_padded(self, window: np.ndarray, h: int, w: int, lo: float, span: float) -> np.ndarray:
        """(frames, h + 2 context, w + 2 context) normalised LR with its context around it ->
        (h*scale, w*scale) HR, tiled and blended, times `span` plus `lo`."""
        s, tile, c = self.scale, self.tile, self.context
        dev = self.device
        out = torch.zeros((h * s, w * s), dtype=torch.float32, device=dev)
        th, tw = _fitted(h, tile, self.overlap), _fitted(w, tile, self.overlap)
        ys, xs = _starts(h, th, self.overlap), _starts(w, tw, self.overlap)
        padded = torch.from_numpy(np.ascontiguousarray(window, dtype=np.float32))
        padded = padded.to(dev, PRECISIONS[self.precision], non_blocking=True)
        ramp = self.overlap * s // 2
        win_y, win_x = (torch.from_numpy(_blend_window(n * s, ramp)).to(dev) for n in (th, tw))
        win = torch.outer(win_y, win_x)
        # the tiles form a grid, so the blending weights sum to an outer product: two vectors, not a frame
        weight_y, weight_x = torch.zeros(h * s, device=dev), torch.zeros(w * s, device=dev)
        for y in ys:
            weight_y[y * s:(y + th) * s] += win_y
        for x in xs:
            weight_x[x * s:(x + tw) * s] += win_x
        boxes = [(y, x) for y in ys for x in xs]
        for i in range(0, len(boxes), self.batch):
            chunk = boxes[i:i + self.batch]
            x = torch.stack([padded[:, y:y + th + 2 * c, x0:x0 + tw + 2 * c] for y, x0 in chunk])
            pred = self._forward(x)[:, 0, c * s:(c + th) * s, c * s:(c + tw) * s].float()
            for (y, x0), p in zip(chunk, pred):
                out[y * s:(y + th) * s, x0 * s:(x0 + tw) * s] += p * win
        out.div_(weight_y[:, None]).div_(weight_x[None, :])
        return out.mul_(span).add_(lo).cpu().numpy()

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """(n, frames, h, w) -> (n, 1, h*scale, w*scale): the network, or with `ensemble` the
        float32 mean of its 8 predictions of the flipped and rotated tiles, each turned back."""
        if not self.ensemble:
            return self.net(x)
        total = torch.zeros((), device=x.device)
        for flip in (False, True):
            for k in range(4):  # rot90 by k quarter turns swaps h and w for odd k: the network takes any size
                t = torch.rot90(torch.flip(x, (-1,)) if flip else x, k, (-2, -1))
                y = torch.rot90(self.net(t).float(), -k, (-2, -1))
                total = total + (torch.flip(y, (-1,)) if flip else y)
        return total / 8

    def predict_image(self, image: np.ndarray) -> np.ndarray:
        """(Y, X) LR in any dtype -> (Y*scale, X*scale) float32 HR in the input's units."""
        image = np.asarray(image, dtype=np.float32)
        if image.ndim != 2:
            raise BphoError(f"expected a 2D image, got shape {image.shape}")
        lo, span = self._normalisation(image)
        window = np.repeat(((image - lo) / span)[None], self.frames, axis=0)
        return self.predict_normalized(window, lo, span)

    def predict_frames(self, stack: np.ndarray) -> Iterator[np.ndarray]:
        """(T, Y, X) LR -> HR frames one at a time (memory stays bounded for long movies).

        A multi-frame model sees frames t-2..t+2 (its window), with the edges padded by
        reflection; a single-frame model sees frame t. One normalisation for the whole stack.
        """
        stack = np.asarray(stack)
        if stack.ndim != 3:
            raise BphoError(f"expected a (T, Y, X) stack, got shape {stack.shape}")
        lo, span = self._normalisation(stack)
        t_total = stack.shape[0]
        for t in range(t_total):
            idx = frame_window(t, self.frames, t_total)
            window = (stack[idx].astype(np.float32) - lo) / span
            yield self.predict_normalized(window, lo, span)

    def predict(self, data: np.ndarray) -> np.ndarray:
        """A (Y, X) image -> (Y*s, X*s); a (T, Y, X) stack -> (T, Y*s, X*s)."""
        data = np.asarray(data)
        if data.ndim == 2:
            if self.frames > 1:
                raise BphoError(f"this model takes {self.frames} frames: give a (T, Y, X) stack")
            return self.predict_image(data)
        return np.stack(list(self.predict_frames(data)))


def _reflect_all(i: np.ndarray, n: int) -> np.ndarray:
    """Numpy's reflect padding of every index in `i`, however far beyond 0..n-1."""
    period = 2 * (n - 1)
    i = np.mod(i, period)
    return np.where(i < n, i, period - i)


def load_model(folder: Path, device: str = InferenceConfig.device, precision: str = InferenceConfig.precision,
               **options) -> SuperResolver:
    """Rebuild the network from its saved config and load its weights (safetensors only).
    `options` are SuperResolver's; `tile` None is 512 on a GPU (big tiles keep it busy), 128 on
    a CPU. fp16 on a CPU runs as fp32 (with a warning): CPUs convolve fp16 slowly."""
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        meta = json.loads((folder / META).read_text())
        state = load_file(str(folder / WEIGHTS))
    except (OSError, ValueError) as exc:
        raise BphoError(f"{folder}: not a bpho model folder ({exc})") from None
    return build(meta, state, device, precision, **options)


def build(meta: dict, state: dict, device: str = InferenceConfig.device,
          precision: str = InferenceConfig.precision, **options) -> SuperResolver:
    """A SuperResolver from a model's meta (bpho_model.json) and its tensors, as `load_model` describes."""
    config = model_config({**BPHO_01_MODEL, **BPHO_02_MODEL, **meta["model"]})
    written = {k: list(v) if isinstance(v, tuple) else v for k, v in config.to_dict().items()}
    meta = {**meta, "model": written}  # every setting written out (as JSON has it), for export and lineage
    net = build_model(config)
    net.load_state_dict(state)
    dev = pick_device(device)
    if dev.type == "cpu" and precision == "fp16":
        warnings.warn("fp16 inference needs a GPU; running in fp32 on the CPU", BphoWarning, stacklevel=3)
        precision = "fp32"
    if options.get("tile") is None:
        options["tile"] = 512 if dev.type == "cuda" else SuperResolver.tile
    model = SuperResolver(net=net, meta=meta, device=dev, precision=precision, **options)  # checks the options
    model.net = net.to(dev, PRECISIONS[precision]).eval()
    return model
