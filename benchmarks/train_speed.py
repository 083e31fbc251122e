"""Training throughput on a GPU against the card's limit, at the batch `bpho tune fit` fitted.

    python benchmarks/train_speed.py --dataset paired_512 [--memory-gb 8] [--steps 20]

The dataset needs tiles of every size asked for (`bpho dataset make paired_512 --datasource
pairs --set tile_sizes=128,256,512`). Its fit table (`bpho tune fit`, read from
``$BPHO_ROOT/tune/fit/<dataset>.json`` or searched here within --memory-gb) gives each tile
size's largest batch per precision; each row then times --steps real training steps (forward,
backward, AdamW) at that batch in fp32 and AMP, with and without channels-last, and prints:
training tiles/s, HR megapixels/s, peak memory, the network's GFLOP per tile (forward +
backward, counted by torch's FlopCounterMode), the achieved TFLOP/s and its fraction of the
card's dense bf16 peak (the limit). Runs on the CPU too (slowly, fp32 only).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

# dense (no sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, TFLOP/s
PEAK_BF16 = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.0,
             "L4": 121.0, "A10": 125.0, "RTX 4090": 165.2, "RTX 3090": 71.0, "T4": 65.0}


def card() -> tuple:
    """(name, dense bf16 peak in TFLOP/s or None)."""
    if not torch.cuda.is_available():
        return "CPU", None
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    return name, peak


def step_flops(net, x, y) -> float:
    """FLOPs of one forward + backward pass of `net` on the batch (x, y)."""
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.l1_loss(net(x), y).backward()
    net.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True)
    p.add_argument("--tile-sizes", default="128,256,512")
    p.add_argument("--memory-gb", type=float, default=8.0, help="budget of the fit search when no table exists")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--json", help="also write the rows here")
    a = p.parse_args()

    from bpho import datasets, tune
    from bpho.inference import pick_device
    from bpho.config import TrainConfig
    from bpho.train import forward_backward, loss_fn, optimizer_step, setup_model

    device = pick_device("auto")
    sizes = [int(s) for s in a.tile_sizes.split(",")]
    path = tune.fit_path(a.dataset)
    if path.exists():
        fit = json.loads(path.read_text())
    else:
        result = tune.fit_search(tune.FitConfig(a.dataset, tile_sizes=sizes, memory_gb=a.memory_gb), track=False,
                                 progress=False)
        fit = {"recommended": result.recommended, "budget_bytes": result.budget_bytes}
    batch_of = {(r["tile_size"], r["precision"]): r["batch_size"] for r in fit["recommended"] if not r["checkpointing"]}
    name, peak = card()
    ds = datasets.open(a.dataset)
    rows = []
    for size in sizes:
        lr, hr = ds.tiles(size, "train")
        for precision in (("fp32", "amp") if device.type == "cuda" else ("fp32",)):
            batch = batch_of.get((size, precision))
            if not batch:
                rows.append({"tile": size, "precision": precision, "batch": None})
                continue
            idx = np.resize(np.arange(len(lr)), batch)
            x = torch.from_numpy(np.asarray(lr[idx])).to(device)
            y = torch.from_numpy(np.asarray(hr[idx])).to(device)
            for channels_last in (False, True):
                cfg = TrainConfig(dataset=a.dataset, tile_size=size, batch_size=batch, amp=precision == "amp",
                                  channels_last=channels_last, device=device.type)
                net, _, amp_dtype, scaler = setup_model(cfg, hr.shape[-1] // lr.shape[-1], lr.shape[1], device)
                flops = step_flops(net, x[:1], y[:1])
                opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
                loss = loss_fn("l1")
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
                for i in range(3 + a.steps):  # 3 warm-up steps: cuDNN picks its algorithms, AdamW allocates
                    if i == 3:
                        if device.type == "cuda":
                            torch.cuda.synchronize(device)
                        start = time.perf_counter()
                    forward_backward(net, x, y, loss, amp_dtype, scaler, channels_last=channels_last)
                    optimizer_step(opt, scaler)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                tiles_s = a.steps * batch / (time.perf_counter() - start)
                tflops = flops * tiles_s / 1e12
                rows.append({"tile": size, "precision": precision, "channels_last": channels_last, "batch": batch,
                             "tiles_s": tiles_s, "hr_mp_s": tiles_s * size * size / 1e6,
                             "peak_mb": torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else None,
                             "gflop_per_tile": flops / 1e9, "tflops": tflops,
                             "of_peak": tflops / peak if peak else None})
                del net, opt
    print(f"\ntraining speed on {name} (dense bf16 peak {peak or '?'} TFLOP/s), {a.dataset}, "
          f"{TrainConfig(dataset=a.dataset).model.label()}, batch from `bpho tune fit` "
          f"({fit.get('budget_bytes', 0) / 2 ** 30:.0f} GB budget), {a.steps} steps")
    print(f"{'HR tile':>7} {'precision':>9} {'ch-last':>7} {'batch':>5} {'tiles/s':>8} {'HR MP/s':>8} {'peak MB':>8} "
          f"{'GFLOP/tile':>10} {'TFLOP/s':>8} {'of peak':>8}")
    for r in rows:
        if r["batch"] is None:
            print(f"{r['tile']:7d} {r['precision']:>9} {'':>7} {'none fits':>9}")
            continue
        peak_mb = f"{r['peak_mb']:8.0f}" if r["peak_mb"] is not None else f"{'-':>8}"
        of_peak = f"{r['of_peak']:8.1%}" if r["of_peak"] is not None else f"{'-':>8}"
        print(f"{r['tile']:7d} {r['precision']:>9} {('yes' if r['channels_last'] else 'no'):>7} {r['batch']:5d} "
              f"{r['tiles_s']:8.1f} {r['hr_mp_s']:8.1f} {peak_mb} {r['gflop_per_tile']:10.2f} {r['tflops']:8.2f} {of_peak}")
    for size in sizes:
        pair = {r["precision"]: r["tiles_s"] for r in rows if r["tile"] == size and r.get("tiles_s") and not r["channels_last"]}
        if "fp32" in pair and "amp" in pair:
            print(f"tile {size}: AMP / fp32 = {pair['amp'] / pair['fp32']:.2f}x (target >= 2x)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"card": name, "peak_bf16_tflops": peak, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
