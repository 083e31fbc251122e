"""The RCAN's configuration: everything needed to rebuild the network, saved next to its weights.

Torch-free (see unet_config.py); an exported package's architecture file holds it above rcan.py.
"""

from dataclasses import asdict, dataclass, fields
from typing import ClassVar, Literal, Optional


@dataclass(frozen=True)
class RCANConfig:
    """A residual channel-attention network at LR resolution (rcan.py)."""

    arch: ClassVar[str] = "rcan"
    TITLE: ClassVar[str] = "RCAN"
    CITE: ClassVar[tuple] = ("Zhang Y. et al. (2018) Image super-resolution using very deep residual channel attention "
                          "networks. ECCV 2018", "10.1007/978-3-030-01234-2_18")
    SEARCH: ClassVar[dict] = {"features": (32, 64), "blocks": (4, 8)}  # `bpho tune hparams`
    HELP: ClassVar[dict] = {"features": "channels through the network", "groups": "residual groups",
                            "blocks": "channel-attention blocks per group",
                            "reduction": "channel reduction inside the attention",
                            "window": "LR pixels (odd) each channel attention averages over",
                            "residual": "add the output to the bilinear upsampling of the centre frame (off: it "
                                        "predicts the image; default: on for super-resolution, off for denoising, "
                                        "scale 1, and self-supervised training)"}

    scale: int = 4  # set from the dataset
    frames: int = 1  # set from the dataset
    features: int = 32
    groups: int = 3
    blocks: int = 4
    reduction: int = 8
    window: int = 9  # LR px: the neighbourhood each channel attention averages (odd)
    padding: Literal["replicate", "reflect", "zeros"] = "replicate"
    residual: Optional[bool] = None  # as the U-Net's

    def label(self) -> str:
        """For run names: ``rcan-32x3x4`` (features x groups x blocks)."""
        return f"rcan-{self.features}x{self.groups}x{self.blocks}"

    def to_dict(self) -> dict:
        """The config as a plain dict, with its architecture's name (saved beside the weights)."""
        return {"arch": self.arch, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "RCANConfig":
        """The config from a plain dict (keys it does not have are ignored)."""
        return cls(**{k: v for k, v in d.items() if k in {f.name for f in fields(cls)}})
