"""MLproject `demo_data`: write the demo microscopy data set (`bpho demo-data`)."""

import sys

from bpho.cli import main
from bpho.config import DemoConfig, mlproject_argv

if __name__ == "__main__":
    args = sys.argv[1:]
    out = args[args.index("--out") + 1]
    rest = [a for i, a in enumerate(args) if i not in (args.index("--out"), args.index("--out") + 1)]
    sys.exit(main(["demo-data", out, *mlproject_argv(DemoConfig, rest, switches=("--force",))]))
