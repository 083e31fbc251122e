"""Networks, built by name from a plain config dict: unet.py (the network, its registry), unet_config.py."""

from pathlib import Path


def architecture_source() -> str:
    """unet_config.py then unet.py: one file that builds the network with torch and timm alone
    (the architecture file of an exported BioImage Model Zoo package)."""
    here = Path(__file__).parent
    return (here / "unet_config.py").read_text() + "\n\n" + (here / "unet.py").read_text()
