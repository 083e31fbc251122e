"""Datasets: recipes, the builder, and reading built datasets."""

from bpho.datasets.recipe import Recipe  # noqa: F401  (recipe files import it from here)
