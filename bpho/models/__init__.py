"""Networks, built by name: the registry of architectures.

An architecture is a torch-free config dataclass (``<name>_config.py``: its settings, saved
beside the weights and offered as ``--model-*`` flags; ``arch`` names it) and a network module
(``<name>.py``) whose callable builds the network from the config's fields as keywords. Adding
one: those two files and one `register` line at the end of this module. `build_model`,
`load_model` (the saved config's ``arch``), `bpho export` (the architecture file) and `bpho
tune hparams` (the config's ``SEARCH`` choices) all go through `ARCHITECTURES`.

Example
-------
>>> model_config({"arch": "rcan", "blocks": 2}).blocks
2
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, Type, Union

from bpho.errors import BphoError
from bpho.models.rcan_config import RCANConfig
from bpho.models.unet_config import UNetConfig

ModelConfig = Union[UNetConfig, RCANConfig]  # any registered architecture's config
DEFAULT_ARCH = "unet"  # what a model folder that names no architecture (bpho <= 0.2) holds


@dataclass(frozen=True)
class Architecture:
    """A network bpho can train: its name, its config class and the callable that builds it."""

    name: str
    config: Type[Any]  # its torch-free frozen dataclass (from_dict, to_dict, label, SEARCH, HELP)
    network: str  # "module:callable" building the network from the config's fields as keywords

    def build(self, cfg):
        """The network for config `cfg` (the config's fields as keywords)."""
        module, call = self.network.split(":")
        return getattr(importlib.import_module(module), call)(**dataclasses.asdict(cfg))

    def source(self) -> str:
        """One file that builds the network with torch (and timm) alone: the shared layers, the
        config, the network (an exported BioImage Model Zoo package's architecture file)."""
        files = [Path(__file__).parent / "layers.py", _file(sys.modules[self.config.__module__]),
                 _file(importlib.import_module(self.network.split(":")[0]))]
        return "\n\n".join(f.read_text() for f in dict.fromkeys(files))  # a config beside its network: once


def _file(module: ModuleType) -> Path:
    if module.__file__ is None:
        raise RuntimeError(f"module {module.__name__} has no source file")
    return Path(module.__file__)


ARCHITECTURES: Dict[str, Architecture] = {}


def register(arch: Architecture) -> Architecture:
    """Add `arch` to the architectures `architecture` and `build_model` know; returns it."""
    ARCHITECTURES[arch.name] = arch
    return arch


def architecture(name: str) -> Architecture:
    """The registered architecture `name`; a one-line BphoError naming the others."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise BphoError(f"architecture {name!r}: use one of {', '.join(ARCHITECTURES)}") from None


def model_config(value: Union[dict, "ModelConfig"]):
    """A registered architecture's config from a plain dict (``arch`` names it; default unet)
    or a config (returned as it is)."""
    if not isinstance(value, dict):
        architecture(value.arch)
        return value
    return architecture(value.get("arch") or DEFAULT_ARCH).config.from_dict(value)


def build_model(value):
    """The network from a plain config dict (saved beside the weights) or a config."""
    cfg = model_config(value)
    return architecture(cfg.arch).build(cfg)


register(Architecture("unet", UNetConfig, "bpho.models.unet:unet"))
register(Architecture("rcan", RCANConfig, "bpho.models.rcan:rcan"))
