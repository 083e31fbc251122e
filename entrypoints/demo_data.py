"""MLproject `demo_data`: write the demo microscopy data set (`bpho demo-data`)."""

import sys

from bpho.cli import main
from bpho.config import DemoConfig, mlproject_argv

if __name__ == "__main__":
    args = sys.argv[1:]
    i = args.index("--out")
    out, rest = args[i + 1], args[:i] + args[i + 2:]
    sys.exit(main(["demo-data", out, *mlproject_argv(DemoConfig, rest, switches=("--force",))]))
