"""movie_001: LR time-lapse -> HR, five consecutive LR frames (t-2..t+2) in, HR frame t out."""

from bpho.datasets import Recipe

RECIPE = Recipe(
    datasource="demo_movie",
    kind="movie",
    frames=5,
    scale=4,
    register=True,
    tile_sizes=(64, 128),
    tiles_per_image=4,
    valid_fraction=0.5,
    seed=0,
)
