"""Typed configuration of every stage: the choices (enums) and the defaults, each written once.

A config is checked when it is made (`__post_init__`), so the library trusts it inside. The
`bpho` command derives its flags from the fields (`add_fields`, `from_args`) and the
MLproject parameters are checked against them by a test: a default changed here changes
everywhere. Field metadata: ``help`` (shown by ``--help``), ``metavar``, ``append`` (a
repeatable flag), ``nargs`` (a tuple given as several values after one flag: ``--tile-sizes
64 128``; otherwise comma-separated), ``group`` (flags that exclude each other; ``required``
on a member: one of them must be given), ``positional`` (an argument, not a ``--flag``),
``choices`` (a function giving the allowed names, read when the parser is built: a registry
such as the degradations'), ``cli=False`` (not a flag).

One converter, `convert`, turns text or Python values into a field's type: for the flags,
for ``KEY=VALUE`` settings (`from_settings`: recipe overrides, degradation parameters) and
for configs made in Python (`_enums` in ``__post_init__``, recipe files included).

Example
-------
>>> TrainConfig(dataset="paired_001", loss="l1+ssim").loss is Loss.L1_SSIM
True
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from functools import partial
from typing import Any, Callable, Dict, Iterable, Literal, Optional, Tuple, Union, cast

from bpho.errors import BphoError
from bpho.models import ARCHITECTURES, ModelConfig, UNetConfig, architecture, model_config


class Loss(StrEnum):
    """The training loss."""

    L1 = "l1"
    MSE = "mse"
    L1_SSIM = "l1+ssim"


class Device(StrEnum):
    """Where the network runs (auto: CUDA when there is a GPU)."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class Transform(StrEnum):
    """How LR is registered onto HR."""

    TRANSLATION = "translation"
    SIMILARITY = "similarity"
    FLOW = "flow"
    AUTO = "auto"


def degradations(searched: bool = False) -> list:
    """Names of the registered degradations (bpho/degrade), in order; `searched`: only those a
    study searches (not those estimated from pairs)."""
    from bpho.degrade import DEGRADATIONS

    return [name for name, d in DEGRADATIONS.items() if not searched or d.search is not None]


PAIRED_RECIPE = "paired_001"  # the recipe of paired datasources, when none is named
MOVIE_RECIPE = "movie_001"  # and of movie ones
MODEL_URI_HELP = "runs:/ID/model, models:/NAME/VERSION or models:/NAME/latest"


class Pruner(StrEnum):
    """The Optuna pruner of a hyperparameter search."""

    MEDIAN = "median"
    HYPERBAND = "hyperband"
    NONE = "none"


class Precision(StrEnum):
    """Of the network at inference (blending is always float32)."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"


class Realism(StrEnum):
    """Demo data: ``hard`` adds effects outside every degradation model."""

    EASY = "easy"
    HARD = "hard"


class ImageFormat(StrEnum):
    """The file format `bpho predict` writes."""

    IMAGEJ = "imagej"
    OME_TIFF = "ome-tiff"
    OME_ZARR = "ome-zarr"


def _made(f: dataclasses.Field) -> Any:
    """A field's default made by its default_factory (the model field's architecture config)."""
    return cast(Callable[[], Any], f.default_factory)()


def choice(enum: Any, value, what: str) -> Enum:
    """`value` as a member of `enum`, or a one-line BphoError naming the choices."""
    try:
        return enum(value)
    except ValueError:
        raise BphoError(f"{what} {value!r}: use one of {', '.join(m.value for m in enum)}") from None


def _enums(cfg, what: str = "") -> None:
    """Normalise a frozen dataclass by its type hints (with `convert`): an enum, Literal or tuple
    field's value becomes a member / a checked value / a tuple of converted items, a model
    field's dict a registered architecture's config, a field with ``choices`` metadata is
    checked against them. `what` prefixes the error ("tune fit: precision 'x': use one of ...")."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        kind, value = _base(hints[f.name]), getattr(cfg, f.name)
        name = f"{what}: {f.name}" if what else f.name
        if value is None:
            continue
        if f.metadata.get("model"):
            object.__setattr__(cfg, f.name, model_config(value))
        elif "choices" in f.metadata:
            names = list(f.metadata["choices"]())
            if value not in names:
                raise BphoError(f"{name} {value!r}: use one of {', '.join(names)}")
        elif _is_enum(kind) or typing.get_origin(kind) in (tuple, Literal):
            object.__setattr__(cfg, f.name, convert(kind, value, name))


def _is_enum(kind) -> bool:
    return isinstance(kind, type) and issubclass(kind, Enum)


