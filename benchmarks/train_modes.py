"""`pre` vs `lr` input mode: the same wall-clock training budget on the demo data.

    python benchmarks/train_modes.py [--budget 120] [--encoder resnet34] [--tile-size 128] [--batch-size 8]

Builds demo pairs and `paired_001` in a scratch BPHO_ROOT (once), measures each mode's
training speed, trains each for as many epochs as fit in --budget seconds, and prints
valid PSNR / SSIM gain over bicubic, training tiles/s and inference output megapixels/s
(one 512 x 512 LR image through the tiled predictor). On a GPU it also prints the peak
memory of a training step per tile size and batch.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def step_time(cfg, ds, device, steps: int = 5) -> float:
    """Seconds per training step (forward, backward, optimizer) at the config's batch and tile size."""
    from dataclasses import replace

    from bpho.models import build_model

    lr, hr = ds.tiles(cfg.tile_size, "train")
    scale = hr.shape[-1] // lr.shape[-1]
    net = build_model(replace(cfg.model, scale=scale, frames=lr.shape[1])).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x = torch.from_numpy(np.array(lr[: cfg.batch_size])).to(device)
    y = torch.from_numpy(np.array(hr[: cfg.batch_size])).to(device)
    for i in range(steps + 1):
        if i == 1:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
        loss = torch.nn.functional.l1_loss(net(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / steps


def peak_memory(encoder: str, mode: str, tile: int, batch: int, scale: int = 4) -> str:
    from bpho.models import UNetConfig, build_model

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    try:
        net = build_model(UNetConfig(encoder=encoder, scale=scale, mode=mode)).cuda()
        opt = torch.optim.AdamW(net.parameters())
        x = torch.rand(batch, 1, tile // scale, tile // scale, device="cuda")
        net(x).mean().backward()
        opt.step()
        torch.cuda.synchronize()
        return f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
    except torch.OutOfMemoryError:
        return "out of memory"
    finally:
        torch.cuda.empty_cache()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=120.0, help="training seconds per mode")
    p.add_argument("--encoder", default="resnet34")
    p.add_argument("--tile-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--fields", type=int, default=8)
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "bpho-bench-train"))
    a = p.parse_args()

    work = Path(a.work)
    os.environ["BPHO_ROOT"] = str(work / "root")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    from bpho import datasets, datasources
    from bpho.datasets import builder
    from bpho.inference import load_model, pick_device
    from bpho.config import DemoConfig
    from bpho.demo import make_demo_data
    from bpho.config import TrainConfig
    from bpho.train import train

    if not (work / "demo").exists():
        make_demo_data(work / "demo", DemoConfig(paired_fields=a.fields, movies=0, hr_only_fields=0, denoise_fields=0))
    if "pairs" not in datasources.names():
        datasources.add("pairs", [work / "demo/paired"], kind="paired")
    if "bench" not in datasets.names():
        builder.make("paired_001", datasource="pairs", name="bench", settings=["tile_sizes=128,256",
                                                                               "tiles_per_image=48"])
    ds = datasets.open("bench")
    device = pick_device("auto")
    n_train = len(ds.tiles(a.tile_size, "train")[0])
    rows = []
    for mode in ("pre", "lr"):
        cfg = TrainConfig(dataset="bench", tile_size=a.tile_size, batch_size=a.batch_size,
                          model={"encoder": a.encoder, "mode": mode}, model_name=f"bench-{mode}", panel_every=1000)
        per_step = step_time(cfg, ds, device)
        epochs = max(1, math.floor(a.budget / (per_step * math.ceil(n_train / a.batch_size))))
        t = time.perf_counter()
        result = train(TrainConfig(**{**cfg.__dict__, "epochs": epochs}), progress=False)
        spent = time.perf_counter() - t
        m = result.metrics
        model = load_model(Path(_model_dir(result)), device=str(device.type))
        image = np.random.default_rng(0).poisson(40, (512, 512)).astype(np.float32)
        model.predict(image[:128, :128])
        t = time.perf_counter()
        out = model.predict(image)
        infer = out.size / 1e6 / (time.perf_counter() - t)
        rows.append((mode, epochs, spent, m["valid_psnr"] - m["bicubic_psnr"], m["valid_ssim"] - m["bicubic_ssim"],
                     a.batch_size / per_step, infer))

    print(f"\ntraining {a.encoder}, tile {a.tile_size} (HR), batch {a.batch_size}, budget {a.budget:.0f} s per mode, "
          f"{n_train} train tiles, device {device}")
    print(f"{'mode':5s} {'epochs':>6s} {'train s':>8s} {'PSNR gain dB':>13s} {'SSIM gain':>10s} {'tiles/s':>8s} "
          f"{'infer MP/s':>11s}")
    for mode, epochs, spent, dpsnr, dssim, tps, mps in rows:
        print(f"{mode:5s} {epochs:6d} {spent:8.1f} {dpsnr:13.2f} {dssim:10.3f} {tps:8.1f} {mps:11.2f}")
    if device.type == "cuda":
        print("\npeak GPU memory of one training step (fp32):")
        print(f"{'mode':5s} {'tile':>5s} " + " ".join(f"{'batch ' + str(b):>12s}" for b in (4, 8, 16, 32)))
        for mode in ("pre", "lr"):
            for tile in (128, 256, 512):
                mems = [peak_memory(a.encoder, mode, tile, b) for b in (4, 8, 16, 32)]
                print(f"{mode:5s} {tile:5d} " + " ".join(f"{m:>12s}" for m in mems))


def _model_dir(result) -> str:
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(f"models:/{result.registered_name}/{result.registered_version}"))
    return str(next(local.rglob("bpho_model.json")).parent)


if __name__ == "__main__":
    main()
