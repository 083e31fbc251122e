"""RCAN (Zhang et al. 2018, "Image super-resolution using very deep residual channel attention
networks"), small, for microscopy super-resolution at LR resolution.

Tensors are (N, C, H, W) float: LR frames in (1, or 5 for t-2..t+2), one HR channel out,
`scale` times larger. Residual groups of residual blocks, each block re-weighting its channels
by a squeeze-and-excitation attention over a local window (not RCAN's global average, so the
output does not depend on how inference tiles the image); long skips; a pixel-shuffle head (ICNR-initialised).
Like the U-Net it predicts a residual over the bilinear upsampling of the centre frame. No
batch norm and no striding: any input size works, and with ``replicate`` padding the output of
a tile depends only on its neighbourhood (tiled inference matches whole-image inference).
"""

import torch
import torch.utils.checkpoint
from torch import nn

try:
    from bpho.errors import BphoError
    from bpho.models.layers import bilinear_base, icnr, residual_for, set_padding
    from bpho.models.rcan_config import RCANConfig
except ImportError:  # an exported package's architecture file: export.py writes those above this
    BphoError = ValueError  # type: ignore[misc,assignment]


class _ChannelAttention(nn.Module):
    """Squeeze-and-excitation over a `window` x `window` neighbourhood, not the whole image as in
    RCAN: a global average would make each tile's output depend on the rest of the tile."""

    def __init__(self, channels: int, reduction: int, window: int):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.weights = nn.Sequential(nn.AvgPool2d(window, stride=1, padding=window // 2, count_include_pad=False),
                                     nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True),
                                     nn.Conv2d(hidden, channels, 1), nn.Sigmoid())

    def forward(self, x):
        return x * self.weights(x)


class _Block(nn.Module):
    """conv - ReLU - conv - channel attention, added to its input."""

    def __init__(self, channels: int, reduction: int, window: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(channels, channels, 3, padding=1),
                                  _ChannelAttention(channels, reduction, window))

    def forward(self, x):
        return x + self.body(x)


class _Group(nn.Module):
    def __init__(self, channels: int, blocks: int, reduction: int, window: int):
        super().__init__()
        self.body = nn.Sequential(*[_Block(channels, reduction, window) for _ in range(blocks)],
                                  nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x):
        return x + self.body(x)


class RCAN(nn.Module):
    """Residual channel attention network: residual groups of channel-attention blocks on LR features,
    a pixel-shuffle to HR, added to the bilinear upsampling of the centre frame."""

    def __init__(self, config: "RCANConfig"):
        super().__init__()
        for name in ("features", "groups", "blocks", "reduction", "window", "scale", "frames"):
            if getattr(config, name) < 1:
                raise BphoError(f"rcan {name}={getattr(config, name)}: use 1 or more")
        self.config = config
        self.residual = residual_for(config.residual, config.scale)
        self.stride = 1  # any input size is taken as it is
        f, s = config.features, config.scale
        self.stem = nn.Conv2d(config.frames, f, 3, padding=1)
        if config.window % 2 == 0:
            raise BphoError(f"rcan window={config.window}: use an odd number of LR pixels")
        self.body = nn.Sequential(*[_Group(f, config.blocks, config.reduction, config.window)
                                    for _ in range(config.groups)],
                                  nn.Conv2d(f, f, 3, padding=1))
        if s > 1:
            up = nn.Conv2d(f, f * s**2, 3, padding=1)
            self.head: nn.Module = nn.Sequential(up, nn.PixelShuffle(s), nn.Conv2d(f, 1, 3, padding=1))
            icnr(up, s)
        else:
            self.head = nn.Conv2d(f, 1, 3, padding=1)
        set_padding(self, config.padding)
        self.checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each group's activations in the backward pass (less memory, more time)."""
        self.checkpointing = enable

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        """(N, frames, h, w) normalised LR -> (N, 1, h*scale, w*scale) normalised HR."""
        x = self.stem(lr)
        y = x
        for layer in self.body:
            if self.checkpointing and self.training:
                y = torch.utils.checkpoint.checkpoint(layer, y, use_reentrant=False)
            else:
                y = layer(y)
        out = self.head(x + y)
        return out + bilinear_base(lr, self.config.scale) if self.residual else out


def rcan(**config) -> RCAN:
    """The network from RCANConfig's fields as keywords (a BioImage Model Zoo package's callable)."""
    return RCAN(RCANConfig.from_dict(config))
