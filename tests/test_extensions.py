"""Extension points and settings: a degradation registered from outside bpho (here, from this
test module) is offered and used everywhere bpho names degradations; every setting (flags,
``--set``, recipe files, degradation parameters) goes through one converter."""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import numpy as np
import pytest
import yaml
from scipy import ndimage

from bpho import datasets
from bpho.cli import build_parser, main
from bpho.config import (DegradationStudyConfig, EvaluateConfig, ExportConfig, SynthesizeConfig, Transform, convert,
                         from_args, from_settings)
from bpho.datasets import recipe
from bpho.degrade import DEGRADATIONS, DegradationModel, as_float, bin_area, check_scale, like_input, register
from bpho.errors import BphoError

from conftest import build_world, use_world
from test_mlproject import REPO


# --- a toy degradation, declared here as a module of bpho/degrade declares its own


@dataclass(frozen=True)
class BlurParams:
    scale: int = 4
    sigma_px: float = 1.0  # Gaussian blur, in HR pixels
    noise: float = 0.01  # Gaussian noise, x the LR's 99.9th percentile

    def validated(self) -> "BlurParams":
        if self.sigma_px < 0 or self.noise < 0 or self.scale < 1:
            raise BphoError("blur: sigma_px >= 0, noise >= 0, scale >= 1")
        return self


def blur_degrade(hr, p: BlurParams, rng=None, hr_pixel_um=None, expected=False):
    x = as_float(hr)
    check_scale(x, p.scale)
    lr = bin_area(ndimage.gaussian_filter(x, (0, p.sigma_px, p.sigma_px), mode="reflect"), p.scale)
    if not expected and p.noise:
        lr = lr + (rng or np.random.default_rng()).normal(0, p.noise * np.percentile(lr, 99.9), lr.shape)
    return like_input(lr, hr)


SIGMA, NOISE = (0.0, 4.0), (1e-3, 0.2)


def blur_search(pairs):
    def suggest(trial) -> dict:
        return {"sigma_px": trial.suggest_float("sigma_px", *SIGMA),
                "noise": trial.suggest_float("noise", *NOISE, log=True)}

    return suggest


BLUR = DegradationModel("blur", BlurParams, blur_degrade, search=blur_search)


@contextlib.contextmanager
def registered(model: DegradationModel):
    """`model` in the registry for the block only (other tests see the registry as bpho has it)."""
    register(model)
    try:
        yield model
    finally:
        DEGRADATIONS.pop(model.name)


@pytest.fixture
def blur():
    with registered(BLUR) as model:
        yield model


@pytest.fixture(scope="module")
def world(demo, tmp_path_factory):
    return build_world(demo, tmp_path_factory.mktemp("ext-root"), sources=[("paired", "pairs", "paired"),
                                                                          ("hr_only", "hr_only", "hr")])


def _choices(*command: str) -> list:
    """The --degradation choices the `bpho` parser offers for `command`."""
    parser = build_parser()
    sub = next(a for a in parser._subparsers._group_actions).choices[command[0]]
    for word in command[1:]:
        sub = next(a for a in sub._subparsers._group_actions).choices[word]
    return next(a for a in sub._actions if a.dest == "degradation").choices


def test_a_registered_degradation_is_offered_by_every_command():
    assert "blur" not in _choices("synthesize") and "blur" not in _choices("tune", "degradation")
    with pytest.raises(BphoError, match="degradation 'blur': use one of classic, physical, fitted"):
        SynthesizeConfig("hr_only", "blur", "d")
    with registered(BLUR):
        assert _choices("synthesize") == ["classic", "physical", "fitted", "blur"]
        assert _choices("tune", "degradation") == ["classic", "physical", "blur"]  # fitted is estimated, not searched
        args = build_parser().parse_args(["synthesize", "--datasource", "h", "--degradation", "blur", "--dataset", "d"])
        assert args.degradation == "blur" and SynthesizeConfig("h", "blur", "d").degradation == "blur"
        assert DegradationStudyConfig("pairs", "blur").degradation == "blur"
        # a degradation estimated from pairs, not searched, is refused by the study in one line
        with pytest.raises(BphoError, match="^tune degradation: degradation 'fitted': use one of classic, physical, "
                                            "blur$"):
            DegradationStudyConfig("pairs", "fitted")
    assert "blur" not in _choices("synthesize")  # unregistered: gone again