def _base(hint):
    """`X` of `Optional[X]`; the hint itself otherwise."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if typing.get_origin(hint) is typing.Union and len(args) == 1 else hint


TRUE, FALSE = ("true", "on", "yes", "1"), ("false", "off", "no", "0")
_NAMES = {int: "int (a whole number)", float: "float (a number)", bool: "bool (true or false)", str: "str"}


def convert(hint, value, what: str = "value"):
    """`value` as type `hint`: the one conversion of bpho's settings.

    Parameters
    ----------
    hint : type
        A config field's type: bool, int, float, str, an enum, a ``Literal``, ``Optional[X]``,
        ``Union[int, str]`` (the first that fits), ``Tuple[X, ...]`` or ``Tuple[X, X]``.
    value : object
        Text (a flag, a ``KEY=VALUE`` setting: ``"64,128"`` for a tuple, ``"none"`` or ``""``
        for an optional) or a Python value (a recipe file, a mapping).
    what : str
        Names the setting in the error.

    Returns
    -------
    object
        The value as `hint`: a whole number is accepted as a float; a fixed-length tuple given
        one value repeats it (``gauss_std=0.02`` is the range 0.02..0.02).

    Raises
    ------
    BphoError
        One line: the setting, the value and what it should be.
    """
    kind = _base(hint)
    text = isinstance(value, str)
    if kind is not hint and (value is None or (text and value.strip().lower() in ("", "none"))):
        return None
    origin = typing.get_origin(kind)
    if _is_enum(kind):
        return choice(kind, value, what)
    if origin is Literal:
        if value not in typing.get_args(kind):
            raise BphoError(f"{what} {value!r}: use one of {', '.join(map(str, typing.get_args(kind)))}")
        return value
    if origin is tuple:
        args = typing.get_args(kind)
        items = [v.strip() for v in value.split(",") if v.strip()] if text else list(value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(convert(args[0], v, what) for v in items)
        if len(items) == 1 and len(set(args)) == 1:
            items = items * len(args)
        if len(items) != len(args):
            raise BphoError(f"{what}={value}: {len(args)} comma-separated values")
        return tuple(convert(a, v, what) for a, v in zip(args, items))
    if origin is typing.Union:
        for a in typing.get_args(kind):
            try:
                return convert(a, value, what)
            except BphoError:
                pass
        names = " or ".join(_NAMES.get(a, str(a)) for a in typing.get_args(kind))
        raise BphoError(f"{what}={value}: not a valid {names}")
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if text and value.strip().lower() in TRUE + FALSE:
                return value.strip().lower() in TRUE
        elif kind is int and not isinstance(value, bool):
            if text:
                return int(value.strip())
            if float(value).is_integer():
                return int(value)
        elif kind is float and not isinstance(value, bool):
            return float(value.strip() if text else value)
        elif kind is str:
            return value if text else str(value)
        else:
            return kind(value)
    except (TypeError, ValueError):
        pass
    raise BphoError(f"{what}={value}: not a valid {_NAMES.get(kind, getattr(kind, '__name__', str(kind)))}")


def _parser(kind):
    """Argparse's ``type`` for flags of type `kind`: `convert`, its error as argparse's."""
    def parse(text: str):
        try:
            return convert(kind, text, "")
        except BphoError as exc:
            raise argparse.ArgumentTypeError(str(exc).lstrip("=")) from None

    parse.__name__ = getattr(kind, "__name__", "value")
    return parse


def from_settings(cls: type, settings: Union[Mapping[str, object], Iterable[str]], what: str = "--set", base=None):
    """A `cls` config from ``KEY=VALUE`` strings (`key_values`) or a {key: value} mapping.

    Each value is converted to its field's type (`convert`); an unknown key is refused in one
    line naming the valid ones; the fields not given keep `base`'s values (default: `cls`'s
    defaults). E.g. the recipe's ``--set`` overrides and a degradation's parameters.
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    items = settings if isinstance(settings, Mapping) else key_values(settings, what)
    changes = {}
    for key, value in items.items():
        if key not in names:
            raise BphoError(f"{what} {key}: not a setting; use KEY=VALUE with KEY one of {', '.join(names)}")
        changes[key] = convert(hints[key], value, f"{what} {key}")
    return dataclasses.replace(base, **changes) if base is not None else cls(**changes)


def _value_kw(kind) -> dict:
    """Argparse's type / choices for one value of type `kind`."""
    if _is_enum(kind):
        return {"choices": [m.value for m in kind]}
    if typing.get_origin(kind) is Literal:
        return {"choices": list(typing.get_args(kind))}
    if kind is bool:
        return {"type": _parser(bool), "metavar": "{off,on}"}
    return {"type": _parser(kind)}


MODEL_PREFIX = "model-"  # the flags of a model config's fields: --model-encoder, --model-blocks, ...
FROM_DATA = ("scale", "frames")  # model fields that the dataset sets, not the user


def model_flags() -> Dict[str, dict]:
    """The ``--model-*`` flags: every registered architecture's fields but FROM_DATA, by name,
    with their type, help and each architecture's default ({"kind", "help", "defaults"})."""
    out: Dict[str, dict] = {}
    for arch in ARCHITECTURES.values():
        hints = typing.get_type_hints(arch.config)
        for f in dataclasses.fields(arch.config):
            if f.name not in FROM_DATA:
                entry = out.setdefault(f.name, {"kind": _base(hints[f.name]), "help": arch.config.HELP.get(f.name, ""),
                                                "defaults": {}})
                entry["defaults"][arch.name] = f.default
    return out


