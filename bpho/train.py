"""Training: a plain PyTorch loop over a dataset's tiles, tracked in MLflow.

AdamW with a one-cycle learning rate, L1 / MSE / L1+SSIM loss (piq), flips and 90-degree
rotations, seeded. For small cards: mixed precision (bf16 where supported, else fp16 with
loss scaling), channels-last, gradient checkpointing of the encoder, gradient
accumulation. Several GPUs: run under ``torchrun --nproc_per_node=N`` (DDP; rank 0 alone
validates, logs and checkpoints).

Epochs are validated as `bpho evaluate` scores a model (the dataset's validation images,
whole, through the same tiled inference and metric protocol: `validate`): every epoch while
validating takes at most `valid_share` of the time (large images: fewer epochs), and always the
last; the best validated epoch is the one logged and registered. Every epoch ends with a checkpoint in
``$BPHO_ROOT/checkpoints/<run_id>/last.pt`` (and ``best.pt``; tensors only, loaded with
``weights_only=True``); ``--resume RUN_ID`` continues the same MLflow run from it, so the
metrics have neither gaps nor repeated steps.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
import time
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, List, Optional, Tuple, cast

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from bpho import datasets, evaluate, paths, tracking
from bpho.channels import model_input
from bpho.config import Loss, TrainConfig, choice, env_torchrun, env_tracking_wait, mix_item
from bpho.errors import BphoError, BphoWarning, NotFoundError
from bpho.inference import SuperResolver, pick_device, save_model
from bpho.models import ModelConfig, build_model
from bpho.models.layers import residual_for, start_at_base

@dataclass
class TrainResult:
    """What `train` returns: the run, the logged model, its registered name and version, the metrics."""

    run_id: str
    model_uri: str
    registered_name: Optional[str]
    registered_version: Optional[str]
    metrics: dict = field(default_factory=dict)


# --- distributed --------------------------------------------------------------------------


@dataclass(frozen=True)
class Dist:
    """The place of this process in a torchrun job (one process without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    group: bool = False  # a process group (NCCL or gloo) exists: under torchrun, even with one process

    @property
    def main(self) -> bool:
        """Whether this is rank 0, the process that validates, logs and checkpoints."""
        return self.rank == 0


def _init_distributed(device: torch.device) -> Dist:
    world, local_rank, torchrun = env_torchrun()
    if world <= 1 and not torchrun:
        return Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank=dist.get_rank(), world=world, local_rank=local_rank, group=True)


def _barrier(d: Dist) -> None:
    if d.group:
        import torch.distributed as dist

        dist.barrier()


def _broadcast_str(d: Dist, value: str) -> str:
    """Rank 0's `value` on every rank."""
    if not d.group:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# --- pieces of the loop ------------------------------------------------------------------


