"""PSSR2 2.4.0 runner for benchmarks/peers.py: its default ResUNet and default loss trained on
the LR -> HR tile pairs for a wall-clock budget, then predicting the whole test LR images with
the weights of its last epoch (PSSR2 selects none).

Runs in the PSSR2 virtual environment that peers.py makes, not in bpho's:

    python peer_pssr.py --data DIR --budget SECONDS --out DIR [--batch-size 16]

DIR (written by peers.py) holds train_lr.npy (N, 1, h, w), train_hr.npy (N, 1, H, W) and
test_lr_NN.npy (y, x), float32, normalised as bpho normalises (about 0..1). Writes pred_NN.npy
(y*scale, x*scale) float32 and result.json (training seconds, samples, samples/s, prediction seconds).

What PSSR2 gets, as its CLI (`pssr -t`) sets it up: `PairedImageDataset` over one TIFF file
per tile (hr/ and lr/ folders, values x255: PSSR2 works in 0..255 units), val_split 0.1;
`ResUNet(channels=1, scale=s)`; `SSIMLoss(mix=0.8, win_size=min(_max_ssim_win(hr_res), 11))`
(MS-SSIM + Gaussian-weighted L1); AdamW lr 1e-3; ExponentialLR gamma 0.7 per epoch; batch 16;
`train_paired` one epoch at a time until the budget, a batch callback stopping it mid-epoch at
the budget (PSSR2 has no time limit of its own). Prediction: PSSR2's whole-image path,
`ImageDataset` in LR mode (hr_res = image size x scale, val_split 1) and `predict_images`,
whose output is uint8 (clipped 0..255); each image is reflect-padded to a square with a side
divisible by 16 first (the dataset crops non-square images, the ResUNet pools 4 times) and
the prediction cropped back.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np
import tifffile
import torch

from pssr.__main__ import _max_ssim_win
from pssr.data import ImageDataset, PairedImageDataset
from pssr.models import ResUNet
from pssr.predict import predict_images
from pssr.train import train_paired
from pssr.util import SSIMLoss

from peer_args import runner_args  # beside this file

RANGE = 255.0  # PSSR2's image range


class Budget(Exception):
    pass


def main() -> None:
    a = runner_args(__doc__.splitlines()[0])
    data, out = a.data, a.out
    torch.manual_seed(0)

    lr, hr = np.load(data / "train_lr.npy"), np.load(data / "train_hr.npy")
    scale, hr_res = hr.shape[-1] // lr.shape[-1], hr.shape[-1]
    tiles = out / "tiles"
    for side, arr in (("hr", hr), ("lr", lr)):
        (tiles / side).mkdir(parents=True, exist_ok=True)
        for i, t in enumerate(arr):
            tifffile.imwrite(tiles / side / f"tile_{i:05d}.tif", (t[0] * RANGE).astype(np.float32))
    dataset = PairedImageDataset(tiles / "hr", tiles / "lr", hr_res=hr_res, lr_scale=scale, val_split=0.1, split_seed=0)
    model = ResUNet(channels=1, scale=scale)
    loss = SSIMLoss(channels=1, mix=0.8, win_size=min(_max_ssim_win(hr_res), 11))
    optim = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optim, 0.7)
    loader = dict(num_workers=min(4, os.cpu_count() or 1), pin_memory=torch.cuda.is_available())
    device = "cuda" if torch.cuda.is_available() else "cpu"

    samples, epochs = 0, 0
    start = time.perf_counter()

    def stop_at_budget(local):
        nonlocal samples
        samples += int(local["lr"].shape[0])
        if time.perf_counter() - start >= a.budget:
            raise Budget

    try:
        while time.perf_counter() - start < a.budget:
            train_paired(model=model, dataset=dataset, batch_size=a.batch_size, loss_fn=loss, optim=optim, epochs=1,
                         device=device, scheduler=scheduler, dataloader_kwargs=loader, callbacks=[stop_at_budget])
            epochs += 1
    except Budget:
        pass
    train_s = time.perf_counter() - start

    # whole images: reflect-padded squares, side divisible by 16, written x255 as TIFF
    # (one folder per image: LR mode needs hr_res = that image's side x scale)
    shapes = {}
    for f in sorted(data.glob("test_lr_[0-9]*.npy")):
        image = np.load(f)
        side = -(-max(image.shape) // 16) * 16
        padded = np.pad(image, [(0, side - image.shape[0]), (0, side - image.shape[1])], mode="reflect")
        (out / "test" / f.stem).mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(out / "test" / f.stem / f"{f.stem}.tif", (padded * RANGE).astype(np.float32))
        shapes[f.stem] = (image.shape, side)
    start = time.perf_counter()
    preds = {}
    for stem, (shape, side) in shapes.items():
        ds = ImageDataset(out / "test" / stem, hr_res=side * scale, lr_scale=scale, val_split=1, rotation=False)
        preds.update(predict_images(model, ds, device, out_dir=None))
    predict_s = time.perf_counter() - start
    for stem, (shape, _) in shapes.items():
        pred = np.asarray(preds[stem], np.float32).reshape(preds[stem].shape[-2:])
        np.save(out / f"{stem.replace('test_lr_', 'pred_')}.npy", pred[:shape[0] * scale, :shape[1] * scale] / RANGE)
    result = {"train_s": train_s, "samples": samples, "samples_per_s": samples / train_s, "epochs": epochs,
              "predict_s": predict_s, "batch_size": a.batch_size, "tile_size": hr_res}
    (out / "result.json").write_text(json.dumps(result, indent=1))
    for folder in ("tiles", "test"):
        shutil.rmtree(out / folder, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
