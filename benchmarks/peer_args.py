"""The command line benchmarks/peers.py gives each peer runner (peer_careamics.py, peer_pssr.py)."""

from __future__ import annotations

import argparse
from pathlib import Path


def runner_args(description: str) -> argparse.Namespace:
    """--data DIR --budget SECONDS --out DIR [--batch-size 16] [--algorithm care|n2v]; `data` and `out` as
    Paths, `out` made."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--budget", type=float, required=True)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--algorithm", choices=("care", "n2v"), default="care", help="CAREamics only")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    return a