def augment(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """The same random flip / 90-degree rotation (one of 8) for each LR tile and its HR tile."""
    choice = torch.randint(0, 8, (x.shape[0],), generator=gen)
    xs, ys = [], []
    for xi, yi, c in zip(x, y, choice.tolist()):
        if c & 4:
            xi, yi = xi.flip(-1), yi.flip(-1)
        xs.append(torch.rot90(xi, c & 3, dims=(-2, -1)))
        ys.append(torch.rot90(yi, c & 3, dims=(-2, -1)))
    return torch.stack(xs), torch.stack(ys)


BLIND_SPOT_FRACTION = 0.002  # of a tile's pixels masked per step (CAREamics' N2V default, 0.2%)
BLIND_SPOT_ROI = 11  # px: a masked pixel takes the value of another pixel in this window (CAREamics' default)


def blind_spot(x: torch.Tensor, gen: torch.Generator, fraction: float = BLIND_SPOT_FRACTION,
               roi: int = BLIND_SPOT_ROI) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noise2Void's masking (Krull et al. 2019) of a batch of noisy tiles (N, frames, h, w).

    In each tile, `fraction` of the pixels (at least one, drawn at random) of the centre frame
    take the value of another pixel drawn in the `roi` x `roi` window around them (reflected at
    the border, never the pixel itself). Returns the masked input, the target (the unmasked
    centre frame, (N, 1, h, w)) and the boolean mask of the pixels the loss is computed on: a
    network that cannot see a pixel's own noise can only predict its signal there.
    """
    n, frames, h, w = x.shape
    k = max(1, round(fraction * h * w))
    half = roi // 2
    ys, xs = torch.randint(0, h, (n, k), generator=gen), torch.randint(0, w, (n, k), generator=gen)
    dy = torch.randint(-half, half + 1, (n, k), generator=gen)
    dx = torch.randint(-half, half + 1, (n, k), generator=gen)
    dx = torch.where((dy == 0) & (dx == 0), torch.ones_like(dx), dx)  # another pixel, never the masked one

    def reflect(i, size):
        i = i.abs()
        return torch.where(i > size - 1, 2 * (size - 1) - i, i).clamp(0, size - 1)

    sy, sx = reflect(ys + dy, h), reflect(xs + dx, w)
    c, rows = frames // 2, torch.arange(n)[:, None]
    target = x[:, c:c + 1].clone()
    masked = x.clone()
    masked[rows, c, ys, xs] = x[rows, c, sy, sx]
    mask = torch.zeros((n, 1, h, w), dtype=torch.bool)
    mask[rows, 0, ys, xs] = True
    return masked, target, mask


def masked_loss(loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], mask: torch.Tensor,
                pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`loss` on the pixels of `mask` only (the blind spots)."""
    return loss(pred[mask], target[mask])


def loss_fn(name: Loss | str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The training loss `name` (a `Loss`) as a function of (prediction, target)."""
    import piq

    def l1_ssim(pred, target):
        return F.l1_loss(pred, target) + 0.2 * (1 - piq.ssim(pred.float().clamp(0, 1), target.float().clamp(0, 1),
                                                             data_range=1.0))

    return {Loss.L1: F.l1_loss, Loss.MSE: F.mse_loss, Loss.L1_SSIM: l1_ssim}[cast(Loss, choice(Loss, name, "loss"))]


@torch.no_grad()
def validate(net, meta: dict, device, pairs, baselines: list) -> Tuple[dict, np.ndarray]:
    """`bpho evaluate`'s number: the validation images super-resolved whole by the same
    tiled, blended inference (`SuperResolver`, its default tiles) and scored by the same
    protocol. Returns the flat metrics (valid_psnr, valid_psnr_gain, ...) and the first
    image's prediction (frame 0)."""
    net.eval()
    try:
        rows, first = evaluate.score_model(SuperResolver(net=net, meta=meta, device=device), pairs)
    finally:
        net.train()
    return evaluate.summarize(rows + baselines), first[0]


def save_panel(png: Path, pair, pred: np.ndarray, scale: int, title: str) -> None:
    """LR | bicubic | model | HR: the middle of the first validation image, as validated."""
    from bpho.metrics import fit_to, normalize_target
    from bpho.plots import pyplot

    plt = pyplot()
    zoom = evaluate.zoom_box(pair.hr.shape[-2:])
    hr = normalize_target(pair.hr[0][zoom])
    fig, axes = plt.subplots(1, 4, figsize=(12, 3.4))
    for ax, (name, img) in zip(axes, evaluate.side_by_side(pair, pred, scale)):
        ax.imshow(np.clip(fit_to(img[zoom], hr), 0, 1), cmap="magma", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=72)
    plt.close(fig)


def learning_rate_factor(step: int, total: Optional[int]) -> float:
    """One-cycle learning-rate multiplier (PyTorch's OneCycleLR defaults: cosine warm-up from 1/25
    over the first 30% of `total` steps, then cosine annealing to 1/25e4); 1/25 while `total` is
    not known yet (the first steps of a time budget)."""
    if total is None:
        return 1 / 25
    p = min(1.0, step / max(1, total))
    if p < 0.3:
        return 1 / 25 + (1 - 1 / 25) * (1 - math.cos(math.pi * p / 0.3)) / 2
    return 1 / 25e4 + (1 - 1 / 25e4) * (1 + math.cos(math.pi * (p - 0.3) / 0.7)) / 2


PROBE_BATCHES = 12  # a time budget times this many batches to plan its epochs


def setup_model(cfg: TrainConfig, scale: int, frames: int, device: torch.device):
    """The network on `device` as `cfg` asks (checkpointing, channels-last), its AMP dtype
    (bf16 where supported, else fp16) and, for fp16, a gradient scaler."""
    given: dict = {"scale": scale, "frames": frames}
    if "residual" in {f.name for f in dataclasses.fields(cfg.model)}:  # written out, not None
        given["residual"] = False if cfg.self_supervised else residual_for(cfg.model.residual, scale)
    model_cfg = dataclasses.replace(cfg.model, **given)  # saved beside the weights
    torch.manual_seed(cfg.seed)
    net = build_model(model_cfg).to(device)
    start_at_base(net)
    if cfg.grad_checkpointing:
        net.set_grad_checkpointing(True)
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    amp_dtype = None
    if cfg.amp:
        amp_dtype = torch.bfloat16 if device.type == "cpu" or torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    return net, model_cfg, amp_dtype, scaler


def forward_backward(model, x, y, loss, amp_dtype, scaler, accumulate: int = 1, channels_last: bool = False):
    """One forward and backward pass (gradients accumulate); returns the loss value."""
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        pred = model(x)
    value = loss(pred.float(), y)
    (scaler.scale(value / accumulate) if scaler else value / accumulate).backward()
    return value.detach()


def optimizer_step(opt, scaler) -> None:
    """One optimizer step (through the gradient scaler for fp16), gradients then cleared."""
    if scaler:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
    opt.zero_grad(set_to_none=True)


def checkpoint_path(run_id: str, name: str = "last") -> Path:
    """``last.pt`` (resume) or ``best.pt`` (the weights of the best validated epoch)."""
    return paths.root() / "checkpoints" / run_id / f"{name}.pt"


def _save_checkpoint(path: Path, net, opt, sched, scaler, epoch: int, metrics: dict, config: dict) -> None:
    """Tensors and plain values only, written atomically (a kill never leaves half a file)."""
    state = {
        "model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {}, "epoch": epoch,
        "metrics": metrics, "config": json.dumps(config), "torch_rng": torch.get_rng_state(),
    }
    with paths.atomic_file(path, suffix=".pt") as tmp:
        torch.save(state, tmp)


@dataclass
class EpochPlan:
    """How many epochs a run trains, and its one-cycle learning-rate schedule over them.

    With a time budget (`deadline`, in `time.time()` seconds: the budget counts from the call of
    `train`, reading the data and setting up included) the epochs are unknown at first: they are
    planned from the pace of the first PROBE_BATCHES batches plus one timed validation
    (`probe`), then planned again after every epoch from the epochs' measured length (steps,
    validation, checkpoints and panels), longer or shorter, so that the last epoch ends just
    before the deadline (`replan`); an epoch that would run past it (a budget shorter than one
    epoch) stops its steps early, leaving time for its validation (`out_of_time`; one process,
    not under DDP). A resumed run keeps the plan its checkpoint holds.
    """

    epochs: Optional[int]  # None until a time budget is first planned
    opt_steps: int  # optimizer steps per epoch
    deadline: Optional[float] = None
    valid_s: float = 0.0  # one validation's seconds, timed before the first epoch, then the last one's
    valid_share: float = 1.0  # the most of the time validation may take (TrainConfig.valid_share)

    @property
    def count(self) -> int:
        """The planned number of epochs (once planned)."""
        if self.epochs is None:
            raise RuntimeError("the epochs of a time budget are not planned yet")
        return self.epochs

    def out_of_time(self) -> bool:
        """Whether the deadline leaves no time for more steps before the epoch's validation."""
        return self.deadline is not None and time.time() + self.valid_s >= self.deadline

    def learning_rate_factor(self, step: int) -> float:
        """The one-cycle multiplier of the learning rate at optimizer step `step`."""
        return learning_rate_factor(step, self.epochs * self.opt_steps if self.epochs else None)

    def _reserve(self) -> float:
        """Seconds kept for the last epoch's validation, which a mean over epochs that were mostly
        not validated (valid_share < 1) leaves out: one validation's."""
        return self.valid_s if self.valid_share < 1 else 0.0

    def _left_s(self) -> float:
        if self.deadline is None:
            raise RuntimeError("only a time budget is planned")
        return self.deadline - time.time()

    def probe(self, d: Dist, done: int, batches: int, steps_s: float) -> None:
        """The first plan: `done` batches took `steps_s` seconds."""
        steps_epoch = steps_s / done * batches
        share = min(self.valid_share, 0.99)  # validation's part of an epoch: at most share of it
        valid_s = min(self.valid_s, share / (1 - share) * steps_epoch)
        epoch_s = steps_epoch + valid_s
        epochs = max(1, int((self._left_s() - self._reserve()) // epoch_s))
        if d.main:
            print(f"{self._left_s() / 60:.2f} min left at {epoch_s:.1f} s an epoch (validation "
                  f"{valid_s:.1f} s): {epochs} epochs", flush=True)
        self.epochs = int(_broadcast_str(d, str(epochs)))

    def replan(self, d: Dist, done: int, epochs_s: float) -> None:
        """After `done` epochs of this run that took `epochs_s` seconds in all: as many more as
        fit before the deadline at their mean length (none when the next would not end in time)."""
        epochs = done + max(0, int((self._left_s() - self._reserve()) // (epochs_s / done))) if d.main else 0
        self.epochs = int(_broadcast_str(d, str(epochs)))


def _save_best(path: Path, net, epoch: int, metrics: dict) -> None:
    with paths.atomic_file(path, suffix=".pt") as tmp:
        torch.save({"model": net.state_dict(), "epoch": epoch, "metrics": metrics}, tmp)


def _load_checkpoint(run_id: str, name: str = "last") -> dict:
    path = checkpoint_path(run_id, name)
    if not path.is_file():
        raise NotFoundError(f"run {run_id}: no checkpoint at {path}; was the run trained under this BPHO_ROOT?")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a tampered or foreign file with pickled code is refused here
        raise BphoError(f"{path}: refusing to load the checkpoint ({type(exc).__name__}: {exc})") from None


# --- the run ------------------------------------------------------------------------------


def process_start() -> float:
    """When this process started (epoch seconds): `bpho train` counts its imports as setup time."""
    import psutil

    return psutil.Process().create_time()


def _dataset_tiles(cfg: TrainConfig) -> Tuple[datasets.Dataset, int, np.ndarray, np.ndarray, list]:
    dataset = datasets.open(cfg.dataset)
    size = cfg.tile_size or min(dataset.tile_sizes)
    lr_tiles, hr_tiles = dataset.tiles(size, "train")
    if len(lr_tiles) == 0:
        raise BphoError(f"dataset {cfg.dataset!r} has no training tiles of size {size}")
    pairs = dataset.validation_images()
    if dataset.validation_split == "train":  # no held-out source: validate on a training image, and say so
        warnings.warn(f"dataset {cfg.dataset!r} holds no image out: the valid_* metrics are measured on the "
                      f"training image {pairs[0].name}", BphoWarning, stacklevel=4)
    frames = lr_tiles.shape[1]
    if cfg.frames is not None and cfg.frames != frames:
        raise BphoError(f"--frames {cfg.frames}: dataset {cfg.dataset!r} has {frames}-frame tiles")
    return dataset, size, lr_tiles, hr_tiles, pairs


def _mixed(cfg: TrainConfig, size: int, lr_tiles: np.ndarray,
           hr_tiles: np.ndarray) -> Tuple[np.ndarray, np.ndarray, List[Tuple[int, int, int]]]:
    """The training tiles with the `--mix` datasets' appended, and how many of each part one
    epoch draws: [(first index, count, draw)] (the real tiles all; a mix dataset W x the real
    count, a fresh random choice each epoch, with replacement only if it has too few)."""
    parts, lrs, hrs = [(0, len(lr_tiles), len(lr_tiles))], [lr_tiles], [hr_tiles]
    for item in cfg.mix:
        name, weight = mix_item(item)
        other = datasets.open(name)
        if size not in other.tile_sizes:
            raise BphoError(f"--mix {name}: it has no tiles of {size} px (it has {other.tile_sizes}); build it with "
                            f"tile_sizes including {size}")
        lr_mix, hr_mix = other.tiles(size, "train")
        if lr_mix.shape[1:] != lr_tiles.shape[1:] or hr_mix.shape[1:] != hr_tiles.shape[1:]:
            raise BphoError(f"--mix {name}: tiles {lr_mix.shape[1:]} -> {hr_mix.shape[1:]} do not match dataset "
                            f"{cfg.dataset!r}'s {lr_tiles.shape[1:]} -> {hr_tiles.shape[1:]} (frames and scale must "
                            "agree)")
        if len(lr_mix) == 0:
            raise BphoError(f"--mix {name}: no training tiles of {size} px")
        parts.append((sum(len(a) for a in lrs), len(lr_mix), max(1, round(weight * len(lr_tiles)))))
        lrs.append(lr_mix)
        hrs.append(hr_mix)
    if len(parts) == 1:
        return lr_tiles, hr_tiles, parts
    return np.concatenate(lrs), np.concatenate(hrs), parts


def _epoch_order(parts: List[Tuple[int, int, int]], seed: int, epoch: int) -> np.ndarray:
    """The tile indices of epoch `epoch`, shuffled: every real tile and each mix dataset's draw."""
    rng = np.random.default_rng([seed, epoch])
    if len(parts) == 1:
        return rng.permutation(parts[0][1])  # as before mixing existed: the same order
    chosen = [start + rng.choice(count, draw, replace=draw > count) for start, count, draw in parts]
    return rng.permutation(np.concatenate(chosen))


@dataclass(frozen=True)
class Setup:
    """What `_setup` builds once for a run and the epochs only use: the data, the network and
    its optimiser (their tensors change, these objects do not), what is logged and saved."""

    cfg: TrainConfig
    dist: Dist
    device: torch.device
    dataset: datasets.Dataset
    size: int  # HR tile size
    scale: int
    pairs: list  # the validation images
    baselines: list  # their bicubic/bilinear scores
    net: torch.nn.Module
    model: torch.nn.Module  # `net`, wrapped for DDP
    model_cfg: ModelConfig
    amp_dtype: Optional[torch.dtype]
    scaler: Optional[torch.amp.GradScaler]
    lr_tiles: np.ndarray
    hr_tiles: np.ndarray
    parts: List[Tuple[int, int, int]]  # see `_mixed`
    per_rank: int
    batches: int
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    config: dict  # logged as train.* parameters; kept in the checkpoint with the planned epochs
    meta: dict  # saved with the model (with the run id and the validation)
    name: str  # registered model name
    wait: float  # seconds to wait for an absent tracking server


@dataclass
class RunState:
    """What changes as the run goes: the plan, where the epochs start, the best and last
    epochs' metrics, the MLflow run and its buffer, the seconds spent per phase."""

    plan: EpochPlan
    start: int = 0  # first epoch (a resumed run's next)
    best: dict = field(default_factory=dict)  # {"epoch", "metrics"} of the best validated epoch (best.pt)
    last_metrics: dict = field(default_factory=dict)
    run_id: str = ""
    buffer: Optional[tracking.Buffer] = None  # rank 0's, once the run has started
    clock: dict = field(default_factory=lambda: {"setup": 0.0, "steps": 0.0, "validation": 0.0, "checkpoints": 0.0})
    validated: int = -1  # the last epoch validated
    logged: Tuple[int, set] = (-1, set())  # the last epoch whose metrics were logged, and their names

    def due_for_validation(self, epoch: int) -> bool:
        """Whether `epoch` is validated: the last planned one always; any other while the time spent
        validating, this validation included (timed as the last one, `plan.valid_s`), stays within
        `plan.valid_share` of the time spent training and validating. Validating whole images of 2048 px took
        longer than an epoch's steps (29.8 s against 24.5 s): at the default 0.25 such a run
        validates about every fourth epoch, a run whose validation is short every epoch."""
        share = self.plan.valid_share
        if share >= 1 or (self.plan.epochs is not None and epoch >= self.plan.epochs - 1):
            return True
        spent = self.clock["validation"] + self.plan.valid_s
        return spent <= share * (self.clock["steps"] + spent)

    @property
    def logs(self) -> tracking.Buffer:
        """The run's metrics and files on their way to the tracking server (rank 0)."""
        if self.buffer is None:
            raise RuntimeError("the run has not started, or this is not rank 0")
        return self.buffer

    def folder(self) -> Path:
        """The run's checkpoint folder (panels too)."""
        return checkpoint_path(self.run_id).parent


# --- callbacks: what happens after each validated epoch (rank 0), in order ----------------
# each is called as callback(setup, state, epoch, metrics, prediction of the first validation image)


def save_last(setup: Setup, state: RunState, epoch: int, metrics: dict) -> None:
    """last.pt (every epoch, validated or not: what --resume continues from); the metrics logged."""
    _save_checkpoint(checkpoint_path(state.run_id), setup.net, setup.opt, setup.sched, setup.scaler, epoch, metrics,
                     {**setup.config, "epochs": state.plan.epochs})  # --resume follows the same plan
    before = state.logged[1] if state.logged[0] == epoch else set()  # validated after the loop: no step twice
    state.logs.metrics({k: v for k, v in metrics.items() if k not in before}, epoch)  # now, or once the server is back
    state.logged = (epoch, set(metrics))


def keep_checkpoints(setup: Setup, state: RunState, epoch: int, metrics: dict, pred: np.ndarray) -> None:
    """last.pt, and best.pt when validation improved; the metrics logged."""
    save_last(setup, state, epoch, metrics)
    if not state.best or metrics["valid_psnr"] > state.best["metrics"]["valid_psnr"]:
        state.best = {"epoch": epoch, "metrics": metrics}
        _save_best(checkpoint_path(state.run_id, "best"), setup.net, epoch, metrics)
    state.last_metrics = metrics
    state.validated = epoch


def log_panel(setup: Setup, state: RunState, epoch: int, metrics: dict, pred: np.ndarray) -> None:
    """LR | bicubic | model | HR of the first validation image, every `panel_every` epochs and the last."""
    if (epoch + 1) % setup.cfg.panel_every and epoch != state.plan.count - 1:
        return
    png = state.folder() / "panels" / f"epoch_{epoch + 1:03d}.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    save_panel(png, setup.pairs[0], pred, setup.scale,
               f"epoch {epoch + 1}, {setup.pairs[0].name}: PSNR model {metrics['valid_psnr']:.2f} dB, "
               f"bicubic {metrics['bicubic_psnr']:.2f} dB, bilinear {metrics['bilinear_psnr']:.2f} dB")
    if tracking.previews_enabled():
        state.logs.artifact(png, "panels")


def print_epoch(setup: Setup, state: RunState, epoch: int, metrics: dict, pred: np.ndarray) -> None:
    """One line per epoch: training loss, validation PSNR and SSIM beside the baselines'."""
    print(f"epoch {epoch + 1}/{state.plan.epochs}: train loss {metrics['train_loss']:.4f}, valid PSNR "
          f"{metrics['valid_psnr']:.2f} dB (bicubic {metrics['bicubic_psnr']:.2f}, bilinear "
          f"{metrics['bilinear_psnr']:.2f}), SSIM {metrics['valid_ssim']:.3f} (bicubic {metrics['bicubic_ssim']:.3f})",
          flush=True)


# --- the run ----------------------------------------------------------------------------------


def _setup(cfg: TrainConfig, resume: Optional[str], called: float) -> Tuple[Setup, RunState]:
    """Device, data, network, optimiser and schedule; a resumed run's checkpoint loaded."""
    device = pick_device(cfg.device)
    d = _init_distributed(device)
    if d.group and device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    dataset, size, lr_tiles, hr_tiles, pairs = _dataset_tiles(cfg)
    scale = hr_tiles.shape[-1] // lr_tiles.shape[-1]
    if cfg.self_supervised and scale != 1:
        raise BphoError(f"--self-supervised: dataset {cfg.dataset!r} is x{scale} super-resolution; Noise2Void learns "
                        "to denoise, from the noisy images of a scale-1 dataset (kind denoise)")
    net, model_cfg, amp_dtype, scaler = setup_model(cfg, scale, lr_tiles.shape[1], device)
    lr_tiles, hr_tiles, parts = _mixed(cfg, size, lr_tiles, hr_tiles)
    per_rank = math.ceil(sum(draw for _, _, draw in parts) / d.world)
    batches = math.ceil(per_rank / cfg.batch_size)
    opt_steps = math.ceil(batches / cfg.accumulate)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    plan = EpochPlan(epochs=None if cfg.minutes else cfg.epochs, opt_steps=opt_steps,
                     deadline=called + cfg.minutes * 60 if cfg.minutes else None, valid_share=cfg.valid_share)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, plan.learning_rate_factor)
    norm = dataset.manifest["parameters"]
    setup = Setup(
        cfg=cfg, dist=d, device=device, dataset=dataset, size=size, scale=scale, pairs=pairs,
        baselines=evaluate.dataset_baselines(dataset, pairs, scale) if d.main else [], net=net,
        model=torch.nn.parallel.DistributedDataParallel(net) if d.group else net, model_cfg=model_cfg,
        amp_dtype=amp_dtype, scaler=scaler, lr_tiles=lr_tiles, hr_tiles=hr_tiles, parts=parts, per_rank=per_rank,
        batches=batches, opt=opt, sched=sched, loss=loss_fn(cfg.loss),
        config={**{k: v for k, v in asdict(cfg).items() if k != "model"}, "arch": model_cfg.arch,  # model.*: its own
                "epochs": plan.epochs, "tile_size": size, "scale": scale,
                "frames": model_cfg.frames, "world_size": d.world},
        meta={"model": model_cfg.to_dict(),
              "normalization": {"percentile_low": norm["percentile_low"], "percentile_high": norm["percentile_high"]},
              "dataset": dataset.name, "dataset_digest": dataset.digest, "tile_size": size,
              "datasource": dataset.manifest["datasource"]["name"],
              "datasource_digest": dataset.manifest["datasource"]["digest"],
              "input": model_input(dataset.manifest)},  # the channel and LR pixel size it learnt on
        name=cfg.model_name or f"bpho-{cfg.dataset}",
        wait=env_tracking_wait())
    state = RunState(plan=plan)
    if resume:
        checkpoint = _load_checkpoint(resume)
        net.load_state_dict(checkpoint["model"])
        opt.load_state_dict(checkpoint["optimizer"])
        sched.load_state_dict(checkpoint["scheduler"])
        if scaler is not None and checkpoint["scaler"]:
            scaler.load_state_dict(checkpoint["scaler"])
        torch.set_rng_state(checkpoint["torch_rng"])
        state.start, state.last_metrics = int(checkpoint["epoch"]) + 1, checkpoint["metrics"]
        plan.epochs = json.loads(checkpoint["config"])["epochs"]  # the run's own plan
        plan.deadline = None
        if state.start >= plan.count and tracking.run_finished(resume):
            raise BphoError(f"run {resume} already finished its {plan.epochs} epochs and logged its model; "
                            "nothing to resume")
        if checkpoint_path(resume, "best").is_file():
            kept = _load_checkpoint(resume, "best")
            state.best = {"epoch": int(kept["epoch"]), "metrics": kept["metrics"]}
    return setup, state


def _run_tags(setup: Setup, tags: Optional[dict]) -> dict:
    dataset, cfg = setup.dataset, setup.cfg
    return {"bpho.dataset": dataset.name, "bpho.dataset_digest": dataset.digest,
            "bpho.recipe": dataset.manifest["recipe"]["name"],
            "bpho.datasource": dataset.manifest["datasource"]["name"],
            "bpho.datasource_digest": dataset.manifest["datasource"]["digest"], "bpho.model_name": setup.name,
            **({"bpho.mix": ",".join(cfg.mix)} if cfg.mix else {}),
            **({"bpho.self_supervised": "noise2void"} if cfg.self_supervised else {}), **(tags or {})}


def _log_start(setup: Setup, state: RunState, resume: Optional[str]) -> None:
    """Parameters, dataset inputs and the run's description (a resumed run: what was kept back)."""
    cfg, dataset = setup.cfg, setup.dataset
    if resume:
        state.logs.drain(setup.wait)  # what an outage before the kill kept back
        tracking.log_missing_epoch(state.last_metrics, state.start - 1, key="train_loss")  # logged every epoch
        return
    # prefixed: `mlflow run` has already logged its own -P values (tile_size='' ...) unprefixed
    tracking.log_params({**{f"train.{k}": v for k, v in setup.config.items()},
                         **{f"model.{k}": v for k, v in setup.model_cfg.to_dict().items()}})
    tracking.log_dataset_input(dataset.name, dataset.digest, dataset.path, context="training",
                               tags={"tile_size": str(setup.size)})
    for item in cfg.mix:
        name, weight = mix_item(item)
        other = datasets.open(name)
        tracking.log_dataset_input(other.name, other.digest, other.path, context="training",
                                   tags={"tile_size": str(setup.size), "mix_weight": f"{weight:g}"})
    tracking.describe_run(f"bpho training: a {setup.model_cfg.label()} network on dataset {dataset.name} "
                          f"({dataset.digest[:12]}), {setup.size} px HR tiles"
                          + ("; self-supervised (Noise2Void: the noisy tiles alone, blind-spot masking)"
                             if cfg.self_supervised else "") + "; validated on "
                          f"{len(setup.pairs)} whole image(s), split `{dataset.validation_split}`, every epoch while "
                          f"that takes at most {cfg.valid_share:.0%} of the time (the last epoch always).\n\n"
                          + tracking.METRIC_UNITS)


def _epoch(setup: Setup, state: RunState, epoch: int, progress: bool) -> dict:
    """One pass over this epoch's tiles (this rank's share); returns its mean training loss."""
    cfg, d, plan = setup.cfg, setup.dist, state.plan
    order = _epoch_order(setup.parts, cfg.seed, epoch)
    # every rank gets the same number of samples (wrapping around, as DistributedSampler
    # does): unequal batch counts would leave one rank waiting in all-reduce for ever
    order = np.resize(order, setup.per_rank * d.world)[d.rank::d.world]
    gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch * 101 + d.rank)
    running, seen = 0.0, 0
    bar = tqdm(range(setup.batches), desc=f"epoch {epoch + 1}/{plan.epochs or '?'}", unit="batch",
               disable=not (progress and d.main), leave=False)
    setup.opt.zero_grad(set_to_none=True)
    tick = time.monotonic()
    for b in bar:
        if b and not d.group and plan.out_of_time():
            break
        idx = np.sort(order[b * cfg.batch_size:(b + 1) * cfg.batch_size])
        if idx.size == 0:
            continue
        x, y = augment(torch.from_numpy(setup.lr_tiles[idx]), torch.from_numpy(setup.hr_tiles[idx]), gen)
        loss = setup.loss
        if cfg.self_supervised:  # the clean tiles (y) are not used: the noisy ones are their own target
            x, y, mask = blind_spot(x, gen)
            loss = partial(masked_loss, setup.loss, mask.to(setup.device, non_blocking=True))
        x, y = x.to(setup.device, non_blocking=True), y.to(setup.device, non_blocking=True)
        value = forward_backward(setup.model, x, y, loss, setup.amp_dtype, setup.scaler, cfg.accumulate,
                                 cfg.channels_last)
        if (b + 1) % cfg.accumulate == 0 or b == setup.batches - 1:
            optimizer_step(setup.opt, setup.scaler)
            setup.sched.step()
        running += float(value.detach()) * len(idx)
        seen += len(idx)
        bar.set_postfix(loss=f"{running / seen:.4f}")
        if plan.epochs is None and b + 1 == min(PROBE_BATCHES, setup.batches):
            plan.probe(d, b + 1, setup.batches, time.monotonic() - tick)
            bar.set_description(f"epoch {epoch + 1}/{plan.epochs}")
    if setup.device.type == "cuda":
        torch.cuda.synchronize(setup.device)
    state.clock["steps"] += time.monotonic() - tick
    return {"train_loss": running / max(seen, 1), "lr": setup.opt.param_groups[0]["lr"]}


def _finish(setup: Setup, state: RunState, register: bool) -> TrainResult:
    """Log and register the best validated epoch's weights (not the last epoch's) and the timings."""
    finishing = time.monotonic()
    result = TrainResult(run_id=state.run_id, model_uri=f"runs:/{state.run_id}/model", registered_name=None,
                         registered_version=None, metrics=state.last_metrics)
    epochs = state.plan.count
    if not state.best:  # a run resumed from a checkpoint of bpho 0.1, which kept no best.pt
        state.best = {"epoch": epochs - 1, "metrics": state.last_metrics}
        _save_best(checkpoint_path(state.run_id, "best"), setup.net, epochs - 1, state.last_metrics)
    best = state.best
    setup.net.load_state_dict(_load_checkpoint(state.run_id, "best")["model"])
    result.metrics = {**best["metrics"], "best_epoch": best["epoch"], "epochs": epochs}
    meta = {**setup.meta, "run_id": state.run_id,
            "validation": {"epoch": best["epoch"] + 1, "images": [p.name for p in setup.pairs],
                           "split": setup.dataset.validation_split,
                           **{k: v for k, v in best["metrics"].items() if k.startswith(("valid_", "bi"))}}}
    state.logs.metrics({f"best_{k}": v for k, v in best["metrics"].items() if k.startswith("valid_")}, epochs - 1)
    state.logs.drain(setup.wait)
    tracking.set_tags({"bpho.best_epoch": f"{best['epoch'] + 1} of {epochs} (step {best['epoch']})"})
    print(f"registering epoch {best['epoch'] + 1} (best valid PSNR {best['metrics']['valid_psnr']:.2f} dB)",
          flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_model(Path(tmp) / "bpho_model", setup.net.float().cpu(), meta)
        version = tracking.retry(lambda: tracking.log_model(folder, registered_name=setup.name if register else None),
                                 setup.wait, "logging the model")
    if register:
        result.registered_name, result.registered_version = setup.name, version
        tracking.retry(lambda: tracking.describe_version(setup.name, version, state.run_id, setup.dataset.name,
                                                         setup.dataset.digest, best["metrics"]),
                       setup.wait, "describing the model version")
        print(tracking.retry(lambda: tracking.name_champion(setup.name, version), setup.wait, "naming the champion"),
              flush=True)
    clock = state.clock
    clock["finish"] = time.monotonic() - finishing
    clock["outside the loop"] = clock["setup"] + clock["finish"]
    tracking.retry(lambda: tracking.log_metrics({f"time_{k.replace(' ', '_')}_s": v for k, v in clock.items()}),
                   setup.wait, "logging the timings")
    print(f"time: {clock['setup']:.1f} s to the first batch (imports, data, model, MLflow run), "
          f"{clock['steps']:.1f} s training steps, {clock['validation']:.1f} s validation, "
          f"{clock['checkpoints']:.1f} s checkpoints and panels, {clock['finish']:.1f} s logging and "
          f"registering the model", flush=True)
    return result


Callback = Callable[[Setup, RunState, int, dict, np.ndarray], None]


def _validate_epoch(setup: Setup, state: RunState, epoch: int, trained: dict, callbacks: List[Callback]) -> None:
    """Validate the epoch just trained (rank 0) and run the callbacks on its metrics."""
    tick = time.monotonic()
    valid, pred = validate(setup.net, setup.meta, setup.device, setup.pairs, setup.baselines)
    state.plan.valid_s = time.monotonic() - tick
    state.clock["validation"] += state.plan.valid_s
    tick = time.monotonic()
    for callback in callbacks:
        callback(setup, state, epoch, {**trained, **valid}, pred)
    state.clock["checkpoints"] += time.monotonic() - tick


def train(cfg: TrainConfig, resume: Optional[str] = None, progress: bool = True, register: bool = True,
          parent_run_id: Optional[str] = None, tags: Optional[dict] = None,
          on_epoch: Optional[Callable[[int, dict, str], None]] = None,
          setup_since: Optional[float] = None) -> TrainResult:
    """Train, log and (if `register`) register the model.

    Parameters
    ----------
    cfg : TrainConfig
        What to train on and how (bpho/config.py).
    resume : str, optional
        An MLflow run id: continue that (killed) run from its last checkpoint.
    progress : bool
        Show a progress bar per epoch.
    register : bool
        Register the logged model as ``cfg.model_name`` (default ``bpho-<dataset>``).
    parent_run_id : str, optional
        Nest the run under another (a tuning study); `tags` are added to the run's tags.
    tags : dict, optional
        More tags for the run.
    on_epoch : callable, optional
        ``on_epoch(epoch, metrics, run_id)``, called after each epoch's checkpoint and panel;
        it may raise to stop (a pruned trial).
    setup_since : float, optional
        When the run's setup began (`time.time()` seconds), for its ``time_setup_s``: `bpho
        train` passes its process's start (`process_start`), so the imports count. Default: now.

    Returns
    -------
    TrainResult
        The run id, model URI, registered name and version, and the best epoch's metrics.

    Notes
    -----
    Metrics and panels go through a `tracking.Buffer`: a tracking server outage does not
    stop training; what could not be logged is logged when the server is back.
    """
    called = time.time()
    entered = called if setup_since is None else setup_since
    setup, state = _setup(cfg, resume, called)
    d, plan = setup.dist, state.plan
    hook: List[Callback] = []
    if on_epoch is not None:
        hook.append(lambda setup_, state_, epoch, metrics, pred: on_epoch(epoch, metrics, state_.run_id))
    callbacks: List[Callback] = [keep_checkpoints, log_panel, *hook, print_epoch]
    length = f"{cfg.minutes:g}min" if cfg.minutes else f"{cfg.epochs}ep"
    run_name = f"{cfg.dataset}-{cfg.model.label()}-{setup.size}px-{length}-{time.strftime('%m%d-%H%M%S')}"
    run_ctx = tracking.run(tracking.TRAIN_EXPERIMENT, run_name=run_name, tags=_run_tags(setup, tags),
                           run_id=resume, parent_run_id=parent_run_id) if d.main else nullcontext()
    with run_ctx as active:
        state.run_id = _broadcast_str(d, active.info.run_id if active is not None else "")
        if d.main:
            state.buffer = tracking.Buffer(checkpoint_path(state.run_id).parent / "pending.jsonl")
            _log_start(setup, state, resume)
        started = time.monotonic()
        state.clock["setup"] = time.time() - entered
        if plan.epochs is None and d.main:  # a time budget counts validation too: time one
            validate(setup.net, setup.meta, setup.device, setup.pairs, setup.baselines)
            plan.valid_s = time.monotonic() - started
            state.clock["validation"] += plan.valid_s
        epoch = state.start
        looping = time.monotonic()
        trained: dict = {}
        while plan.epochs is None or epoch < plan.epochs:
            trained = _epoch(setup, state, epoch, progress)
            if d.main:
                if state.due_for_validation(epoch):
                    _validate_epoch(setup, state, epoch, trained, callbacks)
                else:
                    tick = time.monotonic()
                    save_last(setup, state, epoch, trained)
                    state.clock["checkpoints"] += time.monotonic() - tick
                    print(f"epoch {epoch + 1}/{plan.epochs}: train loss {trained['train_loss']:.4f} (not validated: "
                          f"validation is kept to {cfg.valid_share:.0%} of the time)", flush=True)
            _barrier(d)
            epoch += 1
            if plan.deadline is not None:  # whole epochs measured: plan the rest again
                plan.replan(d, epoch - state.start, time.monotonic() - looping)
                if d.main:
                    state.logs.metrics({"epochs_planned": plan.count}, epoch - 1)
        if d.main and trained and state.validated < epoch - 1:  # the plan ended on an epoch it did not validate
            _validate_epoch(setup, state, epoch - 1, trained, callbacks)
        result = _finish(setup, state, register) if d.main else TrainResult(
            run_id=state.run_id, model_uri=f"runs:/{state.run_id}/model", registered_name=None,
            registered_version=None, metrics=state.last_metrics)
    _barrier(d)
    return result
