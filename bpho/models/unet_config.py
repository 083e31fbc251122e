"""The U-Net's configuration: everything needed to rebuild the network, saved next to its weights.

Torch-free, so that `bpho.config` (and the command line) can read the network's defaults
without importing PyTorch; an exported package's architecture file holds it above unet.py.
"""

from dataclasses import asdict, dataclass, fields
from typing import ClassVar, Literal, Optional, Tuple

MODES = ("pre", "lr")  # pre: upsample LR first; lr: pixel-shuffle at the end
PADDINGS = ("replicate", "reflect", "zeros")


@dataclass(frozen=True)
class UNetConfig:
    """A U-Net whose encoder is any timm model with ``features_only`` (unet.py)."""

    arch: ClassVar[str] = "unet"
    TITLE: ClassVar[str] = "U-Net"
    CITE: ClassVar[tuple] = ("Ronneberger O., Fischer P., Brox T. (2015) U-Net: convolutional networks for biomedical "
                          "image segmentation. MICCAI 2015", "10.1007/978-3-319-24574-4_28")
    SEARCH: ClassVar[dict] = {"encoder": ("resnet18", "resnet34"), "mode": ("lr", "pre")}  # `bpho tune hparams`
    HELP: ClassVar[dict] = {
        "encoder": "any timm model with features_only", "depth": "encoder stages used (3: stride 8 for a resnet)",
        "mode": "pre: upsample LR first; lr: pixel-shuffle at the end",
        "decoder_widths": "decoder widths, deepest first",
        "head_channels": "HR channels after the pixel shuffle (mode lr)",
        "padding": "of every convolution (zeros lets the network find tile borders)",
        "encoder_weights": "a local weights file for the encoder (nothing is downloaded)",
        "head_relu": "a ReLU between the pixel shuffle and the last convolution (models saved before 0.3)",
        "residual": "add the output to the bilinear upsampling of the centre frame (off: it predicts the image; "
         "default: on for super-resolution, off for denoising, scale 1, and self-supervised training)"}

    encoder: str = "resnet34"
    scale: int = 4  # set from the dataset
    frames: int = 1  # set from the dataset
    mode: Literal["pre", "lr"] = "lr"
    decoder_widths: Tuple[int, ...] = (128, 64, 64)  # deepest first, one per stage (extra ones are unused)
    depth: Optional[int] = 3  # encoder stages used (None: all); 3 of a resnet: stride 8
    head_channels: Optional[int] = 8  # lr mode: HR channels after the pixel shuffle (None: the last width)
    padding: Literal["replicate", "reflect", "zeros"] = "replicate"  # "zeros" (bpho 0.1 models) shows borders
    encoder_weights: Optional[str] = None  # a local timm checkpoint file; never downloaded
    # bpho 0.2 models: a ReLU in the head, whose 8 channels could all be negative at the start and
    # hold the residual at zero; learning took off ~7 epochs later than without it (README)
    head_relu: bool = False
    # None: set from the data when training starts (`layers.residual_for`); models saved before 0.3 had it on
    residual: Optional[bool] = None

    def label(self) -> str:
        """For run names: ``unet-resnet34-lr``."""
        return f"unet-{self.encoder}-{self.mode}"

    def to_dict(self) -> dict:
        """The config as a plain dict, with its architecture's name (saved beside the weights)."""
        return {"arch": self.arch, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        """The config from a plain dict (keys it does not have are ignored)."""
        d = dict(d)
        d["decoder_widths"] = tuple(d.get("decoder_widths", cls.decoder_widths))
        return cls(**{k: v for k, v in d.items() if k in {f.name for f in fields(cls)}})
