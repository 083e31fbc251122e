"""Which channels of a file a model predicts, and whether the file's pixel size is the one it learnt on.

A model records what it was trained on in its meta (``bpho_model.json``): ``input`` =
``{"channel": 1, "channel_name": "GFP", "pixel_size_um": [0.08, 0.08]}`` (the dataset
manifest's record, see `bpho.datasets.builder`; a model of bpho before this has no ``input``,
one trained on a dataset built before this has None for the name and pixel size). These
pure functions turn that, the file's metadata and ``bpho predict``'s ``--model`` and
``--channels`` values into a plan and one-line messages; `bpho.predict` carries them out.

The output holds only the predicted channels, in the file's order, each under its file name
(`ChannelPlan.names`); z planes are predicted one by one whatever the channels.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from bpho.errors import BphoError

PIXEL_TOLERANCE = 0.10  # a relative difference of the LR pixel size above this is warned about


class ChannelPlan(NamedTuple):
    """What `plan_channels` decided.

    channels: (file channel index, model key) per output channel, in file order; the key is
        the `models` key whose model predicts it (None: the single ``--model URI``).
    names: the output channels' names (the file's, None where it names none), in the same order.
    message: one line saying which channels are predicted and why (None for a single-channel file).
    """

    channels: List[Tuple[int, Optional[str]]]
    names: List[Optional[str]]
    message: Optional[str]


def model_input(manifest: dict) -> dict:
    """What a model trained on a dataset records of its input (its meta's ``input``).

    The dataset manifest's ``input`` record as it is; for a dataset built before manifests
    recorded it, the recipe's channel with None for its name and the pixel size (no error).
    """
    return manifest.get("input") or {"channel": manifest["parameters"].get("channel"), "channel_name": None,
                                     "pixel_size_um": None}


def parse_model_specs(values: Sequence[str]) -> Dict[Optional[str], str]:
    """The ``--model`` values: one plain URI, or ``CHANNEL=URI`` for each channel.

    A value is ``CHANNEL=URI`` when it holds a ``=`` and the text before the first one has no
    path separator (a channel name or index); model URIs (``runs:/ID/model``,
    ``models:/NAME/1``, ``models:/NAME@alias``) and paths have a ``/`` before any ``=``. A
    relative path with ``=`` in its first component is written ``./path``.

    Parameters
    ----------
    values : sequence of str
        The ``--model`` values as given.

    Returns
    -------
    dict
        ``{None: URI}`` for a plain URI, else ``{CHANNEL: URI}`` (CHANNEL as written: a name or
        an index; `plan_channels` resolves it against the file).

    Raises
    ------
    BphoError
        One line for an empty channel or URI, two plain URIs, a plain URI beside per-channel
        ones, or a channel given twice.
    """
    out: Dict[Optional[str], str] = {}
    for value in values:
        head, sep, tail = value.partition("=")
        channel: Optional[str] = None
        uri = value.strip()
        if sep and "/" not in head and "\\" not in head:
            channel, uri = head.strip(), tail.strip()
            if not channel or not uri:
                raise BphoError(f"--model {value!r}: give CHANNEL=URI with both parts (e.g. GFP=models:/gfp/1), "
                                "or a plain URI")
        if not uri:
            raise BphoError("--model: an empty URI; give runs:/ID/model, models:/NAME/VERSION or a folder")
        if channel in out and channel is None:
            raise BphoError(f"--model given twice without a channel ({out[None]} and {uri}); with several models "
                            "name the channel of each (--model CHANNEL=URI)")
        if channel in out:
            raise BphoError(f"--model: channel {channel!r} is given twice ({out[channel]} and {uri}); give one model "
                            "per channel")
        out[channel] = uri
    if None in out and len(out) > 1:
        others = ", ".join(f"{k}={v}" for k, v in out.items() if k is not None)
        raise BphoError(f"--model {out[None]} beside {others}: with several models name the channel of each "
                        "(--model CHANNEL=URI)")
    return out


def describe_channels(names: Sequence[Optional[str]], n_channels: int) -> str:
    """The file's channels as one phrase: ``0 'DAPI', 1 'GFP', 2 (unnamed)``."""
    return ", ".join(_label(i, _name(names, i)) for i in range(n_channels))


def plan_channels(image_channel_names: Sequence[Optional[str]], n_channels: int,
                  models: Mapping[Optional[str], dict], spec: Optional[str] = None,
                  source: str = "the input") -> ChannelPlan:
    """Which channels of a file are predicted, and by which model.

    Rules:

    - one model (key None) and no `spec`: the channel the model was trained on (its meta's
      ``input``), by name when both the file and the model name it, else by index; a file
      with one channel is predicted whatever its name; a model that records no channel
      (trained by bpho before this) predicts every channel, as bpho did then;
    - one model and `spec` ``"all"`` or comma-separated names / indices: those channels;
    - models keyed by channel (``--model CHANNEL=URI``): each named channel with its model,
      into one output; channels without a model are left out (the message says which).
      `spec` beside them is an error.

    A selector is a channel name of the file (exactly as the file names it) or an index
    (0-based, as recipes count).

    Parameters
    ----------
    image_channel_names : sequence of str or None
        The file's channel names (`bpho.io.Image.channel_names`; may be shorter than the
        channels, or empty, where the file names none).
    n_channels : int
        The file's channels (C of its (T, C, Z, Y, X)).
    models : mapping
        Channel selector (None for the single ``--model URI``) -> the model's meta dict.
    spec : str, optional
        ``--channels``: ``"all"`` or comma-separated names / indices.
    source : str
        The file, as the messages name it.

    Returns
    -------
    ChannelPlan
        The channels in file order with their model keys, their names, and a message.

    Raises
    ------
    BphoError
        One line, with the file's channels, for an unknown name, an index out of range, a
        channel chosen twice, or `spec` beside per-channel models.
    """
    names = [_name(image_channel_names, i) for i in range(n_channels)]
    if not models:
        raise BphoError("no model given; pass --model URI")
    if None in models and len(models) > 1:
        raise BphoError("a model without CHANNEL= beside per-channel models; name the channel of each "
                        "(--model CHANNEL=URI)")
    if None not in models:
        if spec is not None:
            raise BphoError(f"--channels {spec} and --model CHANNEL=URI together: the models' channels are the "
                            "ones predicted; drop --channels")
        chosen: Dict[int, Optional[str]] = {}
        for key in models:
            assert key is not None
            index = _resolve(key, names, source)
            if index in chosen:
                raise BphoError(f"--model {chosen[index]}=... and --model {key}=... both name channel "
                                f"{_label(index, names[index])} of {source}; give one model per channel")
            chosen[index] = key
        order = sorted(chosen)
        left = [i for i in range(n_channels) if i not in chosen]
        message = (f"predicting {_labels(order, names)}, each with its own model"
                   + (f"; left out (no --model for them): {_labels(left, names)}" if left else ""))
        return ChannelPlan([(i, chosen[i]) for i in order], [names[i] for i in order], message)
    trained = models[None].get("input") or {}
    t_index, t_name = trained.get("channel"), trained.get("channel_name")
    t_label = f"channel {_label(t_index, t_name)}" if t_index is not None else None
    if spec is not None:
        if spec.strip().lower() == "all":
            order = list(range(n_channels))
        else:
            parts = [p.strip() for p in spec.split(",")]
            if not all(parts):
                raise BphoError(f"--channels {spec!r}: an empty entry; give all, or names / indices separated by "
                                "commas")
            order = [_resolve(p, names, source) for p in parts]
            twice = sorted({i for i in order if order.count(i) > 1})
            if twice:
                raise BphoError(f"--channels {spec!r}: {_labels(twice, names)} chosen twice")
            order.sort()
        trained_on = f" (the model was trained on {t_label})" if t_label else ""
        message = f"predicting {_labels(order, names)} (--channels {spec}){trained_on}"
        return ChannelPlan([(i, None) for i in order], [names[i] for i in order], message)
    if n_channels == 1:
        return ChannelPlan([(0, None)], names, None)
    if t_index is None:
        order = list(range(n_channels))
        return ChannelPlan([(i, None) for i in order], names,
                           f"predicting all {n_channels} channels: the model does not record the channel it was "
                           "trained on (trained by an older bpho); --channels NAME or INDEX to choose")
    if t_name is not None and any(n is not None for n in names):
        if t_name not in names:
            raise BphoError(f"{source}: the model was trained on channel {t_name!r}, which the file does not have "
                            f"(its channels: {describe_channels(names, n_channels)}); choose with --channels "
                            "NAME, INDEX or all")
        index = names.index(t_name)
        how = "the channel the model was trained on" + (
            f" (channel {t_index} in its training files)" if index != t_index else "")
    else:
        if not 0 <= t_index < n_channels:
            raise BphoError(f"{source}: the model was trained on {t_label}, but the file has {n_channels} "
                            f"channels ({describe_channels(names, n_channels)}); choose with --channels NAME, "
                            "INDEX or all")
        index = t_index
        how = f"the index of the channel the model was trained on ({t_label})"
    return ChannelPlan([(index, None)], [names[index]],
                       f"predicting {_labels([index], names)} only, {how}; --channels all to predict every channel")


def check_pixel_size(image_pixel_size_yx: Sequence[Optional[float]], model_meta: dict,
                     source: str = "the input") -> Optional[str]:
    """A warning when the input's pixel size differs from the model's training LR pixel size by over 10 %.

    The reference is the training data's LR pixel size (the meta's ``input.pixel_size_um``;
    for training files of several sizes, ``pixel_sizes_um``: then anything within 10 % of
    their range passes). Where either side is unknown (a file without calibration, a model
    trained before bpho recorded it) nothing is compared and nothing is said: a warning on
    every such prediction would teach users to ignore it.

    Parameters
    ----------
    image_pixel_size_yx : (float or None, float or None)
        The input's pixel size (y, x) in micrometres (`bpho.io.Image.pixel_size[1:]`).
    model_meta : dict
        The model's meta (``bpho_model.json``).
    source : str
        The file, as the message names it.

    Returns
    -------
    str or None
        One line naming both pixel sizes, or None when they agree or cannot be compared.
    """
    record = model_meta.get("input") or {}
    refs = record.get("pixel_sizes_um") or [record.get("pixel_size_um")]
    off = []
    for axis, value in enumerate(image_pixel_size_yx[:2]):
        known = [ref[axis] for ref in refs if ref and ref[axis]]
        if not value or not known:
            continue
        low, high = min(known), max(known)
        if value < low * (1 - PIXEL_TOLERANCE) or value > high * (1 + PIXEL_TOLERANCE):
            near = low if value < low else high
            off.append((value, near, (value - near) / near))
    if not off:
        return None
    trained = " or ".join(_size(ref) for ref in refs if ref)
    worst = max(off, key=lambda o: abs(o[2]))
    return (f"{source}: pixel size {_size(image_pixel_size_yx)} um (y x), but the model was trained on LR pixels "
            f"of {trained} um ({worst[2]:+.0%}): it sees structures at another scale than it learnt; resample the "
            "input to the training pixel size or use a model trained at this one")


def _name(names: Sequence[Optional[str]], index: int) -> Optional[str]:
    return names[index] if index < len(names) else None


def _label(index: int, name: Optional[str]) -> str:
    return f"{index} {name!r}" if name is not None else f"{index}"


def _labels(indices: Sequence[int], names: Sequence[Optional[str]]) -> str:
    return f"channel{'s' if len(indices) > 1 else ''} {', '.join(_label(i, names[i]) for i in indices)}"


def _size(yx: Sequence[Optional[float]]) -> str:
    return " x ".join("?" if v is None else f"{v:g}" for v in yx[:2])


def _resolve(selector: str, names: List[Optional[str]], source: str) -> int:
    """A channel name of the file, else a 0-based index, as a channel index."""
    if selector in names:
        return names.index(selector)
    if selector.lstrip("-").isdigit():
        index = int(selector)
        if 0 <= index < len(names):
            return index
        raise BphoError(f"{source}: channel {index} does not exist (the file has {len(names)}: "
                        f"{describe_channels(names, len(names))}); indices count from 0")
    raise BphoError(f"{source}: no channel named {selector!r} (its channels: {describe_channels(names, len(names))}); "
                    "give a name as the file writes it, or an index")
