"""A trained bpho model as a BioImage Model Zoo package (model spec 0.5), for Fiji (deepImageJ),
napari, ilastik and QuPath.

The package (a .zip, or the same files in a folder) holds:

- weights: ``pytorch_state_dict`` with bpho's network source (``unet.py``, importable alone,
  callable ``unet``, the model's config as kwargs); ``torchscript`` (traced) and ``onnx``
  (opset 17) where they trace, each checked against the state dict on inputs of other sizes
  than the one traced; a format that fails is left out, with the reason in the README;
- input ``lr``: axes batch, channel (one LR image) or time (a multi-frame model's t-2..t+2),
  y, x; y and x any size from a minimum (the network pads to its stride); preprocessing
  ``scale_range`` with the model's percentiles over each sample's (time,) y and x: bpho's
  normalisation of one image or window;
- output ``hr``: batch, channel, y, x with y and x = the input's times `scale` (axis scales `scale`
  and 1), halo `context` LR pixels; in normalised units (0 and 1 are the input's low and high
  percentiles): the spec has no step for bpho's mapping back to the input's units (`bpho predict`
  does it);
- test tensors (a crop of the dataset's first held-out LR image and the model's output on it),
  a cover (LR | model | HR) and a README with the lineage (training run, dataset and datasource
  digests, metrics and how they were measured).

The package is tested with bioimageio.core's ``test_model`` before it is written, and logged
as an artifact of the model's training run.
"""

from __future__ import annotations

import getpass
import json
import re
import shutil
import tempfile
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union, cast
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import tifffile
import torch
from tqdm import tqdm

from bpho import __version__, io, paths, tracking
from bpho.config import ExportConfig
from bpho.errors import BphoError
from bpho.inference import SuperResolver, load_model

ONNX_OPSET = 17
TEST_SIDE = 64  # LR pixels of the test tensor's y and x
TOLERANCE = 1e-4  # largest |difference| of a converted format from the state dict (normalised units)
CITE = [("Fang L. et al. (2021) Deep learning-based point-scanning super-resolution imaging. "
          "Nature Methods 18, 406-416",
         "10.1038/s41592-021-01080-z")]  # and the network's (its config's CITE)


@dataclass
class Export:
    """A BioImage Model Zoo package written by `export`: where, its name, its weights and the test result."""

    path: Path
    name: str
    weights: Dict[str, str]  # format -> how it was checked, or why it was left out
    test: str = "passed"
    run_id: Optional[str] = None
    artifact: Optional[str] = None  # where the package was logged on the training run
    notes: List[str] = field(default_factory=list)


