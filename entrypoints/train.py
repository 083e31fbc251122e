"""MLproject `train`: `bpho train` with MLflow's -P parameters (empty string = default; -P mix="A=1 B=0.5")."""

import sys

from bpho.cli import main

FLAGS = {"--amp"}  # true/false parameters that become CLI switches

if __name__ == "__main__":
    args, argv = sys.argv[1:], ["train"]
    for key, value in zip(args[0::2], args[1::2]):
        if key in FLAGS:
            argv += [key] if value.lower() == "true" else []
        elif key == "--mix":  # -P mix="synth_001=1 synth_002=0.5": one --mix each
            argv += [a for item in value.split() for a in (key, item)]
        elif value != "":
            argv += [key, value]
    sys.exit(main(argv))
