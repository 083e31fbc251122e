"""MLproject `predict`: `bpho predict` (-P inputs is one path, or several separated by spaces)."""

import sys

from bpho.cli import main
from bpho.config import PredictConfig, mlproject_argv

if __name__ == "__main__":
    *options, inputs = sys.argv[1:]  # MLflow passes inputs as one quoted argument, last
    sys.exit(main(["predict", *mlproject_argv(PredictConfig, options), *inputs.split()]))
