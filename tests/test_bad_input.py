"""Bad input, table-driven (the list in README.md): each case gives one line naming the input and
the problem, exit code 2, no traceback, and writes nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from bpho import io

from conftest import assert_one_line_error, build_world, run_bpho


@pytest.fixture(scope="module")
def world(demo, tmp_path_factory):
    """Demo datasources, a small dataset and a small registered model (`tiny`), under one root."""
    root = build_world(demo, tmp_path_factory.mktemp("bad-input-root"), tracking_uri=None,
                       datasets=[("paired_001", "pairs", "tiny", ["tile_sizes=64", "tiles_per_image=8"])])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        run_bpho("train", "--dataset", "tiny", "--epochs", "1", "--model-encoder", "test_resnet", "--model-decoder-widths",
                 "16,8,8,8,8", "--model-name", "tiny", root=root, check=True)
    return root


def _czi(demo: Path) -> Path:
    return sorted((demo / "paired" / "lr").glob("*.czi"))[0]


def truncated_czi(d, demo):
    data = _czi(demo).read_bytes()
    (d / "cut.czi").write_bytes(data[:len(data) // 2])
    return ["info", d / "cut.czi"], ["cut.czi", "truncated"]


def text_named_czi(d, demo):
    (d / "notes.czi").write_text("exposure 20 ms, gain 600\n")
    return ["datasource", "add", "notes", d, "--kind", "hr"], ["notes.czi", "not a CZI"]


def empty_file(d, demo):
    (d / "empty.tif").write_bytes(b"")
    return ["predict", "--model", "models:/tiny/latest", d / "empty.tif", "--out", d / "out"], ["empty.tif", "empty"]


def nan_tiff(d, demo):
    img = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    img[5, 7] = np.nan
    tifffile.imwrite(d / "nan.tif", img)
    return ["predict", "--model", "models:/tiny/latest", d / "nan.tif", "--out", d / "out"], ["nan.tif", "NaN"]


def inf_tiff(d, demo):
    img = np.ones((32, 32), np.float32)
    img[0, 0] = np.inf
    tifffile.imwrite(d / "inf.tif", img)
    return ["predict", "--model", "models:/tiny/latest", d / "inf.tif", "--out", d / "out"], ["inf.tif", "infinite"]


def all_zero(d, demo):
    tifffile.imwrite(d / "zero.tif", np.zeros((32, 32), np.uint16))
    return ["predict", "--model", "models:/tiny/latest", d / "zero.tif", "--out", d / "out"], ["zero.tif", "all zero"]


def rgb_for_grey(d, demo):
    tifffile.imwrite(d / "rgb.tif", (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8),
                     photometric="rgb")
    return ["predict", "--model", "models:/tiny/latest", d / "rgb.tif", "--out", d / "out"], ["rgb.tif", "RGB"]


def shapes_off_scale(d, demo):
    for side, size in (("lr", 30), ("hr", 128)):
        (d / "src" / side).mkdir(parents=True)
        io.write_imagej(d / "src" / side / "a.tif", np.ones((1, 1, 1, size, size), np.uint16) * 100, pixel_size=(None, 0.1, 0.1))
    run_bpho("datasource", "add", "offscale", d / "src", "--kind", "paired", check=True)
    return ["dataset", "make", "paired_001", "--datasource", "offscale", "--name", "offscale"], ["a.tif", "scale=4"]


def movie_too_short(d, demo):
    for side, size in (("lr", 64), ("hr", 256)):
        (d / "mv" / side).mkdir(parents=True)
        frames = np.random.default_rng(1).integers(100, 900, (3, 1, 1, size, size)).astype(np.uint16)
        io.write_imagej(d / "mv" / side / "m.tif", frames, pixel_size=(None, 0.1, 0.1))
    run_bpho("datasource", "add", "short_movie", d / "mv", "--kind", "movie", check=True)
    return (["dataset", "make", "movie_001", "--datasource", "short_movie", "--name", "short"],
            ["m.tif", "3 frames", "frames=5"])


def unknown_recipe(d, demo):
    return ["dataset", "make", "paired_999"], ["paired_999", "not found"]


def unknown_encoder(d, demo):
    return ["train", "--dataset", "tiny", "--model-encoder", "resnet_9000"], ["resnet_9000", "timm"]


def tile_larger_than_image(d, demo):
    return (["dataset", "make", "paired_001", "--datasource", "pairs", "--name", "huge", "--set", "tile_sizes=4096"],
            ["4096", "larger than the image"])


def missing_model(d, demo):
    shutil.copy(_czi(demo), d / "lr.czi")
    return ["predict", "--model", "models:/no_such_model/3", d / "lr.czi", "--out", d / "out"], ["no_such_model"]


def escaping_name(d, demo):
    shutil.copy(_czi(demo), d / "lr.czi")
    return ["datasource", "add", "../../etc", d, "--kind", "hr"], ["../../etc"]


CASES = [truncated_czi, text_named_czi, empty_file, nan_tiff, inf_tiff, all_zero, rgb_for_grey, shapes_off_scale,
         movie_too_short, unknown_recipe, unknown_encoder, tile_larger_than_image, missing_model, escaping_name]


def _files(root: Path) -> set:
    """What a run could have written: everything but MLflow's own store (runs are allowed, not data)."""
    return {p.relative_to(root) for p in root.rglob("*")
            if not p.name.startswith("mlflow.db") and "mlartifacts" not in p.parts}


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_bad_input_gives_one_line_and_writes_nothing(case, world, demo, tmp_path, monkeypatch):
    monkeypatch.setenv("BPHO_ROOT", str(world))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{world / 'mlflow.db'}")
    d = tmp_path / "in"
    d.mkdir()
    argv, needles = case(d, demo)
    before, inputs = _files(world), _files(d)
    proc = run_bpho(*argv)
    assert_one_line_error(proc, *needles)
    assert proc.stdout == ""
    assert _files(world) == before  # no datasource, dataset, checkpoint or temporary folder appeared
    assert {p for p in _files(d) if p.parts[0] != "out"} == inputs and not any((d / "out").glob("*"))
