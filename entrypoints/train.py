"""MLproject `train`: `bpho train` with MLflow's -P parameters (empty string = default; -P mix="A=1 B=0.5")."""

import sys

from bpho.cli import main
from bpho.config import TrainConfig, mlproject_argv

if __name__ == "__main__":
    sys.exit(main(["train", *mlproject_argv(TrainConfig, sys.argv[1:])]))