def _add_model(parser: argparse.ArgumentParser, default) -> None:
    parser.add_argument("--arch", choices=list(ARCHITECTURES), default=None,
                        help=f"the network, by name (default {default.arch}); its settings are the --{MODEL_PREFIX}* "
                             "flags")
    for name, flag in model_flags().items():
        shown = "; ".join(f"{arch} {','.join(map(str, v)) if isinstance(v, tuple) else v}"
                          for arch, v in flag["defaults"].items())
        kind = flag["kind"]
        kw = {"type": _parser(kind), "metavar": "N,N,..."} if typing.get_origin(kind) is tuple else _value_kw(kind)
        kw.setdefault("metavar", kw.get("metavar") or (None if "choices" in kw else name.upper()))
        parser.add_argument(f"--{MODEL_PREFIX}{name.replace('_', '-')}", dest=f"model.{name}", default=None,
                            help=f"{flag['help']} (default: {shown})", **kw)


def _model_from_args(args: argparse.Namespace, default):
    """The model config the flags ask for: --arch's (default `default`'s) with the --model-* values."""
    arch = architecture(getattr(args, "arch", None) or default.arch)
    given = {k.split(".", 1)[1]: v for k, v in vars(args).items() if k.startswith("model.") and v is not None}
    names = [f.name for f in dataclasses.fields(arch.config) if f.name not in FROM_DATA]
    wrong = [k for k in given if k not in names]
    if wrong:
        raise BphoError(f"--{MODEL_PREFIX}{wrong[0].replace('_', '-')} is not a setting of architecture {arch.name} "
                        f"(its settings: {', '.join(names)})")
    base = default if default.arch == arch.name else arch.config()
    return dataclasses.replace(base, **{k: tuple(v) if isinstance(v, list) else v for k, v in given.items()})


