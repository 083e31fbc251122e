"""Dataset recipes: one small Python file per dataset, declaring a `Recipe`.

A recipe file ``bpho/recipes/NAME.py`` (or any ``.py`` path) defines ``RECIPE = Recipe(...)``.
Fields can be overridden from the command line with ``--set key=value``. Values are converted
to the fields' types as every setting is (`bpho.config.convert`: a recipe file's values when the
Recipe is made, ``--set`` text in `with_overrides`); the recipe is validated once here
(`Recipe.validated`) and trusted by the builder.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Dict, Iterable, Tuple, Union

from bpho.config import Transform, _enums, from_settings
from bpho.errors import BphoError, NotFoundError

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


@dataclass(frozen=True)
class Recipe:
    """How to turn a datasource into training tiles.

    datasource: default datasource name (overridable with --datasource).
    kind: the datasource kind it reads: paired (LR/HR), movie (LR/HR time-lapse) or
        denoise (noisy/clean, scale 1).
    channel, z: which channel, and which z plane (an index, or "max" for a maximum projection).
    frames: LR frames per sample, centred on the HR frame (1; 5 for t-2..t+2 of a movie).
    scale: HR pixels per LR pixel along each axis; HR size must be LR size x scale.
    percentile_low, percentile_high: per-image normalisation x -> (x - p_low) / (p_high - p_low),
        CARE-style; the values used are kept in the manifest.
    register: estimate the LR->HR transform and align the pair.
    transform: what registration estimates: "translation" (phase cross-correlation),
        "similarity" (plus rotation and zoom: the sample turned between acquisitions), "flow"
        (plus a smooth local deformation: living cells; optical flow), or "auto" (the default:
        translation, escalated per pair to similarity, then flow, while the residual below stays
        over 0.5 HR px and the next one cuts it by a fifth; the manifest records which). align
        must be "hr" for all but translation.
    align: which side is moved to apply it: "hr" (default: the oversampled HR is interpolated,
        the LR keeps its raw noise, as the model will see at prediction time) or "lr".
    min_registration_score: pairs whose normalised cross-correlation (NCC) after registration is
        below this fraction of the NCC their noise allows an exactly aligned pair
        (register.ncc_limit, recorded as score_limit) are excluded, with a warning naming them.
        Noisy, sparse fields (background around a neuron) have a low NCC however well they are
        aligned: judged against 0.5 itself, 25 of 52 real fields aligned by construction were left
        out; against 0.5 x their limit, one. A pair of high signal to noise is judged as before;
        where noise hides any structure, a wrong pairing cannot be told either (ncc_limit).
    max_residual_hr_px: pairs whose residual misregistration (median over LR tiles of the shift
        between LR and registered HR, in HR pixels) exceeds this are excluded (0: no limit). Only
        tiles whose registered HR has structure clearly above its noise are measured (see
        register.residual): on a sparse field (a neurite in noise) the tiles of pure noise, most
        of them, once made exactly aligned pairs read 17-25 px and left them out; such pairs now
        read 0.25-0.6. The tile residual has a noise floor (0.25-0.4 on the demo, true error 0.1) and
        reads about 0.6 of the true error on the hard demo: 0.75 kept pairs up to 1.1 px off when
        registered by flow, 1.4 by similarity, but two translation-registered pairs 1.8 px off passed.
    tile_sizes: HR tile sides in pixels (multiples of scale); LR tiles are tile / scale.
    tiles_per_image: tiles cut per tile size, per image and time point.
    content_threshold: a tile is kept if at least this fraction of its HR pixels is brighter
        than 0.2 after normalisation (skips background).
    valid_fraction: fraction of source images (never tiles) held out for validation: kept whole,
        training scores them every epoch and keeps the best epoch, so they take part in a choice.
    test_fraction: fraction of source images (never tiles) held out for testing: kept whole like
        validation images, never tiled, never seen by training or by any choice; `bpho evaluate
        --dataset` scores them when there are any. 0 (the default) holds none out, and the dataset
        (its digest included) is exactly what it was before this field existed.
    seed: seeds the split and the tile positions.
    """

    datasource: str
    kind: str = "paired"
    channel: int = 0
    z: Union[int, str] = 0
    frames: int = 1
    scale: int = 4
    percentile_low: float = 2.0
    percentile_high: float = 99.8
    register: bool = True
    transform: Transform = Transform.AUTO
    align: str = "hr"
    min_registration_score: float = 0.5
    max_residual_hr_px: float = 0.75
    tile_sizes: Tuple[int, ...] = (128, 256)
    tiles_per_image: int = 16
    content_threshold: float = 0.02
    valid_fraction: float = 0.2
    seed: int = 0
    test_fraction: float = 0.0  # after seed: fields added later go last (see `params`)

    def __post_init__(self):
        _enums(self, "recipe")

    def validated(self) -> "Recipe":
        """The recipe itself when its settings are consistent; otherwise one BphoError naming every problem."""
        problems = []
        if self.kind not in ("paired", "movie", "denoise"):
            problems.append(f"kind={self.kind!r} (use paired, movie or denoise)")
        if self.frames < 1 or self.frames % 2 == 0:
            problems.append(f"frames={self.frames} (an odd number >= 1)")
        if self.scale < 1:
            problems.append(f"scale={self.scale} (>= 1)")
        if not 0 <= self.percentile_low < self.percentile_high <= 100:
            problems.append(f"percentiles {self.percentile_low}/{self.percentile_high} (0 <= low < high <= 100)")
        if self.align not in ("hr", "lr"):
            problems.append(f"align={self.align!r} (hr or lr)")
        if self.transform != Transform.TRANSLATION and self.align != "hr":
            problems.append(f"transform={self.transform} with align={self.align} "
                            "(a warp moves the HR: align=hr, or transform=translation)")
        if not self.tile_sizes or any(s <= 0 or s % self.scale for s in self.tile_sizes):
            problems.append(f"tile_sizes={self.tile_sizes} (positive multiples of scale={self.scale})")
        if self.tiles_per_image < 1:
            problems.append(f"tiles_per_image={self.tiles_per_image} (>= 1)")
        if not 0 <= self.valid_fraction < 1:
            problems.append(f"valid_fraction={self.valid_fraction} (0 <= f < 1)")
        if not 0 <= self.test_fraction < 1:
            problems.append(f"test_fraction={self.test_fraction} (0 <= f < 1)")
        elif 0 <= self.valid_fraction < 1 and self.valid_fraction + self.test_fraction >= 1:
            problems.append(f"valid_fraction={self.valid_fraction} + test_fraction={self.test_fraction} (under 1: "
                            "training needs images too)")
        if not (isinstance(self.z, int) or self.z == "max"):
            problems.append(f"z={self.z!r} (a plane index or 'max')")
        if problems:
            raise BphoError(f"recipe: invalid {'; '.join(problems)}")
        return self

    def params(self) -> Dict[str, object]:
        """The parameters as the manifest records them (and the dataset digest covers). A field added
        after datasets were built is left out while it has its neutral value, so those datasets keep
        their digests: test_fraction appears only when it holds images out."""
        out = {k: v.value if isinstance(v, Enum) else v for k, v in asdict(self).items()}
        if not self.test_fraction:
            del out["test_fraction"]
        return out


def with_overrides(recipe: Recipe, settings: Iterable[str]) -> Recipe:
    """Apply ``key=value`` strings (from --set) to a recipe, each converted to its field's type."""
    return from_settings(Recipe, settings, "--set", base=recipe)


