"""MLproject `tune`: `bpho tune fit|hparams|degradation` (-P mode=...), empty string = default."""

import sys

from bpho.cli import main

ONLY = {"fit": {"--dataset", "--memory-gb", "--tile-sizes", "--arch", "--model-encoder", "--max-batch", "--device"},
        "hparams": {"--dataset", "--trials", "--epochs", "--storage", "--study", "--tile-sizes", "--max-batch",
                    "--device", "--arch", "--model-encoder"},
        "degradation": {"--datasource", "--degradation", "--trials", "--storage", "--study"}}

if __name__ == "__main__":
    args = sys.argv[1:]
    mode = args[args.index("--mode") + 1]
    if mode not in ONLY:
        sys.exit(main(["tune", mode]))  # argparse names the valid choices
    argv = ["tune", mode]
    for key, value in zip(args[0::2], args[1::2]):
        if key in ONLY[mode] and value != "":
            argv += [key, *value.split()] if key == "--tile-sizes" else [key, value]
    sys.exit(main(argv))