def add_fields(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add a ``--flag`` per field of dataclass `cls` (but those with ``cli=False``); a model
    field (metadata ``model``) adds ``--arch`` and the ``--model-*`` flags.

    Every flag defaults to None, so an absent flag leaves the config's own default; the
    help shows that default. Fields without a default become required flags (or arguments:
    metadata ``positional``).
    """
    hints = typing.get_type_hints(cls)
    groups = {}
    for f in dataclasses.fields(cls):
        if not f.metadata.get("cli", True):
            continue
        if f.metadata.get("model"):
            _add_model(parser, _made(f))
            continue
        kind = _base(hints[f.name])
        default = None if f.default is dataclasses.MISSING else f.default
        joiner = " " if f.metadata.get("nargs") else ","
        shown = joiner.join(map(str, default)) if isinstance(default, tuple) else default
        text = f.metadata.get("help", "")
        if shown not in (None, "", False):
            text = f"{text} (default {shown})" if text else f"default {shown}"
        kw = {"help": text, "default": None}
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            kw["required"] = True
        if kind is bool:
            kw["action"] = "store_true"
        elif f.metadata.get("append"):
            kw["action"] = "append"
        elif f.metadata.get("nargs"):
            kw.update(nargs="+", **_value_kw(typing.get_args(kind)[0]))
        elif typing.get_origin(kind) is tuple:
            kw["type"] = _parser(kind)
        else:
            kw.update(_value_kw(kind))
        if "choices" in f.metadata:
            kw["choices"] = list(f.metadata["choices"]())
        if "metavar" in f.metadata:
            kw["metavar"] = f.metadata["metavar"]
        if f.metadata.get("positional"):
            parser.add_argument(f.name, **{k: v for k, v in kw.items() if k not in ("default", "required")})
            continue
        group = f.metadata.get("group")
        if group and group not in groups:
            groups[group] = parser.add_mutually_exclusive_group(required=any(
                g.metadata.get("required") for g in dataclasses.fields(cls) if g.metadata.get("group") == group))
        target = groups[group] if group else parser
        target.add_argument("--" + f.name.replace("_", "-"), **kw)


def from_args(cls: type, args: argparse.Namespace, **extra):
    """The config `cls` from parsed flags (absent flags keep the defaults) and `extra`."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in vars(args).items() if k in names and v is not None}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    for f in dataclasses.fields(cls):
        if f.metadata.get("model") and f.metadata.get("cli", True) and f.name not in extra:
            values[f.name] = _model_from_args(args, _made(f))
    return cls(**values, **extra)


def flag_defaults(cls: type) -> Dict[str, object]:
    """Each flag of `cls` as a parameter name (``tile_size``, ``arch``, ``model_encoder``) and its
    default (dataclasses.MISSING where it has none): what an MLproject entry point may declare."""
    out: Dict[str, object] = {}
    for f in dataclasses.fields(cls):
        if not f.metadata.get("cli", True):
            continue
        if f.metadata.get("model"):
            model = _made(f)
            out["arch"] = model.arch
            for name in model_flags():
                out[f"model_{name}"] = getattr(model, name, dataclasses.MISSING)
        else:
            out[f.name] = f.default
    return out


def model_field(help: str = "the network: an architecture's config (`--arch`, `--model-*` flags)"):
    """A config's `model` field: any registered architecture's config, default the U-Net's
    (a plain dict with ``arch`` is accepted and converted)."""
    return field(default_factory=UNetConfig, metadata={"model": True, "help": help})


@dataclass(frozen=True)
class InferenceConfig:
    """How a model runs on whole images: tiles with context, blended; the network's precision."""

    device: Device = Device.AUTO
    tile: Optional[int] = field(default=None, metadata={"help": "LR tile side in pixels (default 512 on a GPU, "
                                                                "128 on a CPU)"})
    overlap: int = field(default=16, metadata={"help": "LR pixels of overlap between tiles"})
    context: int = field(default=16, metadata={"help": "LR pixels of context around each tile, so the output hardly "
                                                       "depends on --tile"})
    batch: int = field(default=4, metadata={"help": "tiles per forward pass"})
    precision: Precision = field(default=Precision.FP32, metadata={"help": "of the network"})
    ensemble: bool = field(default=False, metadata={"help": "average each tile's predictions in its 8 flips and "
                                                            "90-degree rotations (8 times the compute)"})
    block: int = field(default=1024, metadata={"help": "LR pixels per side of the squares a large image is predicted "
                                                       "and written in: memory follows the block, not the image"})

    def __post_init__(self):
        _enums(self)


@dataclass(frozen=True)
class PredictConfig(InferenceConfig):
    """`bpho predict`: inference, and the file format written."""

    format: ImageFormat = field(default=ImageFormat.IMAGEJ, metadata={
        "help": "ImageJ hyperstack TIFF (Fiji), OME-TIFF (.ome.tif: OME-XML pixel sizes, axes, channels) or "
                "OME-Zarr (.ome.zarr: OME-NGFF 0.5, chunked, multiscale, for napari and large images)"})
    dask: Optional[str] = field(default=None, metadata={
        "help": "spread the blocks over Dask workers: local:N (N worker processes on this machine) or a scheduler "
                "address such as tcp://host:8786 (inputs and --out on a disk every worker sees)"})
    overwrite: bool = field(default=False, metadata={"help": "replace outputs that exist (default: refuse)"})
    channels: Optional[str] = field(default=None, metadata={
        "help": "which channels of a multi-channel file: all, or names / indices separated by commas (default: the "
                "channel the model was trained on, said on stderr)"})

    def __post_init__(self):
        super().__post_init__()
        if self.dask and self.dask.startswith("local:") and not self.dask[6:].isdigit():
            raise BphoError(f"--dask {self.dask}: write local:N with N a number of workers, or a scheduler address")


@dataclass(frozen=True)
class EvaluateConfig:
    """`bpho evaluate`: a model scored on whole held-out images of a dataset or a datasource."""

    model: str = field(metadata={"help": MODEL_URI_HELP})
    dataset: Optional[str] = field(default=None, metadata={
        "group": "where", "required": True,
        "help": "its test images when it has any (no choice has seen them), else its validation images (they chose "
                "the model's epoch; said so)"})
    datasource: Optional[str] = field(default=None, metadata={
        "group": "where", "help": "a paired datasource of full images never used in training"})
    transform: Transform = field(default=Transform.AUTO, metadata={
        "help": "how --datasource pairs are registered (auto: the simplest transform that leaves a small residual; "
                "a dataset was registered when it was built)"})
    split: Optional[Literal["test", "valid"]] = field(default=None, metadata={
        "help": "with --dataset: score its test images (held out by the recipe's test_fraction) or its validation "
                "images (those training chose the epoch on); default test when it has any"})
    out: Optional[str] = field(default=None, metadata={"help": "folder for evaluation.csv and the figures (default: a "
                                                             "temporary folder)"})
    device: Device = Device.AUTO
    ensemble: bool = field(default=InferenceConfig.ensemble,
                           metadata=InferenceConfig.__dataclass_fields__["ensemble"].metadata)
    denoiser: Tuple[str, ...] = field(default=(), metadata={
        "append": True, "metavar": "NAME",
        "help": "scale-1 models: compare with this denoiser (gaussian, nl_means, wavelet, bm3d; repeatable; default: "
                "all, bm3d where installed, each with parameters chosen on the validation images)"})

    def __post_init__(self):
        _enums(self, "evaluate")
        if (self.dataset is None) == (self.datasource is None):
            raise BphoError("evaluate: give one of --dataset or --datasource")


@dataclass(frozen=True)
class ExportConfig:
    """`bpho export`: a model as a BioImage Model Zoo package."""

    model: str = field(metadata={"help": MODEL_URI_HELP})
    out: str = field(metadata={"help": "NAME.zip (the package) or a folder"})
    format: Literal["bioimageio"] = field(default="bioimageio", metadata={"help": "bioimage.io model spec 0.5"})
    sample: Optional[str] = field(default=None, metadata={"help": "an LR image for the test tensors and cover "
                                                                  "(default: the model's dataset)"})
    name: Optional[str] = field(default=None, metadata={"help": "package name (default: the registered model name)"})
    author: Tuple[str, ...] = field(default=(), metadata={
        "append": True, "help": "an author (repeat; default: who trained the model)"})
    license: str = field(default="CC-BY-4.0", metadata={"help": "SPDX license id"})
    force: bool = field(default=False, metadata={"help": "replace --out if it exists"})
    no_log: bool = field(default=False, metadata={"help": "do not log the package on the model's training run"})

    def __post_init__(self):
        _enums(self, "export")


def mlproject_argv(cls: type, argv: list, switches: Tuple[str, ...] = ()) -> list:
    """The `bpho` flags for an MLproject entry point's ``--name value`` pairs (every -P is passed).

    An empty value means "not given" (the config's default); a bool field (or a flag in
    `switches`) is a switch, on for "true"; a repeatable field takes space-separated items.
    """
    hints = typing.get_type_hints(cls)
    kinds = {"--" + f.name.replace("_", "-"): (_base(hints[f.name]), f.metadata.get("append"))
             for f in dataclasses.fields(cls)}
    out = []
    for key, value in zip(argv[0::2], argv[1::2]):
        key = key.replace("_", "-")  # MLflow appends a -P not in MLproject as --its_name
        kind, append = kinds.get(key, (bool if key in switches else str, False))
        if kind is bool:
            out += [key] if value.lower() == "true" else []
        elif append:
            out += [a for item in value.split() for a in (key, item)]
        elif value != "":
            out += [key, value]
    return out


@dataclass(frozen=True)
class TrainConfig:
    """What `bpho train` does; also what tuning trials and reports train with."""

    dataset: str = field(metadata={"help": "the dataset whose train tiles are learned and valid images scored"})
    tile_size: Optional[int] = field(default=None, metadata={"help": "HR tile size (default: the dataset's smallest)"})
    batch_size: int = 8
    epochs: int = field(default=10, metadata={"group": "how_long"})
    minutes: Optional[float] = field(default=None, metadata={
        "group": "how_long",
        "help": "a wall-clock budget instead of epochs: the epochs are planned from the pace of the first batches"})
    model: ModelConfig = model_field()
    frames: Optional[int] = field(default=None, metadata={"help": "LR frames in (checked against the dataset)"})
    loss: Loss = Loss.L1
    lr: float = field(default=2e-3, metadata={"help": "peak learning rate of the one-cycle schedule"})
    weight_decay: float = 1e-4
    amp: bool = field(default=False, metadata={"help": "mixed precision (bf16, or fp16 with scaling)"})
    channels_last: bool = False
    grad_checkpointing: bool = field(default=False, metadata={"help": "recompute activations in the backward pass "
                                                                     "(encoder stages, residual groups)"})
    accumulate: int = field(default=1, metadata={"help": "gradient accumulation steps (effective batch = batch x "
                                                         "steps)"})
    self_supervised: bool = field(default=False, metadata={
        "help": "Noise2Void: learn to denoise from the noisy tiles alone (blind-spot masking; scale-1 datasets; "
                "the clean images are used only to validate)"})
    seed: int = 0
    device: Device = Device.AUTO
    panel_every: int = field(default=1, metadata={"help": "log an LR|bicubic|model|HR panel every N epochs"})
    valid_share: float = field(default=0.25, metadata={
        "help": "the most of the training time that whole-image validation may take: an epoch is validated only "
                "while validating keeps within this share (the last epoch always is); 1: every epoch"})
    mix: Tuple[str, ...] = field(default=(), metadata={
        "append": True, "metavar": "DATASET[=W]",
        "help": "also train on another dataset's tiles (e.g. synthetic pairs), W of them per real tile each epoch "
                "(default 1); repeatable. Validation stays on --dataset's held-out images"})
    model_name: Optional[str] = field(default=None, metadata={"help": "registered model name (default "
                                                                      "bpho-<dataset>)"})

    def __post_init__(self):
        _enums(self)
        problems = []
        for name in ("batch_size", "epochs", "accumulate", "panel_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} (>= 1)")
        if self.minutes is not None and self.minutes <= 0:
            problems.append(f"minutes={self.minutes} (> 0)")
        if self.lr <= 0:
            problems.append(f"lr={self.lr} (> 0)")
        if not 0 < self.valid_share <= 1:
            problems.append(f"valid_share={self.valid_share} (> 0 and <= 1)")
        if self.self_supervised and self.loss == Loss.L1_SSIM:
            problems.append("loss l1+ssim with self_supervised (its loss is on scattered pixels: use l1 or mse)")
        if self.self_supervised and getattr(self.model, "residual", None):
            problems.append("model residual on with self_supervised (the blind spot needs a network that predicts "
                            "the image: leave --model-residual out)")
        for item in self.mix:
            try:
                name, weight = mix_item(item)
                ok = weight > 0
            except (ValueError, BphoError):
                ok = False
            if not ok:
                problems.append(f"mix {item!r} (DATASET or DATASET=WEIGHT, weight > 0)")
        if problems:
            raise BphoError(f"train: invalid {'; '.join(problems)}")


def key_value(item: str, what: str = "--set", value_required: bool = True) -> Tuple[str, str]:
    """``"KEY=VALUE"`` -> (KEY, VALUE), stripped; the one parser of bpho's KEY=VALUE options."""
    key, sep, value = item.partition("=")
    if not key.strip() or (value_required and not sep):
        raise BphoError(f"{what} {item!r}: use KEY=VALUE")
    return key.strip(), value.strip()


def key_values(items: Iterable[str], what: str = "--set") -> Dict[str, str]:
    """``["a=1", "b=x"]`` -> {"a": "1", "b": "x"}."""
    return dict(key_value(item, what) for item in items)


def mix_item(item: str) -> Tuple[str, float]:
    """``"synthetic_001=0.5"`` -> ("synthetic_001", 0.5); no ``=W`` means weight 1."""
    name, weight = key_value(item, "--mix", value_required=False)
    return name, float(weight) if weight else 1.0


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo data (`bpho demo-data`). HR sizes are in HR pixels, multiples of `scale`."""

    seed: int = 0
    scale: int = field(default=4, metadata={"help": "LR pixel size / HR pixel size"})
    paired_fields: int = 8
    paired_size: int = field(default=512, metadata={"help": "HR side of a paired field in pixels"})
    movies: int = 2
    movie_frames: int = 12
    movie_size: int = 256
    hr_only_fields: int = 6
    denoise_fields: int = 6
    denoise_size: int = 256
    max_shift_hr_px: float = field(default=2.5, metadata={"cli": False})
    realism: Realism = field(default=Realism.EASY, metadata={
        "help": "hard: the sample turns, grows and deforms between acquisitions; aberrated LR PSF, bleaching, "
                "scan-line jitter, saturation, hot pixels (truth in demo_truth.json, truth/paired_map/)"})

    def __post_init__(self):
        _enums(self)
        if self.movie_frames < 1 or self.scale < 1:
            raise BphoError("demo-data: movie_frames and scale must be >= 1")
        for name in ("paired_size", "movie_size"):
            size = getattr(self, name)
            if size % self.scale or size < 8 * self.scale:
                raise BphoError(f"demo-data: {name}={size} must be a multiple of scale={self.scale} and "
                                f">= {8 * self.scale}")


# --- datasets


def _check_settings(items: Tuple[str, ...], what: str = "--set") -> None:
    for item in items:
        key_value(item, what)


@dataclass(frozen=True)
class DatasetMakeConfig:
    """`bpho dataset make`: a dataset built from a datasource by a recipe."""

    recipe: str = field(metadata={"positional": True, "help": "a recipe name (bpho/recipes/NAME.py) or a .py file"})
    datasource: Optional[str] = field(default=None, metadata={"help": "use this datasource instead of the recipe's "
                                                                      "default"})
    set: Tuple[str, ...] = field(default=(), metadata={"append": True, "metavar": "KEY=VALUE",
                                                       "help": "override a recipe field (repeatable)"})
    name: Optional[str] = field(default=None, metadata={"help": "dataset name (default: the recipe's name)"})
    force: bool = field(default=False, metadata={"help": "rebuild (replace) an existing dataset of that name"})
    workers: Optional[int] = field(default=None, metadata={"help": "processes reading and registering images "
                                                                   "(default: one per core)"})
    no_png: bool = field(default=False, metadata={"help": "skip the QC and preview figures (faster; same digest)"})

    def __post_init__(self):
        _enums(self, "dataset make")
        _check_settings(self.set)


@dataclass(frozen=True)
class SynthesizeConfig:
    """`bpho synthesize`: a dataset of synthetic pairs, LR made from HR by a registered degradation."""

    datasource: str = field(metadata={"help": "hr datasource, or a paired/movie one (its HR side)"})
    degradation: str = field(metadata={"choices": degradations, "help": "the degradation model (bpho/degrade)"})
    dataset: str = field(metadata={"help": "name of the dataset to build"})
    set: Tuple[str, ...] = field(default=(), metadata={"append": True, "metavar": "KEY=VALUE",
                                                       "help": "a degradation parameter, or a recipe field "
                                                               "(repeatable)"})
    fit_on: Optional[str] = field(default=None, metadata={"help": "a degradation estimated from pairs (fitted): the "
                                                                  "paired datasource to fit on (its training pairs)"})
    recipe: Optional[str] = field(default=None, metadata={"help": f"default {PAIRED_RECIPE} ({MOVIE_RECIPE} for a "
                                                                  "movie datasource)"})
    force: bool = False

    def __post_init__(self):
        _enums(self, "synthesize")
        _check_settings(self.set)


# --- tune

MIN_BATCH = 2  # batch norm needs two samples to train


class TrainPrecision(StrEnum):
    """Of training steps: float32, or mixed precision (``TrainConfig.amp``)."""

    FP32 = "fp32"
    AMP = "amp"


@dataclass(frozen=True)
class FitConfig:
    """What `bpho tune fit` measures: per tile size, the largest batch that trains (forward,
    backward, optimizer step) within a memory budget, for one model."""

    dataset: str = field(metadata={"help": "the dataset whose training tiles are stepped on"})
    tile_sizes: Optional[Tuple[int, ...]] = field(default=None, metadata={"nargs": "+",
                                                                          "help": "default: the dataset's"})
    memory_gb: Optional[float] = field(default=None, metadata={"help": "budget (default: the device's free memory)"})
    model: ModelConfig = model_field()
    precision: Optional[Tuple[TrainPrecision, ...]] = field(default=None, metadata={
        "nargs": "+", "help": "default: fp32 amp on CUDA, fp32 on CPU"})
    checkpointing: Optional[Tuple[bool, ...]] = field(default=None, metadata={
        "nargs": "+", "help": "default: off on on CUDA, off on CPU"})
    max_batch: int = 256
    refine: bool = field(default=False, metadata={"help": "bisect to the exact largest batch (default: powers of 2)"})
    device: Device = Device.AUTO
    steps: int = field(default=2, metadata={"cli": False, "help": "timed steps per attempt, after a first one"})

    def __post_init__(self):
        _enums(self, "tune fit")
        if self.max_batch < MIN_BATCH:
            raise BphoError(f"tune fit: --max-batch {self.max_batch} (>= {MIN_BATCH})")


@dataclass(frozen=True)
class SearchSpace:
    """What the trials of a hyperparameter study choose from."""

    choices: Tuple[str, ...] = field(default=(), metadata={
        "append": True, "metavar": "FIELD=A,B",
        "help": "the values a model setting is searched over (default: the architecture's SEARCH, e.g. unet "
                "encoder=resnet18,resnet34 mode=lr,pre, but settings fixed with --model-*); FIELD=A alone fixes "
                "it; repeatable"})
    losses: Tuple[Loss, ...] = field(default=tuple(Loss), metadata={"nargs": "+"})
    tile_sizes: Optional[Tuple[int, ...]] = field(default=None, metadata={"nargs": "+",
                                                                          "help": "default: the dataset's"})
    lr_min: float = 1e-4
    lr_max: float = 3e-3
    max_batch: int = field(default=16, metadata={"help": "batch cap where no fit table exists"})
    amp: bool = False

    def __post_init__(self):
        _enums(self, "tune hparams")
        for item in self.choices:
            key_value(item, "--choices")

    def searched(self, model) -> Dict[str, tuple]:
        """What the trials choose among, per field of `model`'s architecture: its SEARCH but the
        settings `model` changed from the architecture's defaults (fixed with ``--model-*``), with
        `choices` over it (each value converted to the field's type)."""
        hints = typing.get_type_hints(type(model))
        names = [f.name for f in dataclasses.fields(model) if f.name not in FROM_DATA]
        default = type(model)()
        out = {k: v for k, v in type(model).SEARCH.items() if getattr(model, k) == getattr(default, k)}
        for key, text in key_values(self.choices, "--choices").items():
            if key not in names:
                raise BphoError(f"tune hparams: --choices {key}: not a setting of architecture {model.arch} (its "
                                f"settings: {', '.join(names)})")
            kind = _base(hints[key])
            item = str if typing.get_origin(kind) is tuple else kind
            out[key] = convert(Tuple[item, ...], text, f"tune hparams: --choices {key}")
        return out

@dataclass(frozen=True)
class HparamsConfig:
    """What `bpho tune hparams` runs: an Optuna study maximising the validation PSNR gain over
    bicubic, which workers on several machines can share through one RDB `storage`."""

    dataset: str = field(metadata={"help": "the dataset trials train on and are scored on"})
    trials: int = field(default=20, metadata={"help": "finished trials the study should hold (all workers)"})
    epochs: int = field(default=5, metadata={"help": "epochs per trial"})
    storage: Optional[str] = field(default=None, metadata={
        "help": "Optuna RDB URL shared by workers, e.g. postgresql://user@host/db (default: SQLite under "
                "BPHO_ROOT/tune)"})
    study: Optional[str] = field(default=None, metadata={
        "help": "study name to create, resume or join (default hparams-<dataset>)"})
    pruner: Pruner = Pruner.MEDIAN
    seed: Optional[int] = None
    timeout: Optional[float] = field(default=None, metadata={"help": "seconds this worker runs at most"})
    device: Device = Device.AUTO
    model: ModelConfig = model_field("the network's fixed settings; the space searches its architecture's SEARCH")
    space: SearchSpace = field(default_factory=SearchSpace, metadata={"cli": False})

    def __post_init__(self):
        _enums(self)
        if self.trials < 1 or self.epochs < 1:
            raise BphoError(f"tune hparams: --trials {self.trials} and --epochs {self.epochs} must be >= 1")


@dataclass(frozen=True)
class DegradationStudyConfig:
    """What `bpho tune degradation` searches: the parameters of a degradation whose synthetic LR
    is closest to the real LR of a paired datasource's training pairs."""

    datasource: str = field(metadata={"help": "a paired datasource (its training pairs are compared)"})
    degradation: str = field(metadata={"choices": partial(degradations, searched=True),
                                       "help": "a degradation with a search space (one estimated from pairs, "
                                               "such as fitted, is not searched)"})
    trials: int = field(default=100, metadata={"help": "trials to add to the study (demo: about 15 s per 100)"})
    max_pairs: Optional[int] = field(default=4, metadata={"help": "pairs compared per trial"})
    storage: Optional[str] = field(default=None, metadata={"help": "Optuna RDB URL (default: SQLite under "
                                                                   "BPHO_ROOT/tune)"})
    study: Optional[str] = field(default=None, metadata={"help": "default degradation-<degradation>-<datasource>"})
    seed: Optional[int] = field(default=0, metadata={"cli": False})
    recipe: str = field(default=PAIRED_RECIPE, metadata={"cli": False, "help": "registers the pairs"})
    recipe_settings: Tuple[str, ...] = field(default=(), metadata={"cli": False})

    def __post_init__(self):
        _enums(self, "tune degradation")


@dataclass(frozen=True)
class DegradationReportConfig:
    """What `bpho tune degradation-report` compares: one model trained on the real pairs of a
    paired datasource and one on pairs synthesized from its HR by each degradation."""

    datasource: str = field(metadata={"help": "a paired datasource"})
    epochs: int = 10
    trials: int = field(default=100, metadata={"help": "study trials per searched degradation (classic, physical; "
                                                       "0: their default parameters)"})
    tile_size: Optional[int] = field(default=None, metadata={"help": "HR tile size (default: the dataset's smallest)"})
    batch_size: Optional[int] = field(default=None, metadata={"help": f"default {TrainConfig.batch_size}"})
    model: ModelConfig = model_field()
    recipe_settings: Tuple[str, ...] = field(default=(), metadata={"cli": False,
                                                                   "help": "recipe fields for all four datasets"})
    out: Optional[str] = field(default=None, metadata={"help": "folder for the table and figure"})
    recipe: str = field(default=PAIRED_RECIPE, metadata={"cli": False})
    prefix: str = field(default="synth-report", metadata={"cli": False, "help": "of the datasets' names"})

    def __post_init__(self):
        _enums(self)

    def train_settings(self) -> dict:
        """The TrainConfig fields given here; the others keep TrainConfig's defaults."""
        return {"model": self.model, **({"batch_size": self.batch_size} if self.batch_size is not None else {})}


# --- the environment: every variable bpho reads is read here -------------------------------------------------

import os  # noqa: E402  (this block was appended; the import can join the others at the top)


def env_root() -> str:
    """``$BPHO_ROOT``: the bpho data folder (default ``bpho-data`` in the working folder)."""
    return os.environ.get("BPHO_ROOT", "bpho-data")


def env_previews() -> bool:
    """``$BPHO_PREVIEWS``: ``off`` (or 0, false, no) keeps pictures of the data off the tracking server."""
    return os.environ.get("BPHO_PREVIEWS", "on").strip().lower() not in ("off", "0", "false", "no")


def env_tracking_wait() -> float:
    """``$BPHO_TRACKING_WAIT``: seconds training waits for an absent tracking server (default 600)."""
    return float(os.environ.get("BPHO_TRACKING_WAIT", "600"))


def env_tracking_uri() -> Optional[str]:
    """``$MLFLOW_TRACKING_URI``: the team's tracking server (None when unset or empty: the embedded store)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or None


def env_run_id() -> Optional[str]:
    """``$MLFLOW_RUN_ID``: the run ``mlflow run`` made for this process (None when unset or empty)."""
    return os.environ.get("MLFLOW_RUN_ID") or None


def env_unset(names: Iterable[str]) -> Tuple[str, ...]:
    """Which of the variables `names` are not set."""
    return tuple(name for name in names if name not in os.environ)


def env_admin_password() -> str:
    """``$BPHO_ADMIN_PASSWORD``: the tracking server's admin password for ``bpho server --auth`` ('' when unset)."""
    return os.environ.get("BPHO_ADMIN_PASSWORD", "")


def env_torchrun() -> Tuple[int, int, bool]:
    """The ``$WORLD_SIZE`` (default 1) and ``$LOCAL_RANK`` (default 0) torchrun sets, and whether this
    process runs under torchrun (``$TORCHELASTIC_RUN_ID`` is set, even for one process)."""
    return (int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0")),
            "TORCHELASTIC_RUN_ID" in os.environ)
