"""Large images (#22): predict block by block into ImageJ TIFF, OME-TIFF and OME-Zarr, the same pixels as
the in-memory path; Dask workers give the same bytes, also when one is killed; faults leave nothing that
looks complete."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr

from bpho import io
from bpho.config import PredictConfig
from bpho.errors import BphoError
from bpho.inference import load_model, save_model
from bpho.models import build_model
from bpho.models.unet_config import UNetConfig
from bpho.predict import normalisation, predict_files

from conftest import assert_one_line_error, run_bpho

META = {"normalization": {"percentile_low": 2, "percentile_high": 99.8}, "run_id": "0a1b2c", "dataset": "big_001",
        "dataset_digest": "d1g35t"}


def _model(folder: Path, frames: int = 1) -> Path:
    """A real network with its weights and meta as training saves them (the weights need not be trained
    to check where pixels go)."""
    torch.manual_seed(frames)
    cfg = UNetConfig(encoder="resnet18", decoder_widths=(32, 16, 16, 8, 8), scale=2, frames=frames).to_dict()
    return save_model(folder, build_model(cfg), {**META, "model": cfg})


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    where = tmp_path_factory.mktemp("big-models")
    return {"single": _model(where / "single"), "movie": _model(where / "movie", frames=3)}


def _czi(path: Path, shape, pixel_um=0.1, names=None, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    data = rng.poisson(40, shape).astype(np.uint16) + np.linspace(0, 300, shape[-1]).astype(np.uint16)
    return io.write_czi(path, data, (0.5 if shape[2] > 1 else None, pixel_um, pixel_um), channel_names=names)


def _in_memory(folder: Path, path: Path, block: int) -> np.ndarray:
    """(T, C, Z, Y*s, X*s) by the in-memory path: the whole image read, each series predicted whole."""
    model = load_model(folder, device="cpu", tile=24, overlap=4, block=block)
    img = io.read(path)
    t, c, z, _y, _x = img.shape
    out = np.zeros((t, c, z) + tuple(n * model.scale for n in img.shape[3:]), np.float32)
    for ci in range(c):
        for zi in range(z):
            out[:, ci, zi] = np.stack(list(model.predict_frames(img.data[:, ci, zi])))
    return out


def _read(path: Path) -> np.ndarray:
    if path.name.endswith(".ome.zarr"):
        return np.asarray(zarr.open_array(str(path / "0"), mode="r"))
    return io.read(path).data


@pytest.mark.parametrize("fmt, block", [("imagej", 1024), ("ome-tiff", 16), ("ome-zarr", 16)])
def test_streamed_output_equals_the_in_memory_path(tmp_path, models, fmt, block):
    """Blocks of 16 LR px (several per plane, ragged at the edges) are written into one image that equals
    the in-memory prediction with the same blocks exactly, and the one-block prediction within a tolerance
    of tiling; T, C and Z kept."""
    src = _czi(tmp_path / "cells.czi", (2, 2, 2, 37, 45), names={0: "DAPI", 1: "GFP"})
    cfg = PredictConfig(device="cpu", tile=24, overlap=4, block=block, format=fmt)
    [out] = predict_files(str(models["single"]), [src], tmp_path / "out", cfg, progress=False)
    assert out.name == "cells" + {"imagej": ".tif", "ome-tiff": ".ome.tif", "ome-zarr": ".ome.zarr"}[fmt]
    assert sorted(p.name for p in out.parent.iterdir()) == sorted([out.name, "cells.png"])  # no part left
    got = _read(out)
    assert got.shape == (2, 2, 2, 74, 90) and got.dtype == np.float32
    np.testing.assert_array_equal(got, _in_memory(models["single"], src, block))
    whole = _in_memory(models["single"], src, 1024)
    assert np.abs(got - whole).max() <= 0.02 * np.abs(whole).max()


def test_multiframe_model_streams_a_movie(tmp_path, models):
    src = _czi(tmp_path / "movie.czi", (5, 1, 1, 30, 26))
    cfg = PredictConfig(device="cpu", tile=24, overlap=4, block=16, format="ome-zarr")
    [out] = predict_files(str(models["movie"]), [src], tmp_path / "out", cfg, progress=False)
    np.testing.assert_array_equal(_read(out), _in_memory(models["movie"], src, 16))


def test_ome_zarr_reads_back_with_scale_channels_pyramid_and_lineage(tmp_path, models):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    src = _czi(tmp_path / "wide.czi", (1, 2, 1, 300, 310), pixel_um=0.14, names={0: "DAPI", 1: "mito"})
    proc = run_bpho("predict", "--model", models["single"], src, "--out", tmp_path / "out", "--format", "ome-zarr",
                    "--device", "cpu", "--block", "128", "--tile", "64")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out" / "wide.ome.zarr"
    assert proc.stdout.split() == [str(out)]
    [node] = list(Reader(parse_url(str(out)))())
    axes = node.metadata["axes"]
    assert [a["name"] for a in axes] == ["t", "c", "z", "y", "x"] and axes[-1]["unit"] == "micrometer"
    scales = [t[0]["scale"] for t in node.metadata["coordinateTransformations"]]
    assert scales[0][-2:] == pytest.approx([0.07, 0.07])  # LR 0.14 um / scale 2
    assert scales[1][-2:] == pytest.approx([0.14, 0.14]) and len(node.data) == 2  # 620 px -> 310 px level
    assert node.metadata["channel_names"] == ["DAPI", "mito"]
    full, half = (np.asarray(level) for level in node.data)
    assert full.shape == (1, 2, 1, 600, 620) and half.shape == (1, 2, 1, 300, 310)
    np.testing.assert_allclose(half, full.reshape(1, 2, 1, 300, 2, 310, 2).mean(axis=(4, 6)), rtol=1e-5, atol=1e-3)
    lineage = zarr.open_group(str(out), mode="r").attrs["ome"]["multiscales"][0]["metadata"]["bpho"]
    assert lineage["model"] == str(models["single"]) and lineage["run_id"] == "0a1b2c"
    assert lineage["dataset_digest"] == "d1g35t" and lineage["source"] == str(src)
    assert (tmp_path / "out" / "wide.png").is_file()


@pytest.mark.unit
def test_percentiles_of_a_huge_series_come_from_a_subsample(monkeypatch):
    import dask.array as da

    import bpho.predict as predict

    rng = np.random.default_rng(3)
    series = rng.gamma(2.0, 50.0, (12, 300, 280)).astype(np.float32)
    exact = normalisation(series, 2, 99.8)
    monkeypatch.setattr(predict, "EXACT_PERCENTILE_PIXELS", 100_000)  # the sample is used above this
    lazy = normalisation(da.from_array(series, chunks=(1, 100, 100)), 2, 99.8)
    assert lazy != exact  # a subsample, not the whole series...
    assert lazy == pytest.approx(exact, rel=0.03)  # ... with nearly the same percentiles


def test_existing_output_and_bad_dask_address_are_refused_in_one_line(tmp_path, models):
    src = _czi(tmp_path / "a.czi", (1, 1, 1, 20, 20))
    out = tmp_path / "out"
    cfg = dict(device="cpu", tile=24, overlap=4)
    predict_files(str(models["single"]), [src], out, PredictConfig(**cfg), progress=False)
    before = (out / "a.tif").read_bytes()
    assert_one_line_error(run_bpho("predict", "--model", models["single"], src, "--out", out, "--device", "cpu"),
                          "a.tif", "already exists", "--overwrite")
    assert (out / "a.tif").read_bytes() == before
    predict_files(str(models["single"]), [src], out, PredictConfig(**cfg, overwrite=True), progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "a.tif"]
    with pytest.raises(BphoError, match="--dask local:two.*local:N"):
        PredictConfig(**cfg, dask="local:two")




def test_channels_on_purpose_one_model_per_channel_and_the_pixel_size_warning(tmp_path, models, capsys):
    """A model trained on 'GFP' predicts that channel of a 3-channel file and says so; --channels all takes
    every channel; DAPI=... mito=... puts two models' channels into one output, each as its model alone
    predicts it; a pixel size 2x the training data's is warned about with both numbers."""
    import json

    from bpho.errors import BphoWarning

    gfp = tmp_path / "gfp"
    meta = json.loads((models["single"] / "bpho_model.json").read_text())
    (gfp).mkdir()
    (gfp / "weights.safetensors").write_bytes((models["single"] / "weights.safetensors").read_bytes())
    (gfp / "bpho_model.json").write_text(json.dumps(
        {**meta, "input": {"channel": 1, "channel_name": "GFP", "pixel_size_um": [0.1, 0.1]}}))
    src = _czi(tmp_path / "three.czi", (3, 3, 1, 30, 34), pixel_um=0.2, names={0: "DAPI", 1: "GFP", 2: "mito"})
    cfg = dict(device="cpu", tile=24, overlap=4, format="ome-zarr")
    with pytest.warns(BphoWarning, match=r"pixel size 0\.2 x 0\.2 um.*0\.1 x 0\.1 um"):
        [one] = predict_files(str(gfp), [src], tmp_path / "one", PredictConfig(**cfg), progress=False)
    assert "predicting channel 1 'GFP' only" in capsys.readouterr().err
    every = predict_files(str(gfp), [src], tmp_path / "all", PredictConfig(**cfg, channels="all"), progress=False)[0]
    got_one, got_all = _read(one), _read(every)
    assert got_one.shape[1] == 1 and got_all.shape[1] == 3
    np.testing.assert_array_equal(got_one[:, 0], got_all[:, 1])
    attrs = zarr.open_group(str(every), mode="r").attrs["ome"]
    assert [c["label"] for c in attrs["omero"]["channels"]] == ["DAPI", "GFP", "mito"]

    [pair] = predict_files([f"DAPI={models['single']}", f"2={models['movie']}"], [src], tmp_path / "pair",
                           PredictConfig(**cfg), progress=False)
    assert "each with its own model; left out (no --model for them): channel 1 'GFP'" in capsys.readouterr().err
    got_pair = _read(pair)
    assert got_pair.shape[1] == 2
    np.testing.assert_array_equal(got_pair[:, 0], got_all[:, 0])  # DAPI by the same weights
    movie_alone = _in_memory(models["movie"], src, 1024)
    np.testing.assert_array_equal(got_pair[:, 1], movie_alone[:, 2])
    lineage = zarr.open_group(str(pair), mode="r").attrs["ome"]["multiscales"][0]["metadata"]["bpho"]
    assert [(c["name"], c["source_channel"]) for c in lineage["channels"]] == [("DAPI", 0), ("mito", 2)]
    with pytest.raises(BphoError, match="'nucleus'.*0 'DAPI', 1 'GFP', 2 'mito'"):
        predict_files(str(gfp), [src], tmp_path / "bad", PredictConfig(**cfg, channels="nucleus"), progress=False)
    assert not (tmp_path / "bad").exists()


def test_a_corrupt_input_chunk_stops_the_run_and_leaves_nothing(tmp_path, models):
    """A tiled, compressed TIFF whose last tiles were cut off: the first file's output and the second's part
    are both gone, and the error names the file."""
    from bpho.errors import FileFormatError

    good = _czi(tmp_path / "good.czi", (1, 1, 1, 40, 40))
    bad = tmp_path / "cut.tif"
    rng = np.random.default_rng(5)
    tifffile.imwrite(bad, rng.integers(0, 4000, (96, 96), dtype=np.uint16), tile=(16, 16), compression="zlib")
    with tifffile.TiffFile(bad) as tf:
        page = tf.pages[0]
        last = page.dataoffsets[-1] + page.databytecounts[-1] // 2
    with open(bad, "r+b") as fh:
        fh.seek(last)
        fh.write(b"\xff" * 64)  # garbage inside the last tile's stream
    out = tmp_path / "out"
    with pytest.raises(FileFormatError, match="cut.tif"):
        predict_files(str(models["single"]), [good, bad], out, PredictConfig(device="cpu", tile=24, overlap=4),
                      progress=False)
    assert not out.exists() or list(out.iterdir()) == []