def test_synthesize_builds_a_dataset_with_it(blur, world, monkeypatch, tmp_path, capsys):
    use_world(monkeypatch, world, tmp_path)
    code = main(["synthesize", "--datasource", "hr_only", "--degradation", "blur", "--dataset", "syn_blur", "--set",
                 "sigma_px=2", "--set", "noise=0", "--set", "tile_sizes=64", "--set", "tiles_per_image=4"])
    assert code == 0 and "sigma_px=2.0, noise=0.0" in capsys.readouterr().out
    ds = datasets.open("syn_blur")
    assert ds.manifest["degradation"] == {"name": "blur", "parameters": {"scale": 4, "sigma_px": 2.0, "noise": 0.0},
                                          "fitted_on": None}
    # each LR tile is the blurred, binned HR tile (up to each image's normalisation: affine), with this sigma
    lr, hr = ds.tiles(64, "train")
    assert len(lr) > 0

    def misfit(sigma: float) -> float:
        worst = 0.0
        for lo, hi in zip(lr[:, 0], hr[:, 0]):
            model = bin_area(ndimage.gaussian_filter(hi.astype(np.float64), sigma, mode="reflect"), 4)[4:-4, 4:-4]
            real = lo[4:-4, 4:-4].astype(np.float64)
            a, b = np.polyfit(model.ravel(), real.ravel(), 1)
            worst = max(worst, float(np.std(real - (a * model + b)) / np.std(real)))
        return worst

    assert misfit(2.0) < 0.01 and misfit(1.0) > 0.03


def test_tune_degradation_searches_its_space(blur, world, monkeypatch, tmp_path, capsys):
    import optuna

    from bpho.tune.study import default_storage

    use_world(monkeypatch, world, tmp_path)
    assert main(["tune", "degradation", "--datasource", "pairs", "--degradation", "blur", "--trials", "4",
                 "--max-pairs", "2"]) == 0
    out = capsys.readouterr().out
    assert "study degradation-blur-pairs" in out and "--degradation blur --set scale=4 --set sigma_px=" in out
    study = optuna.load_study(study_name="degradation-blur-pairs", storage=default_storage())
    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(trials) == 4
    assert all(set(t.params) == {"sigma_px", "noise"} for t in trials)  # its own space, nothing else
    assert all(SIGMA[0] <= t.params["sigma_px"] <= SIGMA[1] and NOISE[0] <= t.params["noise"] <= NOISE[1]
               for t in trials)
    assert len({t.params["sigma_px"] for t in trials}) == 4  # searched, not one fixed value
    assert study.best_value == min(t.value for t in trials) and np.isfinite(study.best_value)


# --- one converter


def test_convert_turns_text_and_values_into_the_fields_types():
    assert convert(Tuple[int, ...], "64, 128", "x") == (64, 128) == convert(Tuple[int, ...], [64, 128], "x")
    assert convert(Tuple[float, float], "0.02", "x") == (0.02, 0.02)  # one value: a range of one
    assert convert(Optional[float], "none", "x") is None and convert(Optional[float], "35", "x") == 35.0
    assert convert(bool, "on") is True and convert(bool, "False") is False and convert(bool, True) is True
    assert convert(Union[int, str], "3") == 3 and convert(Union[int, str], "max") == "max"
    assert convert(Transform, "flow") is Transform.FLOW and convert(float, 2) == 2.0
    for hint, text, needle in [(int, "abc", "x=abc: not a valid int"), (bool, "maybe", "not a valid bool"),
                               (Tuple[float, float], "1,2,3", "2 comma-separated values"),
                               (Transform, "sideways", "x 'sideways': use one of translation, similarity, flow, auto"),
                               (int, 2.5, "not a valid int")]:
        with pytest.raises(BphoError, match=needle):
            convert(hint, text, "x")


