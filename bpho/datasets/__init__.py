"""Datasets: recipes (recipe.py), where images come from (sources.py), registration (register.py),
tiles (tiling.py), QC figures (qc.py), the builder that composes them (builder.py) and the reader
(dataset.py: `open`, `names`, the package's way to a built dataset)."""

from bpho.datasets.dataset import Dataset, ImagePair, names, open  # noqa: F401, A004
from bpho.datasets.recipe import Recipe  # noqa: F401  (recipe files import it from here)
