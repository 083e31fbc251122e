"""synthesize_lowres: datasets of synthetic pairs.

- `degradation(...)`: a degradation model by name with its parameters (``fitted``: fitted
  on the registered pairs of a paired datasource, `registered_pairs`);
- `synthesize(...)`: HR images of a datasource (kind ``hr``, or the HR side of a paired or
  movie one) -> LR by a degradation model -> the same builder as make_dataset (tiles,
  splits, manifest); the manifest and MLflow record the degradation, its parameters and,
  for ``fitted``, the pairs it was fitted on.

Choosing a degradation (how close its LR is to real LR, a study over its parameters, and
training on real vs synthetic pairs) is in `bpho.tune.degradation`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from bpho import datasets, datasources
from bpho.config import MOVIE_RECIPE, PAIRED_RECIPE, SynthesizeConfig, key_values
from bpho.datasets import builder, sources
from bpho.datasets import recipe as recipes
from bpho.datasets.register import apply_registration, normalize, percentile_range, register_pair
from bpho.degrade import degradation_model
from bpho.degrade.fitted import RegisteredPair
from bpho.errors import BphoError


def registered_pairs(datasource: str, recipe: str = PAIRED_RECIPE, split: Optional[str] = None,
                     max_pairs: Optional[int] = None, progress: bool = False,
                     recipe_settings: Sequence[str] = ()) -> List[RegisteredPair]:
    """First frames of a paired datasource's pairs, HR registered onto LR as the recipe (with
    `recipe_settings`, e.g. transform=flow) registers them. `split` ('train' / 'valid'): only the
    pairs the recipe puts there (fit on train, judge on valid)."""
    r = recipes.with_overrides(recipes.load(recipe).recipe, recipe_settings).validated()
    ds = datasources.open(datasource, verify=True, progress=False)
    if not ds.pairs:
        raise BphoError(f"datasource {datasource!r} (kind {ds.kind}) has no LR/HR pairs; fitting needs real pairs")
    pixel = sources.pixel_sizes(ds)
    assigned = sources.split_sources([p.stem for p in ds.pairs], r.valid_fraction, r.seed, r.test_fraction)
    chosen = [p for p in ds.pairs if split is None or assigned[p.stem] == split][:max_pairs]
    out = []
    for pair in tqdm(chosen, desc="register", unit="pair", disable=not progress):
        lr = sources.plane_stack(pair.lr, 0, r.channel, r.z)[0]
        hr = sources.plane_stack(pair.hr, 0, r.channel, r.z)[0]
        reg = register_pair(normalize(lr, *percentile_range(lr, r.percentile_low, r.percentile_high)),
                            normalize(hr, *percentile_range(hr, r.percentile_low, r.percentile_high)), r.scale,
                            r.transform)
        aligned = apply_registration(hr[None], reg)[0]
        out.append(RegisteredPair(pair.stem, lr, aligned, pixel.get(pair.hr) or 0.0, reg.margin))
    return out


@dataclass
class Degradation:
    """A degradation by name with its parameters (and, for fitted, what it was fitted on): HR -> LR."""

    name: str
    params: Any  # the degradation's parameter dataclass
    fitted_on: Optional[dict] = None

    def record(self) -> dict:
        """What the manifest and MLflow record: name, parameters and what it was fitted on."""
        return {"name": self.name, "parameters": asdict(self.params), "fitted_on": self.fitted_on}

    def __call__(self, hr: np.ndarray, hr_pixel_um: Optional[float] = None, rng=None, expected: bool = False):
        """LR from `hr` (a sample; the noise-free mean with `expected`)."""
        return degradation_model(self.name).degrade(hr, self.params, rng=rng, hr_pixel_um=hr_pixel_um,
                                                    expected=expected)


def degradation(name: str, settings: Mapping[str, object] | Iterable[str] = (), fit_on: Optional[str] = None,
                recipe: str = PAIRED_RECIPE, progress: bool = False,
                recipe_settings: Sequence[str] = ()) -> Degradation:
    """A registered degradation (bpho/degrade) by name with parameters (values or text); one
    estimated from pairs (``fitted``) is fitted on the training pairs of `fit_on` (given settings
    then override fitted values)."""
    model = degradation_model(name)
    settings = dict(settings) if isinstance(settings, Mapping) else dict[str, Any](key_values(settings))
    settings.setdefault("scale", recipes.load(recipe).recipe.scale)
    if model.fit is None:
        return Degradation(name, model.params_from(settings))
    if not fit_on:
        raise BphoError(f"degradation {name}: name the paired datasource to fit on (--fit-on NAME)")
    pairs = registered_pairs(fit_on, recipe, split="train", progress=progress, recipe_settings=recipe_settings)
    result = model.fit(pairs, scale=int(settings["scale"]))
    params = model.params_from({**asdict(result.params), **settings})
    ds = datasources.open(fit_on, verify=False)
    return Degradation(name, params, fitted_on={"datasource": fit_on, "digest": ds.digest, "pairs": result.pairs,
                                                "explained": result.explained})


def split_settings(name: str, items: Iterable[str]) -> Tuple[Dict[str, str], List[str]]:
    """``--set`` KEY=VALUE items as degradation `name`'s parameters and recipe fields (KEY=VALUE
    strings); a key that is neither is refused in one line."""
    settings = key_values(items)
    own = {f.name for f in fields(degradation_model(name).params)}
    recipe_fields = {f.name for f in fields(recipes.Recipe)}
    unknown = [k for k in settings if k not in own and k not in recipe_fields]
    if unknown:
        raise BphoError(f"synthesize: --set {unknown[0]}: neither a {name} parameter ({', '.join(sorted(own))}) nor a "
                        "recipe field")
    return ({k: v for k, v in settings.items() if k in own},
            [f"{k}={v}" for k, v in settings.items() if k not in own])


def run(cfg: SynthesizeConfig, progress: bool = True) -> Tuple[Degradation, datasets.Dataset]:
    """`bpho synthesize`: the degradation `cfg` names, with its ``--set`` parameters, and the
    dataset it makes from the HR of ``cfg.datasource`` (the other ``--set`` items are recipe
    fields)."""
    own, recipe_settings = split_settings(cfg.degradation, cfg.set)
    deg = degradation(cfg.degradation, own, fit_on=cfg.fit_on, recipe=cfg.recipe or PAIRED_RECIPE, progress=progress)
    ds = synthesize(cfg.datasource, deg, cfg.dataset, recipe=cfg.recipe, force=cfg.force, progress=progress,
                    recipe_settings=recipe_settings)
    return deg, ds


def synthesize(datasource: str, degradation_: Degradation, dataset: str, recipe: Optional[str] = None,
               recipe_settings: Iterable[str] = (), force: bool = False, progress: bool = True,
               track: bool = True) -> datasets.Dataset:
    """Dataset `dataset` of synthetic pairs from the HR images of `datasource`."""
    ds = datasources.open(datasource, verify=False)
    recipe = recipe or (MOVIE_RECIPE if ds.kind == "movie" else PAIRED_RECIPE)
    return builder.make(recipe, datasource=datasource,
                        settings=[f"scale={degradation_.params.scale}", *recipe_settings],
                        name=dataset, force=force, progress=progress, track=track,
                        lr_provider=sources.DegradedLR(record=degradation_.record(), degrade=degradation_))