def test_flags_set_items_recipe_files_and_degradation_parameters_convert_alike(tmp_path):
    base = recipe.load("paired_001").recipe
    # the same text through a flag, a recipe --set item and a degradation parameter
    flag = build_parser().parse_args(["train", "--dataset", "d", "--model-decoder-widths", "64,32"])
    assert getattr(flag, "model.decoder_widths") == (64, 32)
    assert recipe.with_overrides(base, ["tile_sizes=64,32"]).tile_sizes == (64, 32)
    assert BLUR.params_from({"sigma_px": "2", "scale": "2"}) == BlurParams(scale=2, sigma_px=2.0)
    assert from_settings(BlurParams, ["noise=0.5"], "--set") == BlurParams(noise=0.5)
    # and the same mistakes get the same one-line message
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--dataset", "d", "--model-decoder-widths", "64,x"])
    with pytest.raises(BphoError, match=r"^--set tile_sizes=x: not a valid int"):
        recipe.with_overrides(base, ["tile_sizes=64,x"])
    with pytest.raises(BphoError, match=r"^degradation blur sigma_px=wide: not a valid float"):
        BLUR.params_from({"sigma_px": "wide"})
    with pytest.raises(BphoError, match=r"^degradation blur colour: not a setting; use KEY=VALUE with KEY one of "
                                        r"scale, sigma_px, noise$"):
        BLUR.params_from({"colour": "red"})
    # a recipe file: its values are converted (the transform is a Transform) or refused in one line naming the file
    good = tmp_path / "flowing.py"
    good.write_text("from bpho.datasets import Recipe\nRECIPE = Recipe(datasource='x', transform='flow', "
                    "tile_sizes=[64, 128])\n")
    r = recipe.load(str(good)).recipe
    assert r.transform is Transform.FLOW and r.tile_sizes == (64, 128)
    assert recipe.with_overrides(r, ["transform=similarity"]).transform is Transform.SIMILARITY
    bad = tmp_path / "sideways.py"
    bad.write_text("from bpho.datasets import Recipe\nRECIPE = Recipe(datasource='x', transform='sideways')\n")
    with pytest.raises(BphoError, match=rf"^{bad}: recipe: transform 'sideways': use one of translation, similarity"):
        recipe.load(str(bad))


def test_recipe_parameters_serialise_as_before():
    """The text the dataset digests cover: the transform a plain string, as before it was an enum
    (sha256 of the shipped recipes' parameters, taken before the change)."""
    before = {"paired_001": "c3001c54ebe0", "movie_001": "8167656c7378", "denoise_001": "efa98e60d79c"}
    for name, digest in before.items():
        params = recipe.load(name).recipe.params()
        assert type(params["transform"]) is str and params["transform"] == "auto"
        text = json.dumps(params, sort_keys=True, separators=(",", ":"))
        assert hashlib.sha256(text.encode()).hexdigest()[:12] == digest, name


def test_evaluate_export_synthesize_and_dataset_make_take_their_flags_and_defaults_from_configs(monkeypatch):
    import test_mlproject
    from bpho.evaluate import evaluate
    from bpho.export import export_bioimageio

    entry_points = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]
    monkeypatch.setattr(test_mlproject, "CONFIGS", {
        "evaluate": ("EvaluateConfig", set()), "export": ("ExportConfig", set()),
        "synthesize_lowres": ("SynthesizeConfig", set()), "make_dataset": ("DatasetMakeConfig", {"dataset"})})
    assert test_mlproject.disagreements(entry_points) == []
    entry_points["export"]["parameters"]["format"]["default"] = "onnx"  # the check can fail
    wrong = "export: format defaults to 'onnx', ExportConfig to 'bioimageio'"
    assert test_mlproject.disagreements(entry_points) == [wrong]
    # the library's defaults are the configs' (written once)
    assert inspect.signature(evaluate).parameters["device"].default is EvaluateConfig.device
    assert inspect.signature(evaluate).parameters["transform"].default is EvaluateConfig.transform
    assert inspect.signature(export_bioimageio).parameters["license"].default is ExportConfig.license
    args = build_parser().parse_args(["export", "--model", "m", "--out", "o.zip", "--author", "A", "--author", "B"])
    assert from_args(ExportConfig, args) == ExportConfig("m", "o.zip", author=("A", "B"))
    with pytest.raises(SystemExit):  # --dataset or --datasource, one of them
        build_parser().parse_args(["evaluate", "--model", "m"])
