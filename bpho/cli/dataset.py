"""The `bpho dataset` commands: datasets built from datasources by recipes (`bpho dataset make`'s
flags are DatasetMakeConfig's fields, bpho/config.py)."""

from __future__ import annotations

import json

from bpho.config import DatasetMakeConfig, add_fields, from_args


def _dataset_make(args) -> int:
    from bpho.datasets import builder

    cfg = from_args(DatasetMakeConfig, args)
    ds = builder.make(cfg.recipe, datasource=cfg.datasource, settings=cfg.set, name=cfg.name, force=cfg.force,
                      workers=cfg.workers, pngs=not cfg.no_png)
    print(f"dataset {ds.name} built at {ds.path} (digest {ds.digest[:12]})")
    print_dataset(ds)
    print_run(ds)
    return 0


def print_run(ds) -> None:
    """The "see it" line: the page of the run that logged the build."""
    from bpho import tracking

    run_id = tracking.latest_run(tracking.DATASETS_EXPERIMENT, {"bpho.dataset_digest": ds.digest})
    if run_id:
        print(f"see it: {tracking.run_url(run_id)}")


def print_dataset(ds) -> None:
    """Print a built dataset's recipe, datasource, tile counts and held-out images."""
    m = ds.manifest
    print(f"  recipe {m['recipe']['name']} on datasource {m['datasource']['name']} ({m['datasource']['digest'][:12]})")
    for size, info in m["tiles"].items():
        print(f"  tiles {size:>4}: {info['train']:6d} train {info['valid']:6d} valid  "
              f"LR {'x'.join(map(str, info['lr_shape']))}  HR {'x'.join(map(str, info['hr_shape']))}")
    for rec in m["sources"]:
        reg = f"shift {rec['shift_hr_px'][0]:+.2f},{rec['shift_hr_px'][1]:+.2f} score {rec['score']:.3f}" \
            if "shift_hr_px" in rec else "not registered"
        state = rec["split"] if rec["included"] else f"EXCLUDED ({rec['reason']})"
        print(f"  {rec['source']:36s} {reg:34s} {state}")
    valid, test = m.get("validation_images", {}), m.get("test_images", {})
    if valid:
        print(f"  whole images: {len(valid['sources'])} to validate on (split {valid['split']}; they choose the "
              f"best epoch), {len(test.get('sources', []))} to test on (never seen by training or any choice)")


def _dataset_list(args) -> int:
    from bpho import datasets

    names = datasets.names()
    if not names:
        print("no datasets yet; build one with `bpho dataset make RECIPE`")
    for name in names:
        m = datasets.open(name).manifest
        counts = ", ".join(f"{size}: {i['train']}+{i['valid']}" for size, i in m["tiles"].items())
        print(f"{name:24s} recipe {m['recipe']['name']:14s} datasource {m['datasource']['name']:30s} "
              f"tiles (train+valid) {counts}  {m['digest'][:12]}")
    return 0


def _dataset_show(args) -> int:
    from bpho import datasets

    ds = datasets.open(args.name)
    if args.json:
        print(json.dumps(ds.manifest, indent=2))
    else:
        print(f"dataset {ds.name} at {ds.path} (digest {ds.digest[:12]}, created {ds.manifest['created']})")
        print_dataset(ds)
    return 0


def add_to(sub) -> None:
    """Add `bpho dataset` and `bpho synthesize` to the subcommands `sub`."""
    dsets = sub.add_parser("dataset", help="datasets built from datasources by recipes").add_subparsers(
        dest="action", required=True)
    p = dsets.add_parser("make", help="build a dataset from a recipe (bpho/recipes/NAME.py or a .py file)")
    add_fields(p, DatasetMakeConfig)
    p.set_defaults(func=_dataset_make)
    p = dsets.add_parser("list")
    p.set_defaults(func=_dataset_list)
    p = dsets.add_parser("show")
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="print the whole manifest")
    p.set_defaults(func=_dataset_show)
