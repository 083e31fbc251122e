"""CAREamics 0.3.5 runner for benchmarks/peers.py: CARE (its default configuration, depth-2
U-Net) trained on bicubic-upsampled LR tiles -> HR tiles for a wall-clock budget, then
predicting the bicubic-upsampled whole test LR images with the weights of its last epoch.
`--algorithm n2v`: Noise2Void (`create_advanced_n2v_config` defaults: depth-2 U-Net, 0.2% of
the pixels masked per patch, flips and 90-degree rotations) trained on the LR tiles alone, no
target (for scale-1 denoising data: the noisy training tiles, their clean ones unused).

Runs in the CAREamics virtual environment that peers.py makes, not in bpho's:

    python peer_careamics.py --data DIR --budget SECONDS --out DIR [--batch-size 16] [--algorithm care|n2v]

DIR (written by peers.py) holds train_lr_up.npy (N, 1, H, W), train_hr.npy (N, 1, H, W) and
test_lr_up_NN.npy (Y, X), all float32 and normalised as bpho normalises. Writes
pred_NN.npy (Y, X) and result.json (training seconds, samples, samples/s, prediction seconds).

Budget: Lightning's own `max_time` (trainer_params), with `num_epochs` large enough not to
stop first; CARE's default early stopping (val_loss, patience 3) stays on, as a user gets it.
Its validation data is its own default split of the training tiles. `careamist.predict` uses
the weights in memory, those of the last epoch trained (early stopping does not restore the
best ones): every method in peers.py reports its last epoch.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
from lightning.pytorch.callbacks import Callback

from careamics import CAREamist
from careamics.config import create_advanced_care_config, create_advanced_n2v_config

from peer_args import runner_args  # beside this file


class Count(Callback):
    """Training samples seen (every training batch, whatever stops training)."""

    def __init__(self):
        self.samples = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.samples += int(batch[0].data.shape[0])  # batch: (input, target) ImageRegionData (N2V: masked input)


def main() -> None:
    a = runner_args(__doc__.splitlines()[0])
    data, out = a.data, a.out

    x = np.load(data / "train_lr_up.npy")[:, 0]  # (N, H, W): axes SYX
    y = np.load(data / "train_hr.npy")[:, 0]
    size = x.shape[-1]
    seconds = max(1, int(round(a.budget)))
    # the create_*_config arguments and defaults, plus the one Lightning limit they have no argument for
    common = dict(data_type="array", axes="SYX", patch_size=[size, size], batch_size=a.batch_size,
                  num_epochs=100_000, trainer_params={"max_time": f"00:00:{seconds // 60:02d}:{seconds % 60:02d}"})
    if a.algorithm == "n2v":
        config = create_advanced_n2v_config(experiment_name="peer_n2v", **common)
    else:
        config = create_advanced_care_config(experiment_name="peer_care", **common)
    count = Count()
    work = Path(tempfile.mkdtemp(prefix="careamics-", dir=out))
    careamist = CAREamist(config, work_dir=work, callbacks=[count])
    start = time.perf_counter()
    careamist.train(train_data=x) if a.algorithm == "n2v" else careamist.train(train_data=x, train_data_target=y)
    train_s = time.perf_counter() - start
    epochs = int(careamist.trainer.current_epoch)

    files = sorted(data.glob("test_lr_up_*.npy"))
    start = time.perf_counter()
    for f in files:
        image = np.load(f)
        pred, _ = careamist.predict(image[None])  # axes SYX as trained; whole image, the weights in memory
        np.save(out / f.name.replace("test_lr_up_", "pred_"), np.asarray(pred[0], np.float32).reshape(image.shape))
    predict_s = time.perf_counter() - start
    result = {"train_s": train_s, "samples": count.samples, "samples_per_s": count.samples / train_s,
              "epochs": epochs, "predict_s": predict_s, "batch_size": a.batch_size, "patch_size": size}
    (out / "result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
