"""The U-Net's configuration: everything needed to rebuild the network, saved next to its weights.

Torch-free, so that `bpho.config` (and the command line) can read the network's defaults
without importing PyTorch; an exported package's architecture file holds it above unet.py.
"""

from dataclasses import asdict, dataclass
from typing import Optional, Tuple

MODES = ("pre", "lr")  # pre: upsample LR first; lr: pixel-shuffle at the end
PADDINGS = ("replicate", "reflect", "zeros")


@dataclass(frozen=True)
class UNetConfig:
    """Everything needed to rebuild the network; saved next to the weights."""

    encoder: str = "resnet34"
    scale: int = 4
    frames: int = 1
    mode: str = "lr"
    decoder_widths: Tuple[int, ...] = (128, 64, 64)  # deepest first, one per stage (extra ones are unused)
    depth: Optional[int] = 3  # encoder stages used (None: all); 3 of a resnet: stride 8
    head_channels: Optional[int] = 8  # lr mode: HR channels after the pixel shuffle (None: the last width)
    padding: str = "replicate"  # of every convolution; "zeros" (bpho 0.1 models) lets borders be measured
    encoder_weights: Optional[str] = None  # a local timm checkpoint file; never downloaded

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        d = dict(d)
        d["decoder_widths"] = tuple(d.get("decoder_widths", cls.decoder_widths))
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})
