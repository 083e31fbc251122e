"""MLproject `demo_data`: write the demo microscopy data set (`bpho demo-data`)."""

import argparse
import sys

from bpho.cli import main

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--force", default="false", help="MLflow passes true/false")
    known, rest = parser.parse_known_args()
    sys.exit(main(["demo-data", known.out, *rest] + (["--force"] if known.force.lower() == "true" else [])))
