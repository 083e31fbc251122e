"""MLproject `train`: `bpho train` with MLflow's -P parameters (empty string = default)."""

import sys

from bpho.cli import main

FLAGS = {"--amp"}  # true/false parameters that become CLI switches

if __name__ == "__main__":
    args, argv = sys.argv[1:], ["train"]
    for key, value in zip(args[0::2], args[1::2]):
        if key in FLAGS:
            argv += [key] if value.lower() == "true" else []
        elif value != "":
            argv += [key, value]
    sys.exit(main(argv))