@dataclass(frozen=True)
class LoadedRecipe:
    """A recipe as loaded: its name, file, the file's sha256 and the Recipe it defines."""

    name: str
    path: Path
    sha256: str
    recipe: Recipe


def available() -> list:
    """The names of the built-in recipes (`bpho/recipes/*.py`)."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.py") if not p.name.startswith("_"))


def load(name_or_path: str) -> LoadedRecipe:
    """Load a recipe by name (``bpho/recipes/NAME.py``) or from a ``.py`` file path."""
    path = Path(name_or_path)
    if path.suffix != ".py":
        path = RECIPES_DIR / f"{name_or_path}.py"
        if not path.is_file() or "/" in name_or_path or name_or_path.startswith("_"):
            raise NotFoundError(f"recipe {name_or_path!r} not found; available: {', '.join(available())}")
    elif not path.is_file():
        raise NotFoundError(f"{path}: recipe file not found")
    spec = importlib.util.spec_from_file_location(f"bpho_recipe_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise BphoError(f"{path}: not a Python file that can be loaded as a recipe")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except BphoError as exc:  # a value the Recipe refuses
        raise BphoError(f"{path}: {exc}") from None
    except Exception as exc:
        raise BphoError(f"{path}: the recipe file fails to run ({type(exc).__name__}: {exc})") from None
    recipe = getattr(module, "RECIPE", None)
    if not isinstance(recipe, Recipe):
        raise BphoError(f"{path}: a recipe file must define RECIPE = Recipe(...)")
    return LoadedRecipe(path.stem, path, hashlib.sha256(path.read_bytes()).hexdigest(), recipe)