def export_bioimageio(model_uri: str, out: Path, sample: Optional[Path] = None, name: Optional[str] = None,
                      authors: Optional[List[str]] = None, license: str = ExportConfig.license, force: bool = False,
                      track: bool = True, progress: bool = True) -> Export:
    """Write the model at `model_uri` as a BioImage Model Zoo package to `out` (``*.zip``: the
    zipped package; otherwise a folder) after bioimageio.core's ``test_model`` passed on it.

    Parameters
    ----------
    model_uri : str
        ``runs:/ID/model``, ``models:/NAME/VERSION`` or ``models:/NAME/latest``.
    out : Path
        The package: a ``.zip`` file or a folder. Nothing is written there unless the test passes.
    sample : Path, optional
        An LR image (CZI, TIFF) for the test tensors and the cover, when the model's dataset is
        not on this machine (default: the dataset's first held-out image, with its HR).
    name, authors, license
        The package's name (default: the registered model name or ``bpho-<dataset>``), its
        authors (default: the MLflow user who trained it) and SPDX license.
    force : bool
        Replace an existing `out`.
    track : bool
        Log the zipped package as an artifact of the model's training run.
    progress : bool
        Show the steps (tqdm).
    """
    out = Path(out)
    if out.exists() and not force:
        raise BphoError(f"{out}: already exists; choose another --out or add --force")
    model = load_model(tracking.download_model(model_uri), device="cpu")
    meta = model.meta
    run_id = meta.get("run_id")
    record = tracking.run_record(run_id) if run_id else None
    tags = record["tags"] if record else {}
    name = name or re.sub(r"[^A-Za-z0-9_+\- ()]", "-", tags.get("bpho.model_name") or f"bpho-{meta.get('dataset')}")
    authors = authors or [tags.get("mlflow.user") or getpass.getuser()]
    _check_words(name, authors, license)
    lr, hr, source = _sample(model, sample)
    bar = tqdm(total=4, desc="export", unit="step", disable=not progress, leave=False)
    with tempfile.TemporaryDirectory(prefix="bpho-export-") as tmp_dir, bar:
        tmp = Path(tmp_dir)
        bar.set_description("export: test tensors, cover")
        files = _files(model, lr, hr, tmp)
        bar.update()
        bar.set_description("export: TorchScript and ONNX weights")
        weights = _weights(model, files, tmp)
        bar.update()
        bar.set_description("export: description and package")
        lineage = _lineage(meta, tags, model_uri, source)
        (tmp / "README.md").write_text(_readme(name, model, lineage, weights))
        descr = _description(model, name, authors, license, files, weights, lineage, tmp)
        package = tmp / f"{_safe_name(name)}.zip"
        _save(descr, package)
        bar.update()
        bar.set_description("export: bioimageio.core test_model")
        test = _test(package)
        bar.update()
        result = Export(path=out, name=name, weights={k: v["check"] for k, v in weights.items()}, test=test,
                        run_id=run_id)
        if out.suffix == ".zip":
            with paths.atomic_file(out, suffix=".zip") as part:
                shutil.copyfile(package, part)
        else:
            with paths.atomic_dir(out, replace=True) as folder:
                zipfile.ZipFile(package).extractall(folder)
        if track and record is not None and not tracking.previews_enabled():
            result.notes.append("BPHO_PREVIEWS=off: the package (its test tensors and cover are crops of your data) "
                                "was not logged to the tracking server")
        elif track and record is not None and run_id:  # (a record means a run id)
            tracking.log_to_run(run_id, [package], "bioimageio", {"bpho.bioimageio": f"bioimageio/{package.name}"})
            result.artifact = f"runs:/{run_id}/bioimageio/{package.name}"
        elif track:
            result.notes.append(f"training run {run_id} not found on {tracking.tracking_uri()}: package not logged")
    return result


