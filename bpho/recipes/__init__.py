"""Dataset recipes: one file per dataset, each defining RECIPE = bpho.datasets.Recipe(...)."""
