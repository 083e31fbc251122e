"""Networks, built by name from a plain config dict."""

from bpho.models.unet import MODELS, UNet, UNetConfig, build_model  # noqa: F401
