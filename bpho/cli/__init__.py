"""The `bpho` command: one module per command group, each holding its parsers and handlers.

Handlers parse nothing and decide nothing: they build a config (bpho/config.py) or call the
library with the flags, and print. A `BphoError` (the user's input is wrong) is printed as
one line on stderr and the exit code is 2; no traceback.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import List, Optional

from bpho.cli import dataset, datasource, demo, evaluate, server, train, tune, ui
from bpho.errors import BphoError, BphoWarning

GROUPS = (demo, datasource, dataset, train, evaluate, tune, server, ui)  # the order of `bpho --help`


def build_parser() -> argparse.ArgumentParser:
    """The `bpho` argument parser: one subcommand group per module of `bpho.cli`."""
    from bpho import __version__

    parser = argparse.ArgumentParser(prog="bpho", description="bpho: microscopy super-resolution and denoising models, "
                                                              "tracked in MLflow.")
    parser.add_argument("--version", action="version", version=f"bpho {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.add_to(sub)
    return parser


def _one_line_warnings() -> None:
    """Bpho's own warnings as `bpho: warning: ...` lines; others as Python prints them."""
    default = warnings.formatwarning

    def fmt(message, category, *args, **kwargs):
        if issubclass(category, BphoWarning):
            return f"bpho: warning: {message}\n"
        return default(message, category, *args, **kwargs)

    warnings.formatwarning = fmt


def main(argv: Optional[List[str]] = None) -> int:
    """Run `bpho` with `argv` (default: the command line); returns the exit status."""
    args = build_parser().parse_args(argv)
    _one_line_warnings()
    try:
        return args.func(args)
    except BphoError as exc:
        print(f"bpho: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        import errno

        short_write = exc.errno is None and " written" in str(exc)  # numpy's tofile: "N requested and M written"
        if exc.errno not in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT) and not short_write:
            raise
        where = exc.filename or "an output file"
        what = "disk full or file too large (a short write)" if short_write else exc.strerror
        print(f"bpho: error: {where}: {what} while writing; nothing was kept. Free space (or raise the "
              "file size limit) and run the command again", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bpho: interrupted", file=sys.stderr)
        return 130

