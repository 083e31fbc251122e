"""Channels and pixel size on purpose (#22): what a dataset and its model record of their input,
and which channels of a file `bpho predict` runs them on (bpho.channels)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from bpho import datasources, io
from bpho.channels import check_pixel_size, model_input, parse_model_specs, plan_channels
from bpho.config import TrainConfig
from bpho.datasets import builder
from bpho.errors import BphoError
from bpho.inference import load_model
from bpho.tracking import download_model
from bpho.train import train

NAMES = {0: "DAPI", 1: "GFP", 2: "mito"}


def _czi(path: Path, channels: int, names=None, pixel_um=(0.1, 0.1)) -> io.Image:
    """A real CZI (pylibCZIrw) of `channels` channels named `names`, read back by bpho.io."""
    data = np.random.default_rng(0).poisson(20, (1, channels, 1, 16, 16)).astype(np.uint16)
    io.write_czi(path, data, (None, *pixel_um), channel_names=names)
    return io.read(path)


def _model(channel=None, name=None, pixel_um=None) -> dict:
    """A model meta as training writes it (`input` is what the dataset manifest recorded)."""
    return {"input": {"channel": channel, "channel_name": name, "pixel_size_um": pixel_um}}


@pytest.fixture
def three(tmp_path) -> io.Image:
    return _czi(tmp_path / "three.czi", 3, NAMES)


@pytest.mark.unit
def test_one_model_predicts_its_training_channel_by_name_else_by_index(three, tmp_path):
    assert three.channel_names == ("DAPI", "GFP", "mito")
    # trained on channel 0 of files that named it GFP: here GFP is channel 1, and the name wins
    plan = plan_channels(three.channel_names, 3, {None: _model(0, "GFP")}, None, "three.czi")
    assert plan.channels == [(1, None)] and plan.names == ["GFP"]
    assert "channel 1 'GFP' only" in plan.message and "--channels all" in plan.message
    # a model whose training files named no channel: its index
    plan = plan_channels(three.channel_names, 3, {None: _model(2)}, None)
    assert plan.channels == [(2, None)] and plan.names == ["mito"]
    # a file that names no channel: the index, whatever the model calls it
    unnamed = _czi(tmp_path / "unnamed.czi", 3)
    assert unnamed.channel_names == (None, None, None)
    assert plan_channels(unnamed.channel_names, 3, {None: _model(1, "mito")}, None).channels == [(1, None)]
    # a single-channel file is predicted whatever it is called
    single = _czi(tmp_path / "single.czi", 1, {0: "DAPI"})
    plan = plan_channels(single.channel_names, 1, {None: _model(1, "GFP")}, None)
    assert plan.channels == [(0, None)] and plan.names == ["DAPI"]
    # a model trained before bpho recorded its channel: every channel, as bpho did then, and says so
    plan = plan_channels(three.channel_names, 3, {None: {"model": {}}}, None)
    assert [c for c, _ in plan.channels] == [0, 1, 2] and "does not record" in plan.message


@pytest.mark.unit
def test_a_training_channel_the_file_lacks_is_one_line_naming_the_files_channels(three):
    with pytest.raises(BphoError, match=r"three.czi: .*'RFP'.*0 'DAPI', 1 'GFP', 2 'mito'.*--channels") as exc:
        plan_channels(three.channel_names, 3, {None: _model(1, "RFP")}, None, "three.czi")
    assert "\n" not in str(exc.value)
    with pytest.raises(BphoError, match=r"channel 3.*has 3 channels.*--channels"):
        plan_channels((), 3, {None: _model(3)}, None, "three.czi")


@pytest.mark.unit
def test_channels_spec_picks_names_and_indices_in_file_order(three):
    names, model = three.channel_names, {None: _model(1, "GFP")}
    plan = plan_channels(names, 3, model, "all")
    assert plan.channels == [(0, None), (1, None), (2, None)] and plan.names == ["DAPI", "GFP", "mito"]
    plan = plan_channels(names, 3, model, "mito, 0")
    assert plan.channels == [(0, None), (2, None)] and plan.names == ["DAPI", "mito"]
    assert "channels 0 'DAPI', 2 'mito'" in plan.message and "trained on channel 1 'GFP'" in plan.message
    for spec, needle in (("RFP", r"no channel named 'RFP'.*0 'DAPI', 1 'GFP', 2 'mito'"),
                         ("3", r"channel 3 does not exist.*0 'DAPI', 1 'GFP', 2 'mito'"),
                         ("GFP,1", r"channel 1 'GFP' chosen twice"),
                         ("0,", "empty entry")):
        with pytest.raises(BphoError, match=needle):
            plan_channels(names, 3, model, spec, "three.czi")


@pytest.mark.unit
def test_one_model_per_channel_into_one_output(three):
    names = three.channel_names
    gfp, mito = _model(0, "GFP"), _model(0, "mito")
    plan = plan_channels(names, 3, {"mito": mito, "1": gfp}, None)
    assert plan.channels == [(1, "1"), (2, "mito")] and plan.names == ["GFP", "mito"]
    assert "left out" in plan.message and "channel 0 'DAPI'" in plan.message.split("left out")[1]
    with pytest.raises(BphoError, match="--channels all and --model CHANNEL=URI together"):
        plan_channels(names, 3, {"mito": mito, "GFP": gfp}, "all")
    with pytest.raises(BphoError, match="both name channel 1 'GFP'"):
        plan_channels(names, 3, {"GFP": gfp, "1": mito}, None)
    with pytest.raises(BphoError, match="no channel named 'RFP'"):
        plan_channels(names, 3, {"RFP": gfp}, None)


@pytest.mark.unit
def test_model_specs_parse_uris_and_channel_uris():
    assert parse_model_specs(["models:/mito@champion"]) == {None: "models:/mito@champion"}
    assert parse_model_specs(["runs:/0123/model"]) == {None: "runs:/0123/model"}
    assert parse_model_specs(["/models/a=b/model"]) == {None: "/models/a=b/model"}  # a path holding '='
    assert parse_model_specs(["GFP=models:/gfp/1", "2=runs:/0123/model", "mito=./x=y"]) == {
        "GFP": "models:/gfp/1", "2": "runs:/0123/model", "mito": "./x=y"}
    for values, needle in ((["runs:/a/model", "models:/b/1"], "twice without a channel"),
                           (["GFP=runs:/a/model", "GFP=models:/b/1"], "channel 'GFP' is given twice"),
                           (["runs:/a/model", "GFP=models:/b/1"], "name the channel of each"),
                           (["=runs:/a/model"], "both parts"), (["GFP="], "both parts")):
        with pytest.raises(BphoError, match=needle) as exc:
            parse_model_specs(values)
        assert "\n" not in str(exc.value)


@pytest.mark.unit
def test_pixel_size_warning_beyond_ten_percent_names_both_sizes(tmp_path):
    model = _model(0, "mito", [0.1, 0.1])
    near = _czi(tmp_path / "near.czi", 1, pixel_um=(0.105, 0.095))  # 5 % off
    far = _czi(tmp_path / "far.czi", 1, pixel_um=(0.1, 0.115))  # 15 % off along x
    assert check_pixel_size(near.pixel_size[1:], model) is None
    warning = check_pixel_size(far.pixel_size[1:], model, "far.czi")
    assert warning is not None and "far.czi" in warning and "0.1 x 0.115" in warning and "0.1 x 0.1 um" in warning
    assert "+15%" in warning
    # unknown on either side: nothing to compare, nothing said
    assert check_pixel_size((None, None), model) is None
    assert check_pixel_size(far.pixel_size[1:], _model(0)) is None and check_pixel_size((0.5, 0.5), {}) is None


def _two_channel_pairs(demo: Path, folder: Path, names: dict, fields, scale_um: float = 1.0) -> Path:
    """The demo's pairs as 2-channel CZI files named `names`: channel 1 the demo's image, channel 0
    a dim copy turned upside down (another stain); pixel sizes the demo's times `scale_um`."""
    for stem in fields:
        for side in ("lr", "hr"):
            img = io.read(demo / "paired" / side / f"{stem}.czi")
            data = np.concatenate([img.data[:, :, :, ::-1] // 2, img.data], axis=1)
            (folder / side).mkdir(parents=True, exist_ok=True)
            io.write_czi(folder / side / f"{stem}.czi", data, tuple(v * scale_um if v else v for v in img.pixel_size),
                         channel_names=names)
    return folder


def test_dataset_and_model_record_the_channel_and_lr_pixel_size(root, demo, tmp_path):
    """A dataset of a 2-channel CZI built on channel 1 records its name and LR pixel size, and
    a model trained on it (a few steps) carries them in its meta."""
    folder = _two_channel_pairs(demo, tmp_path / "two", {0: "DAPI", 1: "mito"}, fields=("field_000", "field_001"))
    lr = io.read(folder / "lr/field_000.czi")
    assert lr.channel_names == ("DAPI", "mito") and lr.shape[1] == 2
    datasources.add("two", [folder], kind="paired", progress=False)
    ds = builder.make("paired_001", datasource="two", name="two", progress=False, track=False, pngs=False,
                      settings=["channel=1", "tile_sizes=64", "tiles_per_image=6", "valid_fraction=0.5"])
    assert ds.manifest["input"] == {"channel": 1, "channel_name": "mito", "pixel_size_um": list(lr.pixel_size[1:])}
    # outside the digest: the digest is the one of the same manifest without it (as bpho computed it before)
    before = {k: v for k, v in ds.manifest.items() if k != "input"}
    assert datasources.digest_json({**before, "recipe": {k: before["recipe"][k] for k in ("name", "sha256")}},
                                   exclude=("name", "created", "git_commit", "digest")) == ds.digest
    net = {"encoder": "resnet18", "decoder_widths": (16, 8, 8, 8, 8)}
    result = train(TrainConfig(dataset="two", batch_size=8, epochs=1, model=net), progress=False, register=False)
    meta = json.loads((download_model(result.model_uri) / "bpho_model.json").read_text())
    assert meta["input"] == ds.manifest["input"]
    assert load_model(download_model(result.model_uri), device="cpu").meta["input"] == ds.manifest["input"]
    # a dataset built before the manifest recorded its input: its recipe's channel, nothing else, no error
    old = {k: v for k, v in ds.manifest.items() if k != "input"}
    assert model_input(old) == {"channel": 1, "channel_name": None, "pixel_size_um": None}


def test_synthesized_lr_and_files_that_disagree_are_recorded_not_refused(root, demo, tmp_path):
    from bpho import synthesize as sy

    # two HR files: channel 1 named differently, and HR pixels 1.5x apart
    first = _two_channel_pairs(demo, tmp_path / "a", {0: "DAPI", 1: "mito"}, ("field_000",))
    second = _two_channel_pairs(demo, tmp_path / "b", {0: "DAPI", 1: "MitoTracker"}, ("field_001",), 1.5)
    hr = tmp_path / "hr"
    shutil.copytree(first / "hr", hr)
    shutil.copy(second / "hr/field_001.czi", hr)
    datasources.add("hr_two", [hr], kind="hr", progress=False)
    ds = sy.synthesize("hr_two", sy.degradation("classic", {"scale": 4}), "syn_two", track=False, progress=False,
                       recipe_settings=["channel=1", "tile_sizes=64", "tiles_per_image=2", "valid_fraction=0"])
    sizes = [[v * 4 for v in io.read(path).pixel_size[1:]] for path in (hr / "field_000.czi", hr / "field_001.czi")]
    got = ds.manifest["input"]
    assert np.allclose(got["pixel_sizes_um"], sizes) and got["pixel_size_um"] is None
    assert got["channel_names"] == ["mito", "MitoTracker"] and got["channel_name"] is None and got["channel"] == 1
    # a model of such data: by index, and an input within 10 % of its range of pixel sizes passes
    meta = {"input": got}
    assert plan_channels(("DAPI", "GFP"), 2, {None: meta}, None).channels == [(1, None)]
    low, high = sizes[0][0], sizes[1][0]
    assert [check_pixel_size([v] * 2, meta) for v in (low * 0.95, low * 1.05, high * 0.95, high * 1.05)] == [None] * 4
    assert all(check_pixel_size([v] * 2, meta) for v in (low * 0.85, high * 1.15))
