"""MLproject `evaluate`: `bpho evaluate` (-P dataset=NAME [-P split=test|valid] or -P datasource=NAME)."""

import sys

from bpho.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    argv = ["evaluate"] + [a for k, v in zip(args[0::2], args[1::2]) if v != "" for a in (k, v)]
    sys.exit(main(argv))
