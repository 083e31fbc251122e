"""MLproject `make_dataset`: build a dataset from its recipe (`bpho dataset make`).

-P dataset=RECIPE, -P datasource=NAME (optional), -P name=OUT (optional),
-P set="key=value key=value" (optional recipe overrides), -P force=true to rebuild.
"""

import argparse
import sys

from bpho.cli import main

if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--dataset", required=True)
    p.add_argument("--datasource", default="")
    p.add_argument("--name", default="")
    p.add_argument("--set", default="")
    p.add_argument("--force", default="false")
    a = p.parse_args()
    argv = ["dataset", "make", a.dataset]
    argv += ["--datasource", a.datasource] if a.datasource else []
    argv += ["--name", a.name] if a.name else []
    for item in a.set.split():
        argv += ["--set", item]
    argv += ["--force"] if a.force.lower() == "true" else []
    sys.exit(main(argv))
