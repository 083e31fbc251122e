"""Training: a plain PyTorch loop over a dataset's tiles, tracked in MLflow.

AdamW with a one-cycle learning rate, L1 / MSE / L1+SSIM loss (piq), flips and 90-degree
rotations, seeded. For small cards: mixed precision (bf16 where supported, else fp16 with
loss scaling), channels-last, gradient checkpointing of the encoder, gradient
accumulation. Several GPUs: run under ``torchrun --nproc_per_node=N`` (DDP; rank 0 alone
validates, logs and checkpoints).

Every epoch ends with a checkpoint in ``$BPHO_ROOT/checkpoints/<run_id>/last.pt`` (tensors
only, loaded with ``weights_only=True``); ``--resume RUN_ID`` continues the same MLflow run
from it, so the metrics have neither gaps nor repeated steps.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from bpho import paths, tracking
from bpho.datasets import builder
from bpho.errors import BphoError, BphoWarning, NotFoundError
from bpho.inference import pick_device, save_model
from bpho.models import UNetConfig, build_model

LOSSES = ("l1", "mse", "l1+ssim")


@dataclass(frozen=True)
class TrainConfig:
    dataset: str
    tile_size: Optional[int] = None  # default: the dataset's smallest tile size
    batch_size: int = 8
    epochs: int = 10
    encoder: str = "resnet34"
    mode: str = "lr"
    frames: Optional[int] = None  # default: the dataset's
    loss: str = "l1"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    amp: bool = False
    channels_last: bool = False
    grad_checkpointing: bool = False
    accumulate: int = 1
    seed: int = 0
    device: str = "auto"
    panel_every: int = 1
    decoder_widths: Tuple[int, ...] = (256, 128, 64, 32, 16)
    encoder_weights: Optional[str] = None
    model_name: Optional[str] = None

    def validated(self) -> "TrainConfig":
        problems = []
        if self.loss not in LOSSES:
            problems.append(f"loss {self.loss!r} (use {', '.join(LOSSES)})")
        if self.mode not in ("pre", "lr"):
            problems.append(f"mode {self.mode!r} (use pre or lr)")
        for name in ("batch_size", "epochs", "accumulate", "panel_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} (>= 1)")
        if self.lr <= 0:
            problems.append(f"lr={self.lr} (> 0)")
        if problems:
            raise BphoError(f"train: invalid {'; '.join(problems)}")
        return self


@dataclass
class TrainResult:
    run_id: str
    model_uri: str
    registered_name: Optional[str]
    registered_version: Optional[str]
    metrics: dict = field(default_factory=dict)


# --- distributed --------------------------------------------------------------------------


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device: torch.device) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank=dist.get_rank(), world=world, local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def _barrier(d: Dist) -> None:
    if d.world > 1:
        import torch.distributed as dist

        dist.barrier()


def _broadcast_str(d: Dist, value: Optional[str]) -> Optional[str]:
    if d.world <= 1:
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


def loss_fn(name: str):
    import piq

    def ssim_term(pred, target):
        return 1 - piq.ssim(pred.float().clamp(0, 1), target.float().clamp(0, 1), data_range=1.0)

    if name == "l1":
        return F.l1_loss
    if name == "mse":
        return F.mse_loss
    return lambda pred, target: F.l1_loss(pred, target) + 0.2 * ssim_term(pred, target)


def bicubic(lr: torch.Tensor, scale: int) -> torch.Tensor:
    centre = lr[:, lr.shape[1] // 2: lr.shape[1] // 2 + 1]
    return F.interpolate(centre, scale_factor=scale, mode="bicubic", align_corners=False) if scale > 1 else centre


@torch.no_grad()
def evaluate_tiles(net, lr: np.ndarray, hr: np.ndarray, scale: int, device, batch: int, loss, amp_dtype=None) -> dict:
    """Valid loss, and PSNR / SSIM (piq, on [0, 1]) of the model and of bicubic upsampling."""
    import piq

    net.eval()
    sums = {k: 0.0 for k in ("valid_loss", "valid_psnr", "valid_ssim", "bicubic_psnr", "bicubic_ssim")}
    n = len(lr)
    for i in range(0, n, batch):
        x = torch.from_numpy(np.array(lr[i:i + batch])).to(device)
        y = torch.from_numpy(np.array(hr[i:i + batch])).to(device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            pred = net(x)
        pred = pred.float()
        base = bicubic(x, scale)
        k = len(x)
        sums["valid_loss"] += float(loss(pred, y)) * k
        for tag, img in (("valid", pred), ("bicubic", base)):
            a, b = img.clamp(0, 1), y.clamp(0, 1)
            sums[f"{tag}_psnr"] += float(piq.psnr(a, b, data_range=1.0, reduction="sum"))
            sums[f"{tag}_ssim"] += float(piq.ssim(a, b, data_range=1.0, reduction="sum"))
    net.train()
    out = {k: v / max(n, 1) for k, v in sums.items()}
    out["valid_psnr_gain"] = out["valid_psnr"] - out["bicubic_psnr"]
    return out


def save_panel(png: Path, net, lr: np.ndarray, hr: np.ndarray, scale: int, device, title: str) -> None:
    """LR | bicubic | model | HR on fixed validation tiles."""
    from bpho.plots import pyplot

    plt = pyplot()

    net.eval()
    with torch.no_grad():
        x = torch.from_numpy(np.asarray(lr)).to(device)
        pred = net(x).float().cpu().numpy()[:, 0]
        base = bicubic(x, scale).cpu().numpy()[:, 0]
    net.train()
    centre = np.asarray(lr)[:, lr.shape[1] // 2]
    rows = len(lr)
    fig, axes = plt.subplots(rows, 4, figsize=(10, 2.6 * rows), squeeze=False)
    for r in range(rows):
        for ax, img, name in zip(axes[r], (centre[r], base[r], pred[r], hr[r, 0]), ("LR", "bicubic", "model", "HR")):
            ax.imshow(img, cmap="magma", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(name, fontsize=9)
            ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=72)
    plt.close(fig)


def setup_model(cfg: TrainConfig, scale: int, frames: int, device: torch.device):
    """The network on `device` as `cfg` asks (checkpointing, channels-last), its AMP dtype
    (bf16 where supported, else fp16) and, for fp16, a gradient scaler."""
    model_cfg = UNetConfig(encoder=cfg.encoder, scale=scale, frames=frames, mode=cfg.mode,
                           decoder_widths=tuple(cfg.decoder_widths), encoder_weights=cfg.encoder_weights)
    torch.manual_seed(cfg.seed)
    net = build_model(model_cfg).to(device)
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
    if scaler:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
    opt.zero_grad(set_to_none=True)


def checkpoint_path(run_id: str) -> Path:
    return paths.root() / "checkpoints" / run_id / "last.pt"


def _save_checkpoint(path: Path, net, opt, sched, scaler, epoch: int, metrics: dict, config: dict) -> None:
    """Tensors and plain values only, written atomically (a kill never leaves half a file)."""
    state = {
        "model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {}, "epoch": epoch,
        "metrics": metrics, "config": json.dumps(config), "torch_rng": torch.get_rng_state(),
    }
    with paths.atomic_file(path, suffix=".pt") as tmp:
        torch.save(state, tmp)


def _load_checkpoint(run_id: str) -> dict:
    path = checkpoint_path(run_id)
    if not path.is_file():
        raise NotFoundError(f"run {run_id}: no checkpoint at {path}; was the run trained under this BPHO_ROOT?")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a tampered or foreign file with pickled code is refused here
        raise BphoError(f"{path}: refusing to load the checkpoint ({type(exc).__name__}: {exc})") from None


# --- the run ------------------------------------------------------------------------------


def _dataset_tiles(cfg: TrainConfig):
    ds = builder.open(cfg.dataset)
    size = cfg.tile_size or min(ds.tile_sizes)
    lr_tr, hr_tr = ds.tiles(size, "train")
    lr_va, hr_va = ds.tiles(size, "valid")
    if len(lr_tr) == 0:
        raise BphoError(f"dataset {cfg.dataset!r} has no training tiles of size {size}")
    if len(lr_va) == 0:  # no held-out source: validate on training tiles, and say so
        warnings.warn(f"dataset {cfg.dataset!r} has no validation tiles of size {size}: the valid_* metrics "
                      "are measured on training tiles", BphoWarning, stacklevel=2)
        lr_va, hr_va = lr_tr, hr_tr
    frames = lr_tr.shape[1]
    if cfg.frames is not None and cfg.frames != frames:
        raise BphoError(f"--frames {cfg.frames}: dataset {cfg.dataset!r} has {frames}-frame tiles")
    return ds, size, (lr_tr, hr_tr), (lr_va, hr_va)


def train(cfg: TrainConfig, resume: Optional[str] = None, progress: bool = True, register: bool = True,
          parent_run_id: Optional[str] = None, tags: Optional[dict] = None,
          on_epoch: Optional[Callable[[int, dict, str], None]] = None) -> TrainResult:
    """Train, log and (if `register`) register the model. `parent_run_id` nests the run under
    another (a tuning study) and `tags` are added to its tags; `on_epoch(epoch, metrics, run_id)`
    is called after each epoch's checkpoint and may raise to stop (a pruned trial).

    Metrics and panels go through a `tracking.Buffer`: a tracking server outage does not stop
    training; what could not be logged is logged when the server is back."""
    cfg = cfg.validated()
    device = pick_device(cfg.device)
    d = _init_distributed(device)
    if d.world > 1 and device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    ds, size, (lr_tr, hr_tr), (lr_va, hr_va) = _dataset_tiles(cfg)
    scale = hr_tr.shape[-1] // lr_tr.shape[-1]
    net, model_cfg, amp_dtype, scaler = setup_model(cfg, scale, lr_tr.shape[1], device)
    model = torch.nn.parallel.DistributedDataParallel(net) if d.world > 1 else net

    per_rank = math.ceil(len(lr_tr) / d.world)
    batches = math.ceil(per_rank / cfg.batch_size)
    opt_steps = math.ceil(batches / cfg.accumulate)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * opt_steps)
    loss = loss_fn(cfg.loss)
    start = 0
    config = {**asdict(cfg), "tile_size": size, "scale": scale, "frames": model_cfg.frames, "world_size": d.world}
    last_metrics: dict = {}
    if resume:
        state = _load_checkpoint(resume)
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if scaler is not None and state["scaler"]:
            scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        start, last_metrics = int(state["epoch"]) + 1, state["metrics"]
    name = cfg.model_name or f"bpho-{cfg.dataset}"
    fixed = (np.array(lr_va[:4]), np.array(hr_va[:4]))

    tags = {"bpho.dataset": ds.name, "bpho.dataset_digest": ds.digest, "bpho.recipe": ds.manifest["recipe"]["name"],
            "bpho.datasource": ds.manifest["datasource"]["name"],
            "bpho.datasource_digest": ds.manifest["datasource"]["digest"], "bpho.model_name": name, **(tags or {})}
    run_ctx = tracking.run("bpho-train", run_name=f"{cfg.dataset}-{cfg.encoder}-{cfg.mode}", tags=tags,
                           run_id=resume, parent_run_id=parent_run_id) if d.main else nullcontext()
    with run_ctx as active:
        run_id = _broadcast_str(d, active.info.run_id if d.main else None)
        wait = float(os.environ.get("BPHO_TRACKING_WAIT", "600"))  # seconds to wait for an absent server
        buffer = tracking.Buffer(checkpoint_path(run_id).parent / "pending.jsonl") if d.main else None
        if d.main:
            if resume:
                buffer.drain(wait)  # what an outage before the kill kept back
                tracking.log_missing_epoch(last_metrics, start - 1)
            else:
                # prefixed: `mlflow run` has already logged its own -P values (tile_size='' ...) unprefixed
                tracking.log_params({**{f"train.{k}": v for k, v in config.items()},
                                     **{f"model.{k}": v for k, v in model_cfg.to_dict().items()}})
                tracking.log_dataset_input(ds.name, ds.digest, ds.path, context="training",
                                           tags={"tile_size": str(size)})
        for epoch in range(start, cfg.epochs):
            order = np.random.default_rng([cfg.seed, epoch]).permutation(len(lr_tr))
            # every rank gets the same number of samples (wrapping around, as DistributedSampler
            # does): unequal batch counts would leave one rank waiting in all-reduce for ever
            order = np.resize(order, per_rank * d.world)[d.rank::d.world]
            gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch * 101 + d.rank)
            running, seen = 0.0, 0
            bar = tqdm(range(batches), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch",
                       disable=not (progress and d.main), leave=False)
            opt.zero_grad(set_to_none=True)
            for b in bar:
                idx = np.sort(order[b * cfg.batch_size:(b + 1) * cfg.batch_size])
                if idx.size == 0:
                    continue
                x, y = augment(torch.from_numpy(lr_tr[idx]), torch.from_numpy(hr_tr[idx]), gen)
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                value = forward_backward(model, x, y, loss, amp_dtype, scaler, cfg.accumulate, cfg.channels_last)
                if (b + 1) % cfg.accumulate == 0 or b == batches - 1:
                    optimizer_step(opt, scaler)
                    if sched.last_epoch < sched.total_steps - 1:
                        sched.step()
                running += float(value.detach()) * len(idx)
                seen += len(idx)
                bar.set_postfix(loss=f"{running / seen:.4f}")
            if d.main:
                metrics = {"train_loss": running / max(seen, 1), "lr": opt.param_groups[0]["lr"],
                           **evaluate_tiles(net, lr_va, hr_va, scale, device, cfg.batch_size, loss, amp_dtype)}
                _save_checkpoint(checkpoint_path(run_id), net, opt, sched, scaler, epoch, metrics, config)
                buffer.metrics(metrics, epoch)  # logged now, or kept until the server is back
                last_metrics = metrics
                if (epoch + 1) % cfg.panel_every == 0 or epoch == cfg.epochs - 1:
                    png = checkpoint_path(run_id).parent / "panels" / f"epoch_{epoch + 1:03d}.png"
                    png.parent.mkdir(parents=True, exist_ok=True)
                    save_panel(png, net, *fixed, scale, device,
                               f"epoch {epoch + 1}: PSNR model {metrics['valid_psnr']:.2f} dB, "
                               f"bicubic {metrics['bicubic_psnr']:.2f} dB")
                    if tracking.previews_enabled():
                        buffer.artifact(png, "panels")
                if on_epoch is not None:
                    on_epoch(epoch, metrics, run_id)
                print(f"epoch {epoch + 1}/{cfg.epochs}: train loss {metrics['train_loss']:.4f}, valid PSNR "
                      f"{metrics['valid_psnr']:.2f} dB (bicubic {metrics['bicubic_psnr']:.2f}), "
                      f"SSIM {metrics['valid_ssim']:.3f} (bicubic {metrics['bicubic_ssim']:.3f})", flush=True)
            _barrier(d)
        result = TrainResult(run_id=run_id, model_uri=f"runs:/{run_id}/model", registered_name=None,
                             registered_version=None, metrics=last_metrics)
        if d.main:
            meta = {"model": model_cfg.to_dict(), "normalization": {
                        "percentile_low": ds.manifest["parameters"]["percentile_low"],
                        "percentile_high": ds.manifest["parameters"]["percentile_high"]},
                    "dataset": ds.name, "dataset_digest": ds.digest, "tile_size": size, "run_id": run_id}
            buffer.drain(wait)
            with tempfile.TemporaryDirectory() as tmp:
                folder = save_model(Path(tmp) / "bpho_model", net.float().cpu(), meta)
                version = tracking.retry(lambda: tracking.log_model(folder, registered_name=name if register else None),
                                         wait, "logging the model")
            if register:
                result.registered_name, result.registered_version = name, version
    _barrier(d)
    return result