def _check_words(name: str, authors: List[str], license: str) -> None:
    """What the spec would refuse after the work is done, said before it starts."""
    from bioimageio.spec.model import v0_5 as spec

    if not re.fullmatch(r"[A-Za-z0-9_+\- ()]{5,128}", name):
        raise BphoError(f"--name {name!r}: use 5 to 128 letters, digits, spaces and _+-()")
    if any(not a.strip() or "/" in a for a in authors):
        raise BphoError(f"--author {authors!r}: give each author's name (no '/')")
    try:
        spec.LicenseId(license)
    except ValueError:
        raise BphoError(f"--license {license!r} is not an SPDX license id; e.g. CC-BY-4.0, MIT, BSD-3-Clause") from None


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _sample(model: SuperResolver, sample: Optional[Path]):
    """(frames, y, x) LR float32, the matching (Y, X) HR or None, and where they come from."""
    from bpho import datasets

    if sample is not None:
        data = io.read(Path(sample)).data  # (T, C, Z, Y, X)
        stack = data[:, 0, data.shape[2] // 2].astype(np.float32)
        hr, where = None, f"{Path(sample).name} (LR only)"
    else:
        dataset = model.meta.get("dataset")
        try:
            ds = datasets.open(str(dataset))  # none recorded: "None", no such dataset
            pair = ds.validation_images()[0]
        except (BphoError, IndexError) as exc:
            raise BphoError(f"the model's dataset {dataset!r} is not usable here ({exc}); give --sample LR_IMAGE "
                            "for the test tensors and the cover") from None
        split = "held-out" if ds.validation_split == "valid" else "training"
        stack, hr, where = pair.lr, pair.hr, f"{split} image {pair.name} of dataset {dataset}"
    f, s = model.frames, model.scale
    if stack.shape[0] < f:
        raise BphoError(f"{where}: {stack.shape[0]} frame(s), but the model takes {f}")
    least = _min_side(model)
    if min(stack.shape[1:]) < least:  # a small image, mirrored at its borders up to the smallest input
        grow = [(0, 0), *(((least - n + 1) // 2,) * 2 if n < least else (0, 0) for n in stack.shape[1:])]
        stack = np.pad(stack, grow, mode="symmetric")
        hr = None if hr is None else np.pad(hr, [(0, 0), *((a * s, b * s) for a, b in grow[1:])], mode="symmetric")
        where += f", mirrored at its borders to {stack.shape[1]} x {stack.shape[2]} LR pixels"
    step = model.net.stride
    side = max(least, min(TEST_SIDE, stack.shape[1] // step * step, stack.shape[2] // step * step))
    y, x = (stack.shape[1] - side) // 2, (stack.shape[2] - side) // 2
    lr = stack[:f, y:y + side, x:x + side].astype(np.float32)
    if hr is not None:
        hr = hr[f // 2, y * s:(y + side) * s, x * s:(x + side) * s].astype(np.float32)
    return lr, hr, where


def _min_side(model: SuperResolver) -> int:
    """Smallest LR y/x the package accepts: a multiple of the network's stride wider than both halos."""
    step = _stride(model)
    return step * (2 * model.context // step + 1)


def _stride(model: SuperResolver) -> int:
    """The network's stride: input sizes it takes without padding are its multiples."""
    return cast(int, model.net.stride)


def _normalised(model: SuperResolver, lr: np.ndarray) -> np.ndarray:
    """What the package's scale_range does: (x - p_low) / (p_high - p_low + 1e-6) over the window."""
    p = model.meta["normalization"]
    lo, hi = np.percentile(lr, (p["percentile_low"], p["percentile_high"]))
    return ((lr - lo) / (hi - lo + 1e-6)).astype(np.float32)


def _files(model: SuperResolver, lr: np.ndarray, hr: Optional[np.ndarray], tmp: Path) -> dict:
    from bpho.plots import save_grid

    x = torch.from_numpy(_normalised(model, lr))[None]
    with torch.no_grad():
        y = model.net(x).numpy()
    files: Dict[str, Any] = {  # paths, and the example input tensor
        "input": tmp / "test_input.npy", "output": tmp / "test_output.npy", "cover": tmp / "cover.png",
        "sample_input": tmp / "sample_input.tif", "sample_output": tmp / "sample_output.tif",
        "state_dict": tmp / "weights.pt", "architecture": tmp / f"{_arch(model).name}.py", "example": x}
    np.save(files["input"], lr[None])
    np.save(files["output"], y)
    tifffile.imwrite(files["sample_input"], lr.squeeze())  # the same, for people and imageio
    tifffile.imwrite(files["sample_output"], y.squeeze())
    torch.save({k: v.detach().cpu() for k, v in model.net.state_dict().items()}, files["state_dict"])
    files["architecture"].write_text(_arch(model).source())
    s = model.scale
    panels = [np.kron(lr[lr.shape[0] // 2], np.ones((s, s), np.float32)), y[0, 0]] + ([hr] if hr is not None else [])
    save_grid(files["cover"], [[_display(p) for p in panels]], labels=["LR", "bpho", "HR"][:len(panels)])
    return files


def _arch(model: SuperResolver):
    from bpho.models import DEFAULT_ARCH, architecture

    return architecture(model.meta["model"].get("arch", DEFAULT_ARCH))


def _display(img: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(img, (0.5, 99.8))
    return np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)


def _weights(model: SuperResolver, files: dict, tmp: Path) -> Dict[str, dict]:
    """The state dict, and TorchScript / ONNX where they trace and agree with it on inputs the
    trace did not see: the test tensor and a batch of 2 of another size. Traced on a size that is
    no multiple of the encoder's stride, so the network's padding to one is in the graph and any
    size works."""
    net, f, least = model.net, model.frames, _min_side(model)
    gen = torch.Generator().manual_seed(0)
    example = torch.rand(1, f, least + 3, least + 5, generator=gen)
    probes = [files["example"], torch.rand(2, f, least + _stride(model) + 1, least + 2, generator=gen)]
    with torch.no_grad():
        want = [net(p).numpy() for p in probes]
    out = {"pytorch_state_dict": {"path": files["state_dict"],
                                  "check": "the trained weights (safetensors -> torch.save)"}}
    converters = {"torchscript": (tmp / "weights_torchscript.pt", _torchscript), "onnx": (tmp / "weights.onnx", _onnx)}
    for fmt, (path, convert) in converters.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer and exporter notes on Python control flow
                got = convert(net, example, path, probes)
        except Exception as exc:  # a converter's failure leaves that format out, it does not stop the export
            out[fmt] = {"path": None, "check": f"left out: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
            continue
        diff = max(float(np.abs(g - w).max()) if g.shape == w.shape else float("inf") for g, w in zip(got, want))
        shapes = " and ".join("x".join(map(str, p.shape)) for p in probes)
        if diff <= TOLERANCE:
            out[fmt] = {"path": path, "check": f"max |difference| from the state dict {diff:.1e} on {shapes} inputs"}
        else:
            out[fmt] = {"path": None,
                        "check": f"left out: differs from the state dict by {diff:.3g} on {shapes} inputs"}
    return out


def _torchscript(net, example, path: Path, probes) -> list:
    torch.jit.trace(net, example).save(str(path))
    loaded = torch.jit.load(str(path))
    with torch.no_grad():
        return [loaded(p).numpy() for p in probes]


def _onnx(net, example, path: Path, probes) -> list:
    import onnxruntime

    dims = {0: "batch", 2: "y", 3: "x"}
    torch.onnx.export(net, (example,), str(path), input_names=["lr"], output_names=["hr"], opset_version=ONNX_OPSET,
                      dynamic_axes={"lr": dims, "hr": dims}, dynamo=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [session.run(None, {"lr": p.numpy()})[0] for p in probes]


def _lineage(meta: dict, tags: dict, model_uri: str, source: str) -> dict:
    """Where the model came from: the run, the dataset and datasource with their digests."""
    uri = urlsplit(tracking.tracking_uri())
    uri = uri._replace(netloc=uri.hostname + (f":{uri.port}" if uri.port else "")) if uri.hostname else uri
    out = {"model_uri": model_uri, "training_run": meta.get("run_id"), "tracking_uri": urlunsplit(uri),  # no password
           "dataset": meta.get("dataset"), "dataset_digest": meta.get("dataset_digest"),
           "datasource": meta.get("datasource") or tags.get("bpho.datasource"),
           "datasource_digest": meta.get("datasource_digest") or tags.get("bpho.datasource_digest"),
           "recipe": tags.get("bpho.recipe"), "git_commit": tags.get("mlflow.source.git.commit"),
           "training_tile_size": meta.get("tile_size"), "training_input": meta.get("input"), "model": meta["model"],
           "normalization": meta["normalization"], "validation": meta.get("validation", {}),
           "test_tensor_from": source, "bpho_version": __version__}
    return out


def _readme(name: str, model: SuperResolver, lineage: dict, weights: Dict[str, dict]) -> str:
    cfg, norm, val = lineage["model"], lineage["normalization"], lineage["validation"]
    settings = ", ".join(f"{k} `{v}`" for k, v in cfg.items()
                         if k not in ("arch", "scale", "frames", "encoder_weights"))
    s = model.scale
    half = model.frames // 2
    kind = "one LR image" if model.frames == 1 else f"{model.frames} consecutive LR frames (t-{half} .. t+{half})"
    rows = "\n".join(f"| {k} | {v if v is not None else '-'} |" for k, v in (
        ("training run", lineage["training_run"]), ("tracking server", lineage["tracking_uri"]),
        ("dataset", lineage["dataset"]), ("dataset digest", lineage["dataset_digest"]),
        ("recipe", lineage["recipe"]), ("datasource", lineage["datasource"]),
        ("datasource digest", lineage["datasource_digest"]), ("bpho git commit", lineage["git_commit"]),
        ("training tile (HR px)", lineage["training_tile_size"]), ("test tensor", lineage["test_tensor_from"])))
    metric_rows = ""
    if val:
        fmt = lambda k: f"{val[k]:.3f}" if isinstance(val.get(k), (int, float)) else "-"  # noqa: E731
        metric_rows = "\n".join(
            f"| {label} | {fmt('valid_' + k)} | {fmt('bicubic_' + k)} | {fmt('bilinear_' + k)} |"
            for label, k in (("PSNR (dB)", "psnr"), ("SSIM", "ssim"), ("FRC resolution (HR px)", "frc_px"),
                             ("FRC resolution (nm)", "frc_nm")))
        metric_rows = (f"Epoch {val.get('epoch')}, images {', '.join(val.get('images', []))} "
                       f"(split `{val.get('split')}`).\n\n| metric | model | bicubic | bilinear |\n|---|---|---|---|\n"
                       + metric_rows)
    weight_rows = "\n".join(f"| {k} | {'yes' if v['path'] else 'no'} | {v['check']} |" for k, v in weights.items())
    return f"""# {name}

Point-scanning super-resolution trained with bpho {lineage['bpho_version']}:
{kind} in, one HR image {s} times larger on each side out. {_arch(model).config.TITLE} ({settings});
it predicts a residual over the bilinear upsampling of the centre frame.

## Input and output

- `lr` (float32, axes {'b, c, y, x' if model.frames == 1 else 'b, t, y, x'}): y and x any size from
  {_min_side(model)} LR pixels. Preprocessing: each sample is scaled so that
  its {norm['percentile_low']} and {norm['percentile_high']} percentiles become 0 and 1 (as bpho does).
- `hr` (float32, axes b, c, y, x): y and x = {s} x the input's. Values are in the normalised units
  (0 and 1 = the input's low and high percentile); to get the input's intensity units back, multiply
  by (p_high - p_low) and add p_low: `bpho predict` does this and writes calibrated TIFF.
- Halo: tile with at least {model.context} LR ({model.context * s} HR) pixels of overlap and crop it;
  bpho predicts each tile from a window {model.context} LR pixels wider.

## Lineage

| what | value |
|---|---|
{rows}

## Validation (how the numbers were measured)

Each held-out source image of the dataset, never used for training tiles, super-resolved whole by
bpho (tiles with context, blended) and compared with its registered HR on the interior the
registration did not invent; the prediction is fitted to the HR by least squares before PSNR and
SSIM (piq, data range 1; HR normalised by its 0.1/99.9 percentiles). FRC: the 1/7 threshold of the
Fourier ring correlation between prediction and HR. Baselines: bicubic and bilinear upsampling of
the same LR. The best epoch by PSNR is the one exported.

{metric_rows or 'No validation metrics were recorded for this model.'}

## Weights

| format | included | check |
|---|---|---|
{weight_rows}

The cover shows a crop of the test input: LR (pixels repeated) | this model | HR.
"""


def _description(model: SuperResolver, name: str, authors: List[str], license: str, files: dict,
                 weights: Dict[str, dict], lineage: dict, tmp: Path):
    from bioimageio.spec.model import v0_5 as spec

    s, f = model.scale, model.frames
    norm = model.meta["normalization"]
    size = spec.ParameterizedSize(min=_min_side(model), step=1)
    stack_axis: Union[spec.ChannelAxis, spec.TimeInputAxis]
    if f == 1:
        stack_axis = spec.ChannelAxis(channel_names=["lr"])
        joint = ["y", "x"]
    else:
        stack_axis = spec.TimeInputAxis(size=f, description=f"frames t-{f // 2} .. t+{f // 2}; the HR is of frame t")
        joint = ["time", "y", "x"]
    lr_axes: List[Any] = [spec.BatchAxis(), stack_axis,
               *(spec.SpaceInputAxis(id=spec.AxisId(a), size=size, scale=float(s),
                                     description=f"LR pixels ({s} HR pixels each)") for a in "yx")]
    hr_axes: List[Any] = [spec.BatchAxis(), spec.ChannelAxis(channel_names=["hr"]),
               *(spec.SpaceOutputAxisWithHalo(id=spec.AxisId(a), scale=1.0, halo=model.context * s,
                                              size=spec.SizeReference(tensor_id=spec.TensorId("lr"),
                                                                      axis_id=spec.AxisId(a)))
                 for a in "yx")]
    inputs = spec.InputTensorDescr(
        id=spec.TensorId("lr"), axes=lr_axes, test_tensor=spec.FileDescr(source=files["input"]),
        sample_tensor=spec.FileDescr(source=files["sample_input"]),
        description="low-resolution image" if f == 1 else "low-resolution frames",
        preprocessing=[spec.ScaleRangeDescr(kwargs=spec.ScaleRangeKwargs(
            axes=[spec.AxisId(a) for a in joint], min_percentile=norm["percentile_low"],
            max_percentile=norm["percentile_high"]))])
    outputs = spec.OutputTensorDescr(
        id=spec.TensorId("hr"), axes=hr_axes, test_tensor=spec.FileDescr(source=files["output"]),
        sample_tensor=spec.FileDescr(source=files["sample_output"]),
        description="high-resolution image in normalised units (0, 1 = the input's low, high percentile)")
    version = spec.Version(torch.__version__.split("+")[0])
    entries: Dict[str, Any] = {"pytorch_state_dict": spec.PytorchStateDictWeightsDescr(
        source=files["state_dict"], pytorch_version=version,
        architecture=spec.ArchitectureFromFileDescr(
            source=files["architecture"], callable=_arch(model).network.split(":")[1],
            kwargs={**lineage["model"],
                    **({"encoder_weights": None} if "encoder_weights" in lineage["model"] else {})}))}
    if weights["torchscript"]["path"]:
        entries["torchscript"] = spec.TorchscriptWeightsDescr(source=weights["torchscript"]["path"],
                                                              pytorch_version=version, parent="pytorch_state_dict",
                                                              comment=weights["torchscript"]["check"])
    if weights["onnx"]["path"]:
        entries["onnx"] = spec.OnnxWeightsDescr(source=weights["onnx"]["path"], opset_version=ONNX_OPSET,
                                                parent="pytorch_state_dict", comment=weights["onnx"]["check"])
    val = lineage["validation"]
    description = (f"bpho point-scanning super-resolution, x{s}, {f} frame(s), trained on dataset "
                   f"{lineage['dataset']}" + (f"; {val['valid_psnr']:.2f} dB PSNR on held-out images "
                                              f"(bicubic {val['bicubic_psnr']:.2f} dB)" if "valid_psnr" in val else ""))
    try:
        return _model_descr(spec, inputs, outputs, entries, name, description, authors, license, files, lineage, tmp)
    except ValueError as exc:  # pydantic's ValidationError: a name, author or license the spec refuses
        errors: list = getattr(exc, "errors", lambda: [])()
        where = ".".join(map(str, errors[0]["loc"])) if errors else "description"
        why = errors[0]["msg"] if errors else str(exc).splitlines()[0]
        raise BphoError(f"BioImage Model Zoo package: {where}: {why} (see --name, --author, --license)") from None


def _model_descr(spec, inputs, outputs, entries, name, description, authors, license, files, lineage, tmp):
    from bpho.models import model_config

    net = model_config(lineage["model"])
    return spec.ModelDescr(
        name=name, description=description, authors=[spec.Author(name=a) for a in authors],
        cite=[spec.CiteEntry(text=text, doi=spec.Doi(doi)) for text, doi in CITE + [net.CITE]],
        license=license, documentation=spec.FileDescr(source=tmp / "README.md"),
        covers=[spec.FileDescr(source=files["cover"])],
        tags=["super-resolution", "denoising", "fluorescence-light-microscopy", "2d", "pytorch", net.arch, "bpho"],
        inputs=[inputs], outputs=[outputs], weights=spec.WeightsDescr(**entries),
        config=spec.Config(bioimageio=spec.BioimageioConfig(
            task="super-resolution", architecture_type=net.TITLE,
            reproducibility_tolerance=[spec.ReproducibilityTolerance(absolute_tolerance=TOLERANCE * 10,
                                                                     relative_tolerance=1e-3)]),
            bpho=json.loads(json.dumps(lineage))))


def _save(descr, package: Path) -> None:
    from bioimageio.spec import save_bioimageio_package

    save_bioimageio_package(descr, output_path=package)


def _test(package: Path) -> str:
    """bioimageio.core's test_model on the written package: every weight format, the test tensors
    reproduced, the parameterised sizes; raises with the first failure."""
    from bioimageio.core import test_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 calls TorchScript deprecated; deepImageJ runs it
        summary = test_model(package)
    if summary.status != "passed":
        failed = [d for d in summary.details if d.status == "failed"]
        first = failed[0] if failed else None
        why = f"{first.name}: {first.errors[0].msg if first.errors else ''}" if first else summary.status
        raise BphoError(f"the exported package fails bioimageio.core test_model ({why.strip()})")
    return summary.status
