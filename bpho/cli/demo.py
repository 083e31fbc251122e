"""The `bpho demo-data` command: realistic demo microscopy written as real CZI files."""

from __future__ import annotations

from bpho.config import DemoConfig, add_fields, from_args


def _demo_data(args) -> int:
    from bpho.demo import make_demo_data

    out = make_demo_data(args.dir, from_args(DemoConfig, args), force=args.force)
    print(f"demo data written to {out} (see {out / 'montage.png'})")
    return 0


def add_to(sub) -> None:
    """Add `bpho demo-data` to the subcommands `sub`."""
    p = sub.add_parser("demo-data", help="write realistic demo microscopy as real CZI files")
    p.add_argument("dir")
    add_fields(p, DemoConfig)
    p.add_argument("--force", action="store_true", help="replace DIR if it exists")
    p.set_defaults(func=_demo_data)
