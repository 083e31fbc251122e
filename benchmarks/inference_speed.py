"""Inference throughput: `bpho predict`'s path (read CZI, normalise, tile, predict, blend, write
TIFF) against the bare network on one big tensor, and the network against the card's limit.

    python benchmarks/inference_speed.py [--size 2048] [--devices cpu,cuda] [--tile N] [--json FILE]

Prints output megapixels per second for fp32, fp16 and bf16 (the CPU: fp32 and bf16), `bpho
predict` as a fraction of the bare network, the network's GFLOP per output megapixel (torch's
FlopCounterMode), the TFLOP/s the bare network achieves and its fraction of the card's dense
bf16 peak. Weights are random: speed does not depend on them. Each timing is the best of
--repeats after a warm-up at the same size (cuDNN picks its algorithms on the first call).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from train_speed import card


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_of(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up at the same size
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return min(times)


def breakdown(model, src: Path, work: Path) -> dict:
    """The steps of `bpho predict` on one image, each timed on its own."""
    import tifffile

    from bpho import io

    clock, parts = time.perf_counter(), {}

    def lap(name):
        nonlocal clock
        sync(model.device)
        now = time.perf_counter()
        parts[name] = now - clock
        clock = now

    img = io.read(src)
    lap("read")
    lr = img.data[0, 0, 0]
    lo, rng = model._normalisation(lr)
    window = ((lr.astype(np.float32) - lo) / rng)[None]
    lap("normalise")
    hr = model.predict_normalized(window, lo, rng)
    lap("tiles+network+blend+to host")
    tifffile.imwrite(work / "parts.tif", hr, imagej=True)
    lap("write TIFF")
    return parts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=2048, help="LR side in pixels")
    p.add_argument("--devices", default="cpu,cuda", help="comma-separated; cuda is skipped where there is none")
    p.add_argument("--encoder", default="resnet34")
    p.add_argument("--mode", default="lr", choices=("pre", "lr"))
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--tile", type=int, help="LR tile side (default: bpho predict's for the device)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", help="also write the rows here")
    a = p.parse_args()

    from bpho import io
    from bpho.inference import PRECISIONS, load_model, save_model
    from bpho.models import UNetConfig, build_model
    from bpho.config import PredictConfig
    from bpho.predict import predict_files

    work = Path(tempfile.mkdtemp(prefix="bpho-bench-infer-"))
    cfg = UNetConfig(encoder=a.encoder, scale=a.scale, mode=a.mode)
    net = build_model(cfg).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.zeros(1, cfg.frames, 256, 256))
    gflop_per_mp = counter.get_total_flops() / 1e9 / ((256 * a.scale) ** 2 / 1e6)
    folder = save_model(work / "model", net, {"model": cfg.to_dict(),
                                              "normalization": {"percentile_low": 2, "percentile_high": 99.8}})
    lr = np.random.default_rng(0).poisson(50, (1, 1, 1, a.size, a.size)).astype(np.uint16)
    src = io.write_czi(work / "lr.czi", lr, (None, 0.14, 0.14))
    out_mp = (a.size * a.scale) ** 2 / 1e6
    devices = [d for d in a.devices.split(",") if d == "cpu" or torch.cuda.is_available()]
    rows = []
    for device in devices:
        for precision in (("fp32", "fp16", "bf16") if device == "cuda" else ("fp32", "bf16")):
            model = load_model(folder, device=device, precision=precision, tile=a.tile, batch=a.batch)
            x = torch.from_numpy(lr[0, 0][None].astype(np.float32) / 100).to(model.device, PRECISIONS[precision])

            def bare():
                with torch.no_grad():
                    model.net(x)

            def full():  # the whole command: model loaded, file read, blocks predicted and written, PNG
                predict_files(str(folder), [src], work / "out", PredictConfig(
                    device=device, precision=precision, tile=a.tile, batch=a.batch, overwrite=True), progress=False)

            t_bare = best_of(bare, model.device, a.repeats)
            t_full = best_of(full, model.device, a.repeats)
            parts = breakdown(model, src, work)
            tflops = gflop_per_mp * out_mp / t_bare / 1e3
            rows.append({"device": device, "precision": precision, "tile": model.tile, "bare_mp_s": out_mp / t_bare,
                         "predict_mp_s": out_mp / t_full, "predict_of_bare": t_bare / t_full, "tflops": tflops,
                         "predict_s": t_full, "parts_s": parts})
    name, peak = card()
    print(f"\ninference on {name} (dense bf16 peak {peak or '?'} TFLOP/s), {a.encoder} U-Net mode {a.mode}, "
          f"LR {a.size}x{a.size} -> HR {a.size * a.scale}x{a.size * a.scale} ({out_mp:.1f} MP), "
          f"{gflop_per_mp:.1f} GFLOP per output MP")
    print(f"{'device':6s} {'precision':>9} {'tile':>5} {'bare net MP/s':>14} {'bpho predict MP/s':>18} "
          f"{'of bare':>8} {'TFLOP/s':>8} {'of peak':>8}")
    for r in rows:
        of_peak = f"{r['tflops'] / peak:8.1%}" if peak and r["device"] == "cuda" else f"{'-':>8}"
        print(f"{r['device']:6s} {r['precision']:>9} {r['tile']:5d} {r['bare_mp_s']:14.1f} {r['predict_mp_s']:18.1f} "
              f"{r['predict_of_bare']:8.0%} {r['tflops']:8.2f} {of_peak}")
    print("where `bpho predict`'s time goes (s, one run after the timed ones):")
    for r in rows:
        print(f"  {r['device']} {r['precision']}: total {r['predict_s']:.3f}; "
              + ", ".join(f"{k} {v:.3f}" for k, v in r["parts_s"].items()))
    if a.json:
        Path(a.json).write_text(json.dumps({"card": name, "peak_bf16_tflops": peak, "size": a.size,
                                            "gflop_per_mp": gflop_per_mp, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
