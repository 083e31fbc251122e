"""napari widget: super-resolve an image layer with a model of the lab's MLflow registry.

The widget lists the registered bpho models of the tracking store `bpho.tracking` uses (the
embedded store under ``$BPHO_ROOT``, or the team's server from ``MLFLOW_TRACKING_URI`` with
``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``, as the CLI), shows the chosen
version's lineage and validation numbers, and predicts the chosen layer in a worker thread
through `bpho.predict.predict_blocks`: the same checks, normalisation, blocks and tiles as
``bpho predict``, so the layer holds the numbers the CLI writes.

A layer's leading axes (before Y, X) are read from the metadata `bpho.napari.reader` gives it,
else from its ``axis_labels`` (``t``, ``z``); an unlabelled 3D layer is a time-lapse for a
multi-frame model and a z-stack (planes predicted one by one) for a single-frame one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Generator, List, Optional, Tuple

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, Label, ProgressBar, PushButton

from bpho import io, tracking
from bpho.config import PredictConfig
from bpho.errors import BphoError


def describe(version: dict) -> str:
    """One line on a registered version: dataset and digest, validation PSNR gains over bicubic and
    bilinear, FRC resolution, training run (the tags `bpho.tracking.describe_version` gave it)."""
    tags = version["tags"]

    def gain(key: str) -> str:
        return f"{float(tags[key]):+.2f} dB" if key in tags else "?"

    frc = f"{float(tags['bpho.valid_frc_nm']):.0f} nm" if "bpho.valid_frc_nm" in tags else "?"
    return (f"dataset {tags.get('bpho.dataset', '?')} ({tags.get('bpho.dataset_digest', '?')[:12]}); "
            f"validation PSNR {gain('bpho.valid_psnr_gain')} over bicubic, {gain('bpho.valid_psnr_gain_bilinear')} "
            f"over bilinear; FRC {frc}; run {version['run_id']}")


def layer_axes(layer, frames: int) -> str:
    """The layer's axes before Y and X, among ``t`` and ``z`` (see the module docstring)."""
    lead = len(layer.data.shape) - 2  # a multiscale layer's data has the shape of its level 0
    known = (layer.metadata.get("bpho") or {}).get("axes")
    if known:
        return str(known)[:-2]
    labels = tuple(str(a).lower() for a in getattr(layer, "axis_labels", ())[:lead])
    if lead and all(a in ("t", "z") for a in labels) and len(set(labels)) == lead:
        return "".join(labels)
    return {0: "", 1: "t" if frames > 1 else "z", 2: "tz"}[lead]


def layer_image(layer, frames: int) -> Tuple[io.Image, str]:
    """The layer as a one-channel `bpho.io.Image` (its data, level 0 of a multiscale layer, is not
    copied) and its axes before Y, X."""
    full = layer.data[0] if layer.multiscale else layer.data
    if full.ndim < 2 or full.ndim > 4:
        raise BphoError(f"layer {layer.name!r}: {full.ndim} dimensions; bpho predicts images of 2 to 4 "
                        "(T, Z, Y, X): split its channels into layers")
    axes = layer_axes(layer, frames)
    index: Tuple[Any, ...] = {"": (None, None, None), "t": (slice(None), None, None), "z": (None, None),
                              "tz": (slice(None), None)}[axes]
    data = full[index]
    meta = layer.metadata.get("bpho") or {}
    scale = [float(v) for v in layer.scale]
    pixel_size = meta.get("pixel_size_um") or (scale[axes.index("z")] if "z" in axes else None,
                                               *[v if v != 1 else None for v in scale[-2:]])
    name = meta.get("channel_name")
    img = io.Image(data=data, pixel_size=tuple(pixel_size), axes_source=axes.upper() + "YX",
                   path=Path(f"layer {layer.name}"), channel_names=(name,) if name else ())
    return img, axes


def check_channel(img: io.Image, meta: dict, uri: str) -> None:
    """A layer of another channel than the model's (both named): one line. `bpho.channels.plan_channels`
    predicts a one-channel file whatever its name; a layer named by its file is one channel of many."""
    trained = (meta.get("input") or {}).get("channel_name")
    name = img.channel_name(0)
    if trained and name and trained != name:
        raise BphoError(f"{img.path}: channel {name!r}, but {uri} was trained on channel {trained!r}; choose "
                        f"the {trained} layer, or a model trained on {name}")


