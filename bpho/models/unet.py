"""U-Net whose encoder is any timm model with `features_only`, for super-resolution.

Tensors are (N, C, H, W) float. Input channels are LR frames (1, or 5 for t-2..t+2); the
output is one HR channel, `scale` times larger. Two input modes:

- ``pre``: the LR is upsampled bilinearly to the HR grid first and the U-Net runs at HR
  size (the classic point-scanning super-resolution recipe);
- ``lr``: the U-Net runs at LR size and a learned pixel-shuffle head upsamples by
  `scale` at the end (scale^2 fewer pixels through the network).

Both predict a residual over the bilinear upsampling of the centre frame (`residual`; off: the
image itself, the default for denoising, scale 1). Any input size
works: the input is padded (reflect) to a multiple of the encoder stride and cropped back.
"""

from typing import Any, Dict

import timm
import torch
import torch.nn.functional as F
from torch import nn

try:
    from bpho.errors import BphoError
    from bpho.models.layers import bilinear_base, icnr, residual_for, set_padding
    from bpho.models.unet_config import MODES, PADDINGS, UNetConfig
except ImportError:  # an exported package's architecture file: export.py writes those above this
    BphoError = ValueError  # type: ignore[misc,assignment]


def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _Up(nn.Module):
    def __init__(self, cin: int, cskip: int, cout: int):
        super().__init__()
        self.block = nn.Sequential(_conv(cin + cskip, cout), _conv(cout, cout))

    def forward(self, x, skip):
        x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
        return self.block(torch.cat([x, skip], dim=1))


class UNet(nn.Module):
    """A U-Net on a timm encoder: decoder with skip connections and a pixel-shuffle head, its output
    added to the bilinear upsampling of the centre frame."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        if config.mode not in MODES:
            raise BphoError(f"model mode {config.mode!r}: use 'pre' or 'lr'")
        if config.padding not in PADDINGS:
            raise BphoError(f"padding {config.padding!r}: use one of {', '.join(PADDINGS)}")
        if config.depth is not None and config.depth < 1:
            raise BphoError(f"depth {config.depth}: use 1 or more encoder stages")
        if not timm.is_model(config.encoder):
            raise BphoError(f"encoder {config.encoder!r} is not a timm model; e.g. resnet18, resnet34, efficientnet_b0")
        self.config = config
        self.residual = residual_for(config.residual, config.scale)
        try:
            stages: Dict[str, Any] = {"out_indices": tuple(range(config.depth))} if config.depth else {}
            encoder: Any = timm.create_model(config.encoder, features_only=True, pretrained=False,
                                             in_chans=config.frames, **stages)
        except (RuntimeError, TypeError, ValueError, IndexError) as exc:
            raise BphoError(f"encoder {config.encoder!r} cannot give {config.depth or 'all'} feature stages for a "
                            f"U-Net ({type(exc).__name__}: {exc})") from None
        self.encoder = encoder
        if config.encoder_weights:
            _load_encoder_weights(encoder, config.encoder_weights)
        chans = encoder.feature_info.channels()
        self.stride = max(encoder.feature_info.reduction())
        widths = list(config.decoder_widths)[: len(chans)]
        widths += [widths[-1]] * (len(chans) - len(widths))
        ups, cin = [], chans[-1]
        for cskip, cout in zip(list(reversed(chans[:-1])) + [config.frames], widths):
            ups.append(_Up(cin, cskip, cout))
            cin = cout
        self.decoder = nn.ModuleList(ups)
        if config.mode == "lr" and config.scale > 1:
            hr_ch = config.head_channels or cin
            up = nn.Conv2d(cin, hr_ch * config.scale**2, 3, padding=1)
            act = nn.ReLU(inplace=True) if config.head_relu else nn.Identity()
            self.head: nn.Module = nn.Sequential(up, nn.PixelShuffle(config.scale), act,
                                                 nn.Conv2d(hr_ch, 1, 3, padding=1))
            icnr(up, config.scale)
        else:
            self.head = nn.Conv2d(cin, 1, 3, padding=1)
        set_padding(self, config.padding)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the encoder's activations in the backward pass (less memory, more time)."""
        self.encoder.set_grad_checkpointing(enable)
        # a recomputed segment must find its saved inputs unchanged: in-place ReLUs broke
        # backward on CUDA (torch 2.11, timm 1.0: "modified by an inplace operation")
        for m in self.modules():
            if isinstance(m, nn.ReLU):
                m.inplace = not enable

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        """(N, frames, h, w) normalised LR -> (N, 1, h*scale, w*scale) normalised HR."""
        s = self.config.scale
        x = F.interpolate(lr, scale_factor=s, mode="bilinear", align_corners=False) \
            if self.config.mode == "pre" and s > 1 else lr
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.stride, (-w) % self.stride
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        feats = self.encoder(x)
        y = feats[-1]
        for up, skip in zip(self.decoder, list(reversed(feats[:-1])) + [x]):
            y = up(y, skip)
        out = self.head(y)
        grow = s if self.config.mode == "lr" else 1
        out = out[..., : h * grow, : w * grow]
        return out + bilinear_base(lr, s) if self.residual else out


def _load_encoder_weights(encoder: nn.Module, path: str) -> None:
    """Local weights only (safetensors, or a tensor-only torch file); nothing is downloaded."""
    try:
        if str(path).endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as exc:
        raise BphoError(f"{path}: cannot load encoder weights ({exc})") from None
    missing, _ = encoder.load_state_dict(state, strict=False)
    if len(missing) == len(encoder.state_dict()):
        raise BphoError(f"{path}: no tensor of these weights matches the encoder")


def unet(**config) -> UNet:
    """The network from UNetConfig's fields as keywords (a BioImage Model Zoo package's callable)."""
    return UNet(UNetConfig.from_dict(config))

