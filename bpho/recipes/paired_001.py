"""paired_001: confocal (LR) -> Airyscan (HR) pairs of mitochondria, scale 4."""

from bpho.datasets import Recipe

RECIPE = Recipe(
    datasource="confocal_airyscan_pairs_mito",
    kind="paired",
    channel=0,
    z=0,
    scale=4,
    percentile_low=2.0,
    percentile_high=99.8,
    register=True,
    tile_sizes=(128, 256),
    tiles_per_image=48,  # random, overlapping: more views of each field for small datasets
    content_threshold=0.02,
    valid_fraction=0.25,
    seed=0,
)