def super_resolve(layer, uri: str, bicubic: bool,
                  cfg: PredictConfig = PredictConfig()) -> Generator[Any, None, List[tuple]]:
    """Predict `layer` with model `uri` as ``bpho predict`` does: yields the pixel-size warnings (one
    line each), then (done, total) after every block and bicubic plane; returns the layers to add
    as (data, kwargs, type) tuples. Runs in a worker thread; stopping it between two yields adds nothing."""
    from bpho.datasets.register import upsample
    from bpho.evaluate import BASELINES
    from bpho.predict import lineage_of, load_models, plan_image, predict_blocks, units

    _folders, models = load_models({None: uri}, cfg)
    model = models[None]
    img, axes = layer_image(layer, model.frames)
    plan, warned = plan_image(img, models, source=str(img.path))
    check_channel(img, model.meta, uri)
    for line in warned:
        yield line  # shown in the viewer's thread
    s = model.scale
    t, _c, z, h, w = img.shape
    work = units(img.shape, plan.channels, cfg.block)
    total = len(work) + (t * z if bicubic else 0)
    hr = np.zeros((t, 1, z, h * s, w * s), np.float32)
    done = 0
    yield done, total
    for (ti, co, _ci, _key, zi, (y, x, bh, bw)), block in predict_blocks(models, img, plan.channels, cfg.block):
        hr[ti, co, zi, y * s:(y + bh) * s, x * s:(x + bw) * s] = block
        done += 1
        yield done, total
    unexpand: Tuple[Any, ...] = {"": (0, 0, 0), "t": (slice(None), 0, 0), "z": (0, 0), "tz": (slice(None), 0)}[axes]
    scale = np.array(layer.scale, float)  # a copy: the layer hands out its own array
    scale[-2:] /= s
    # napari places a pixel's centre at translate + index * scale: the HR pixels that tile LR pixel 0
    # start at its edge, half an LR pixel before its centre, so HR overlays LR exactly
    translate = np.array(layer.translate, float)
    translate[-2:] += (scale[-2:] - np.asarray(layer.scale, float)[-2:]) / 2
    lineage = {**lineage_of(uri, model), "scale": s, "source_layer": layer.name}
    common = {"scale": tuple(scale), "translate": tuple(translate),
              "axis_labels": tuple(layer.axis_labels), "contrast_limits": _limits(hr)}
    meta = {**(layer.metadata.get("bpho") or {}), "axes": axes + "yx", "pixel_size_um": img.pixel_size[:1] + tuple(
        v / s if v else None for v in img.pixel_size[1:])}
    out: List[tuple] = [(hr[unexpand], {**common, "name": f"{layer.name} bpho {s}x",
                                        "metadata": {**lineage, "bpho": meta}}, "image")]
    if bicubic:
        lr = np.asarray(img.data[:, 0], np.float32)
        cubic = np.zeros_like(hr)
        for ti in range(t):
            for zi in range(z):
                cubic[ti, 0, zi] = upsample(lr[ti, zi], s, BASELINES["bicubic"])
                done += 1
                yield done, total
        out.append((cubic[unexpand], {**common, "name": f"{layer.name} bicubic {s}x",
                                      "metadata": {"bicubic_of": layer.name, "scale": s, "bpho": meta}}, "image"))
    return out


def _limits(hr: np.ndarray) -> Tuple[float, float]:
    lo, hi = np.percentile(hr[tuple(slice(0, 1) for _ in range(hr.ndim - 2))], (0.1, 99.9))
    return float(lo), float(max(hi, lo + 1e-6))


