"""Layers the networks share (an exported package's architecture file holds this module first)."""

import torch
from torch import nn


def icnr(conv: nn.Conv2d, scale: int) -> None:
    """ICNR initialisation (Aitken et al. 2017) of the convolution before a pixel shuffle: the
    `scale`**2 sub-pixel filters of each output channel start equal, so the untrained shuffle
    is a nearest-neighbour upsampling and no checkerboard is built in."""
    with torch.no_grad():
        conv.weight.copy_(conv.weight[:: scale**2].repeat_interleave(scale**2, dim=0))  # PyTorch's init, shared
        if conv.bias is not None:
            conv.bias.copy_(conv.bias[:: scale**2].repeat_interleave(scale**2))


def set_padding(net: nn.Module, padding: str) -> None:
    """Every padded convolution of `net` pads with `padding` (replicate, reflect or zeros):
    replicate keeps a tile's border from looking like an image border."""
    if padding != "zeros":
        for m in net.modules():
            if isinstance(m, nn.Conv2d) and not isinstance(m.padding, str) and max(m.padding) > 0:
                m.padding_mode = padding  # type: ignore[assignment]  # one of the configs' PADDINGS


def bilinear_base(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """The bilinear upsampling of the centre frame of (N, frames, h, w): what the networks add
    their residual to."""
    centre = lr[:, lr.shape[1] // 2: lr.shape[1] // 2 + 1]
    return nn.functional.interpolate(centre, scale_factor=scale, mode="bilinear", align_corners=False) \
        if scale > 1 else centre


def residual_for(residual, scale: int) -> bool:
    """Whether a network adds its output to the bilinear base: `residual` when set, else on for
    super-resolution and off for denoising (scale 1), where the noisy input is a poor start: a
    network predicting the image directly learnt faster on the demo's denoising data (README)."""
    return bool(residual) if residual is not None else scale > 1


def start_at_base(net: nn.Module) -> None:
    """Zero the last convolution of `net.head`: the untrained network then returns its bilinear
    base exactly and training learns the residual from zero (a random last layer adds noise the
    first epochs spend unlearning)."""
    head = net.get_submodule("head")
    last = [m for m in head.modules() if isinstance(m, nn.Conv2d)][-1]
    with torch.no_grad():
        last.weight.zero_()
        if last.bias is not None:
            last.bias.zero_()
