"""denoise_001: noisy single frames -> clean averages, scale 1 (already aligned: no registration)."""

from bpho.datasets import Recipe

RECIPE = Recipe(
    datasource="demo_denoise",
    kind="denoise",
    scale=1,
    register=False,
    percentile_low=1.0,
    percentile_high=99.9,
    tile_sizes=(64, 128),
    tiles_per_image=16,
    valid_fraction=0.25,
    seed=0,
)
