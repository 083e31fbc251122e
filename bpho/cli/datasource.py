"""The `bpho datasource` commands (immutable named collections of raw files) and `bpho info`."""

from __future__ import annotations

import json
import sys


def _info(args) -> int:
    from bpho import io

    for path in args.files:
        for img in io.read_scenes(path):
            z, y, x = img.pixel_size
            print(f"{path} scene {img.scene} of {img.n_scenes}: {'x'.join(map(str, img.shape))} (TCZYX) "
                  f"{img.data.dtype}, file axes {img.axes_source}, pixel z={z} y={y} x={x} um")
    return 0


def _datasource_add(args) -> int:
    from bpho import datasources

    ds, created = datasources.add(args.name, args.paths, args.kind)
    s = datasources.summary(ds.name)
    verb = "added:" if created else "already holds identical files; nothing changed:"
    print(f"datasource {ds.name} {verb} {s['files']} files, {s['pairs']} pairs, digest {ds.digest[:12]}")
    return 0


def _datasource_list(args) -> int:
    from bpho import datasources

    names = datasources.names()
    if not names:
        print("no datasources yet; add one with `bpho datasource add NAME PATH... --kind KIND`")
    for name in names:
        s = datasources.summary(name)
        print(f"{name:32s} {s['kind']:8s} {s['files']:5d} files {s['pairs']:5d} pairs "
              f"{s['bytes'] / 1e6:9.1f} MB  {s['created']}  {s['digest'][:12]}")
    return 0


def _datasource_show(args) -> int:
    from bpho import datasources

    ds = datasources.open(args.name, verify=False)
    summary = datasources.summary(args.name)
    if args.json:
        print(json.dumps({**summary, "path": str(ds.path), "manifest": ds.manifest}, indent=2))
    else:
        print("  ".join(f"{k}: {v}" for k, v in summary.items()))
        for f in ds.manifest["files"]:
            print(f"  {f['path']}  {'x'.join(map(str, f['shape']))} (TCZYX) {f['dtype']}  "
                  f"pixel {f['pixel_size_um']} um  sha256 {f['sha256'][:12]}")
    return 0


def _datasource_verify(args) -> int:
    from bpho import datasources

    names = [args.name] if args.name else datasources.names()
    bad = 0
    for name in names:
        problems = datasources.verify(name)
        for line in problems:
            print(line, file=sys.stderr)
        print(f"{name}: {'intact' if not problems else f'{len(problems)} problem(s)'}")
        bad += bool(problems)
    return 1 if bad else 0


def add_to(sub) -> None:
    """Add `bpho datasource` to the subcommands `sub`."""
    from bpho.datasources import KINDS

    p = sub.add_parser("info", help="print shape, axes and pixel size of image files")
    p.add_argument("files", nargs="+")
    p.set_defaults(func=_info)

    ds = sub.add_parser("datasource", help="immutable, named collections of raw files").add_subparsers(
        dest="action", required=True)
    p = ds.add_parser("add", help="add files (or folders of files) as an immutable datasource under a name")
    p.add_argument("name")
    p.add_argument("paths", nargs="+")
    p.add_argument("--kind", required=True, choices=KINDS)
    p.set_defaults(func=_datasource_add)
    p = ds.add_parser("list")
    p.set_defaults(func=_datasource_list)
    p = ds.add_parser("show")
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="print the whole manifest")
    p.set_defaults(func=_datasource_show)
    p = ds.add_parser("verify", help="re-hash files; exit 1 if any changed, went missing or appeared")
    p.add_argument("name", nargs="?")
    p.set_defaults(func=_datasource_verify)
