"""The `bpho ui` command: the MLflow UI on bpho's training runs (bpho/ui.py)."""

from __future__ import annotations


def _ui(args) -> int:
    from bpho.ui import serve

    return serve(port=args.port, open_browser=args.open, run_id=args.run)


def add_to(sub) -> None:
    """Add `bpho ui` to the subcommands `sub`."""
    p = sub.add_parser("ui", help="the MLflow UI on the training runs: serves the embedded store on 127.0.0.1 "
                                  "(or prints the tracking server's address)")
    p.add_argument("--port", type=int, default=0, help="port for the embedded store (default: a free one)")
    p.add_argument("--open", action="store_true", help="open the page in the web browser")
    p.add_argument("--run", metavar="RUN_ID", help="also print (and open) this run's page")
    p.set_defaults(func=_ui)