def one_line(exc: BaseException) -> str:
    """An error as one line: a BphoError's message, else its type and first line."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text if isinstance(exc, BphoError) else f"{type(exc).__name__}: {text}"


class SuperResolveWidget(Container):
    """Choose a registered model and an image layer; super-resolve it beside the original (and bicubic).

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer whose layers are listed and added to.
    """

    def __init__(self, napari_viewer):
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.versions: Dict[str, dict] = {}
        self.worker: Optional[Any] = None  # the running prediction
        self.last_worker: Optional[Any] = None
        self.model = ComboBox(label="model", choices=self._model_choices)
        self.info = Label(label="trained", value="")
        self.info.native.setWordWrap(True)
        self.info.native.setMinimumWidth(260)
        self.refresh = PushButton(text="Refresh models")
        self.layer = ComboBox(label="image", choices=self._layer_choices)
        self.bicubic = CheckBox(text="add bicubic beside", value=True)
        self.run_button = PushButton(text="Super-resolve")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=1, label="progress")
        self.extend([self.model, self.info, self.refresh, self.layer, self.bicubic, self.run_button,
                     self.cancel_button, self.progress])
        self.model.changed.connect(self._show_version)
        self.refresh.changed.connect(self.refresh_models)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(lambda _e: self.layer.reset_choices())
        self.refresh_models()

    def refresh_models(self) -> None:
        """List the tracking store's registered versions again (a store away: one notification)."""
        from napari.utils.notifications import show_error

        try:
            found = tracking.registered_versions()
        except BphoError as exc:
            found = []
            show_error(one_line(exc))
            self.info.value = one_line(exc)
        self.versions = {v["uri"]: v for v in found}
        self.model.reset_choices()
        self._show_version()

    def _model_choices(self, _widget=None) -> List[Tuple[str, str]]:
        versions = sorted(self.versions.values(), key=lambda v: ("champion" not in v["aliases"], v["name"],
                                                                  -int(v["version"])))
        return [(f"{v['name']} v{v['version']}" + "".join(f" @{a}" for a in v["aliases"]), v["uri"])
                for v in versions]

    def _layer_choices(self, _widget=None) -> List[Tuple[str, Any]]:
        return [(layer.name, layer) for layer in self.viewer.layers]

    def _show_version(self, *_args) -> None:
        uri = self.model.value
        if uri in self.versions:
            self.info.value = describe(self.versions[uri])
        elif not self.versions and not self.info.value:
            self.info.value = f"no registered bpho model on {tracking.tracking_uri()}"

    def run(self, *_args):
        """Start predicting the chosen layer (a notification instead for a layer or model that cannot
        be predicted); returns the worker, or None."""
        from napari.layers import Image, Labels
        from napari.qt.threading import create_worker
        from napari.utils.notifications import show_error

        layer, uri = self.layer.value, self.model.value
        problem = None
        if self.worker is not None:
            problem = "a prediction is running; wait for it or cancel it"
        elif uri is None:
            problem = f"no model chosen: register one (bpho train) on {tracking.tracking_uri()}, then Refresh models"
        elif layer is None:
            problem = "no image layer chosen: open an image first"
        elif isinstance(layer, Labels):
            problem = f"layer {layer.name!r} is a Labels layer (a segmentation), not an image; choose an image layer"
        elif not isinstance(layer, Image):
            problem = f"layer {layer.name!r} is a {type(layer).__name__} layer, not an image; choose an image layer"
        elif layer.rgb:
            problem = (f"layer {layer.name!r} is an RGB picture, not grey microscopy channels; open the raw "
                       "channels (in Fiji: Image > Color > Split Channels, save each as TIFF)")
        if problem:
            show_error(problem)
            return None
        worker = create_worker(super_resolve, layer, uri, bool(self.bicubic.value), _start_thread=False,
                               _ignore_errors=True)  # said by `errored`, in one line
        worker.yielded.connect(self._step)
        worker.returned.connect(self._add)
        worker.errored.connect(lambda exc: show_error(one_line(exc)))
        worker.aborted.connect(lambda: self._say("stopped: nothing was added"))
        worker.finished.connect(self._finished)
        self.worker = self.last_worker = worker
        self.run_button.enabled, self.cancel_button.enabled = False, True
        self.progress.value = 0
        worker.start()
        return worker

    def cancel(self, *_args) -> None:
        """Stop the running prediction after the block it is on; nothing is added."""
        if self.worker is not None:
            self.worker.quit()

    def _step(self, value) -> None:
        if isinstance(value, str):
            from napari.utils.notifications import show_warning

            show_warning(value)
            return
        done, total = value
        self.progress.max = max(total, 1)
        self.progress.value = done

    def _add(self, layers: List[tuple]) -> None:
        for data, kwargs, _kind in layers:
            self.viewer.add_image(data, **kwargs)

    @staticmethod
    def _say(text: str) -> None:
        from napari.utils.notifications import show_info

        show_info(text)

    def _finished(self) -> None:
        self.worker = None
        self.run_button.enabled, self.cancel_button.enabled = True, False
