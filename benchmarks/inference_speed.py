"""Inference throughput: `bpho predict`'s path (read CZI, normalise, tile, blend, write TIFF)
against the bare network on one big tensor.

    python benchmarks/inference_speed.py [--size 1024] [--encoder resnet34] [--mode lr] [--tile 512]

Prints output megapixels per second on the CPU and, where CUDA is available, on the GPU in
fp32 and fp16, and the overhead of tiling + blending + I/O over the bare network time
(target: under 15%). Weights are random: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def bare(net, x: torch.Tensor, half: bool) -> float:
    with torch.no_grad():
        net(x[..., :64, :64])  # warm-up
        if x.is_cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        net(x.half() if half else x)
        if x.is_cuda:
            torch.cuda.synchronize()
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=1024, help="LR side in pixels (2048 for a large image)")
    p.add_argument("--encoder", default="resnet34")
    p.add_argument("--mode", default="lr", choices=("pre", "lr"))
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--tile", type=int, help="LR tile side (default: half the image plus the overlap: 2 x 2 tiles)")
    p.add_argument("--overlap", type=int, default=16)
    a = p.parse_args()
    a.tile = a.tile or (a.size + a.overlap) // 2

    from bpho import io
    from bpho.inference import load_model, save_model
    from bpho.models import UNetConfig, build_model
    from bpho.predict import _predict_image

    work = Path(tempfile.mkdtemp(prefix="bpho-bench-infer-"))
    cfg = UNetConfig(encoder=a.encoder, scale=a.scale, mode=a.mode)
    folder = save_model(work / "model", build_model(cfg),
                        {"model": cfg.to_dict(), "normalization": {"percentile_low": 2, "percentile_high": 99.8}})
    lr = np.random.default_rng(0).poisson(50, (1, 1, 1, a.size, a.size)).astype(np.uint16)
    src = io.write_czi(work / "lr.czi", lr, (None, 0.14, 0.14))
    out_mp = (a.size * a.scale) ** 2 / 1e6
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        for half in ([False, True] if device == "cuda" else [False]):
            model = load_model(folder, device=device, tile=a.tile, overlap=a.overlap, batch=1, half=half)
            x = torch.from_numpy(lr[0, 0].astype(np.float32)[None]).to(device)
            t_bare = bare(model.net, x, half)
            t = time.perf_counter()
            _predict_image(model, io.read(src), work / "hr.tif", progress=False)
            t_full = time.perf_counter() - t
            rows.append((device + (" fp16" if half else " fp32"), out_mp / t_bare, out_mp / t_full, t_full / t_bare - 1))
    print(f"\ninference, {a.encoder} U-Net mode {a.mode}, LR {a.size}x{a.size} -> HR {a.size * a.scale}x"
          f"{a.size * a.scale} ({out_mp:.1f} MP), tile {a.tile} overlap {a.overlap}")
    print(f"{'device':12s} {'bare net MP/s':>14s} {'bpho predict MP/s':>18s} {'overhead':>9s}")
    for name, mp_bare, mp_full, overhead in rows:
        print(f"{name:12s} {mp_bare:14.2f} {mp_full:18.2f} {overhead:9.1%}")


if __name__ == "__main__":
    main()
