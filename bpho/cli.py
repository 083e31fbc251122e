"""The `bpho` command. Parses arguments and calls the library; holds no logic of its own.

A `BphoError` (the user's input is wrong) is printed as one line on stderr and the exit
code is 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from dataclasses import fields
from typing import List, Optional

from bpho.errors import BphoError, BphoWarning


def _demo_data(args) -> int:
    from bpho.synthetic import DemoConfig, make_demo_data

    overrides = {f.name: getattr(args, f.name) for f in fields(DemoConfig) if getattr(args, f.name, None) is not None}
    try:
        config = DemoConfig(**overrides).check()
    except ValueError as exc:
        raise BphoError(f"demo-data: {exc}") from None
    out = make_demo_data(args.dir, config, force=args.force)
    print(f"demo data written to {out} (see {out / 'montage.png'})")
    return 0


def _datasource_add(args) -> int:
    from bpho import datasources

    ds, created = datasources.add(args.name, args.paths, args.kind)
    s = datasources.summary(ds.name)
    verb = "registered" if created else "already registered with identical files; nothing changed:"
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


def _dataset_make(args) -> int:
    from bpho.datasets import builder

    ds = builder.make(args.recipe, datasource=args.datasource, settings=args.set or [], name=args.name,
                      force=args.force, workers=args.workers, pngs=not args.no_png)
    print(f"dataset {ds.name} built at {ds.path} (digest {ds.digest[:12]})")
    _print_dataset(ds)
    return 0


def _print_dataset(ds) -> None:
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


def _dataset_list(args) -> int:
    from bpho.datasets import builder

    names = builder.names()
    if not names:
        print("no datasets yet; build one with `bpho dataset make RECIPE`")
    for name in names:
        m = builder.open(name).manifest
        counts = ", ".join(f"{size}: {i['train']}+{i['valid']}" for size, i in m["tiles"].items())
        print(f"{name:24s} recipe {m['recipe']['name']:14s} datasource {m['datasource']['name']:30s} "
              f"tiles (train+valid) {counts}  {m['digest'][:12]}")
    return 0


def _dataset_show(args) -> int:
    from bpho.datasets import builder

    ds = builder.open(args.name)
    if args.json:
        print(json.dumps(ds.manifest, indent=2))
    else:
        print(f"dataset {ds.name} at {ds.path} (digest {ds.digest[:12]}, created {ds.manifest['created']})")
        _print_dataset(ds)
    return 0


def _train(args) -> int:
    from bpho.train import TrainConfig, train

    fields_ = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__ and v is not None}
    if "decoder_widths" in fields_:
        fields_["decoder_widths"] = _widths(fields_["decoder_widths"])
    if "mix" in fields_:
        fields_["mix"] = tuple(fields_["mix"])
    result = train(TrainConfig(**fields_), resume=args.resume)
    if result.registered_version:
        print(f"run {result.run_id}: model registered as {result.registered_name} version {result.registered_version}"
              f" (load it with mlflow.pyfunc.load_model('models:/{result.registered_name}/latest'))")
        from bpho import tracking

        print(f"see it: mlflow ui --backend-store-uri {tracking.tracking_uri()}")
    return 0


def _evaluate(args) -> int:
    from bpho.evaluate import evaluate

    result = evaluate(args.model, dataset=args.dataset, datasource=args.datasource, out_dir=args.out,
                      device=args.device, transform=args.transform)
    s = result["summary"]
    print(f"evaluated {args.model} on {result['images']} image(s); table and figures in {result['out']}")
    print(f"{'method':10s} {'PSNR':>7s} {'SSIM':>6s} {'MS-SSIM':>8s} {'NRMSE':>7s} {'FRC px':>7s} {'FRC nm':>7s}")
    fmt = lambda v, f: format(v, f) if v is not None else "-"  # noqa: E731
    for method in ("model", "bicubic", "bilinear", "nearest"):
        m = s[method]
        print(f"{method:10s} {fmt(m['psnr'], '7.2f')} {fmt(m['ssim'], '6.3f')} {fmt(m['ms_ssim'], '8.3f')} "
              f"{fmt(m['nrmse'], '7.4f')} {fmt(m['frc_px'], '7.2f')} {fmt(m['frc_nm'], '7.0f')}")
    for k in ("psnr", "ssim"):
        g = s[f"gain_{k}"]
        ci = (f"95% CI {g['ci95_low']:+.3f} .. {g['ci95_high']:+.3f} over images" if g["ci95_low"] is not None
              else "95% CI undefined with one image")
        print(f"gain over bicubic, {k.upper()}: {g['mean']:+.3f} ({ci})")
    return 0


def _predict(args) -> int:
    from bpho.predict import predict_files

    written = predict_files(args.model, args.inputs, args.out, device=args.device, tile=args.tile,
                            overlap=args.overlap, batch=args.batch, precision="fp16" if args.half else args.precision,
                            context=args.context, fmt=args.format)
    for path in written:
        print(path)
    return 0


def _export(args) -> int:
    from bpho.export import export_bioimageio

    result = export_bioimageio(args.model, args.out, sample=args.sample, name=args.name, authors=args.author,
                               license=args.license, force=args.force, track=not args.no_log)
    print(f"BioImage Model Zoo package {result.name!r} written to {result.path} (bioimageio.core test_model "
          f"{result.test})")
    for fmt, check in result.weights.items():
        print(f"  {fmt}: {check}")
    if result.artifact:
        print(f"logged on the training run: {result.artifact}")
    for note in result.notes:
        print(f"note: {note}")
    return 0


def _widths(text: Optional[str]):
    return tuple(int(w) for w in text.split(",")) if text else None


def _tune_fit(args) -> int:
    from bpho import tune

    result = tune.fit_search(args.dataset, tile_sizes=args.tile_sizes, memory_gb=args.memory_gb, encoder=args.encoder,
                             mode=args.mode, decoder_widths=_widths(args.decoder_widths) or tune.TrainConfig.decoder_widths,
                             precisions=args.precision,
                             checkpointing=[c == "on" for c in args.checkpointing] if args.checkpointing else None,
                             max_batch=args.max_batch, device=args.device, refine=args.refine)
    print(result.table())
    print(f"saved to {result.path}" + (f"; MLflow run {result.run_id}" if result.run_id else ""))
    return 0


def _tune_hparams(args) -> int:
    from bpho import tune

    space = tune.SearchSpace(**{k: v for k, v in (
        ("encoders", args.encoders), ("modes", args.modes), ("losses", args.losses), ("tile_sizes", args.tile_sizes),
        ("lr_min", args.lr_min), ("lr_max", args.lr_max), ("max_batch", args.max_batch), ("amp", args.amp),
        ("decoder_widths", _widths(args.decoder_widths))) if v is not None})
    r = tune.hparams(args.dataset, trials=args.trials, epochs=args.epochs, storage=args.storage,
                     study_name=args.study, space=space, pruner=args.pruner, seed=args.seed, device=args.device,
                     timeout=args.timeout)
    print(f"study {r.study} on {r.storage}: {r.trials} trials; parent MLflow run {r.parent_run_id}")
    if r.best_value is None:
        print("no trial has finished yet")
    else:
        print(f"best validation PSNR gain over bicubic {r.best_value:+.3f} dB (run {r.best_run_id}) with "
              + ", ".join(f"{k}={v}" for k, v in r.best_params.items()))
    return 0


def _synthesize(args) -> int:
    import dataclasses

    from bpho import synthesize as sy
    from bpho.datasets.recipe import Recipe
    from bpho.degrade import parse_settings

    settings = parse_settings(args.set or [])
    own = {f.name for f in dataclasses.fields(sy.MODELS[args.degradation][0])}
    recipe_fields = {f.name for f in dataclasses.fields(Recipe)}
    unknown = [k for k in settings if k not in own and k not in recipe_fields]
    if unknown:
        raise BphoError(f"synthesize: --set {unknown[0]}: neither a {args.degradation} parameter ({', '.join(sorted(own))})"
                        f" nor a recipe field")
    deg = sy.degradation(args.degradation, {k: v for k, v in settings.items() if k in own}, fit_on=args.fit_on,
                         recipe=args.recipe or "paired_001", progress=True)
    ds = sy.synthesize(args.datasource, deg, args.dataset, recipe=args.recipe, force=args.force,
                       recipe_settings=[f"{k}={v}" for k, v in settings.items() if k not in own])
    print(f"dataset {ds.name} built at {ds.path} (digest {ds.digest[:12]}) with LR synthesized by {deg.name}:")
    print("  " + ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(deg.params).items()))
    if deg.fitted_on:
        print(f"  fitted on {len(deg.fitted_on['pairs'])} pairs of {deg.fitted_on['datasource']} "
              f"(intensity mapping explains {deg.fitted_on['explained']:.1%} of the LR variance)")
    _print_dataset(ds)
    return 0


def _tune_degradation(args) -> int:
    from bpho import synthesize as sy

    r = sy.tune_degradation(args.datasource, args.degradation, trials=args.trials, storage=args.storage,
                            study_name=args.study, max_pairs=args.max_pairs)
    print(f"study {r['study']}: best distance {r['best_value']:.4f} ("
          + ", ".join(f"{k} {v:.4f}" for k, v in r["scores"].items() if k != "total") + ")")
    print("best parameters: " + ", ".join(f"{k}={v}" for k, v in r["best_params"].items()))
    print(f"use them: bpho synthesize --degradation {args.degradation} "
          + " ".join(f"--set {k}={','.join(map(str, v)) if isinstance(v, list) else v}"
                     for k, v in r["best_params"].items() if v is not None) + " ...")
    return 0


def _tune_degradation_report(args) -> int:
    from bpho import synthesize as sy

    train = {k: v for k, v in (("encoder", args.encoder), ("batch_size", args.batch_size)) if v is not None}
    if args.decoder_widths:
        train["decoder_widths"] = _widths(args.decoder_widths)
    result = sy.report(args.datasource, epochs=args.epochs, tile_size=args.tile_size, trials=args.trials,
                       recipe_settings=args.set or [], train_settings=train, out_dir=args.out)
    print(sy.report_table(result))
    print(f"table and figure in {result['out']}; MLflow run {result['run_id']}")
    return 0


def _server(args) -> int:
    from bpho.server import serve

    return serve(host=args.host, port=args.port, backend_store_uri=args.backend_store_uri, artifacts=args.artifacts,
                 auth=args.auth, admin_password_file=args.admin_password_file,
                 default_permission=args.default_permission, workers=args.workers,
                 auth_database_uri=args.auth_database_uri)


def _tracking_uri(args) -> int:
    from bpho import tracking

    print(tracking.tracking_uri())
    return 0


def _info(args) -> int:
    from bpho import io

    for path in args.files:
        for img in io.read_scenes(path):
            z, y, x = img.pixel_size
            print(f"{path} scene {img.scene} of {img.n_scenes}: {'x'.join(map(str, img.shape))} (TCZYX) "
                  f"{img.data.dtype}, file axes {img.axes_source}, pixel z={z} y={y} x={x} um")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from bpho import __version__
    from bpho.datasources import KINDS

    parser = argparse.ArgumentParser(prog="bpho", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"bpho {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo-data", help="write realistic demo microscopy as real CZI files")
    p.add_argument("dir")
    p.add_argument("--seed", type=int)
    p.add_argument("--scale", type=int, help="LR pixel size / HR pixel size (default 4)")
    p.add_argument("--paired-fields", type=int)
    p.add_argument("--paired-size", type=int, help="HR side of a paired field in pixels")
    p.add_argument("--movies", type=int)
    p.add_argument("--movie-frames", type=int)
    p.add_argument("--movie-size", type=int)
    p.add_argument("--hr-only-fields", type=int)
    p.add_argument("--denoise-fields", type=int)
    p.add_argument("--denoise-size", type=int)
    p.add_argument("--realism", choices=("easy", "hard"),
                   help="hard: the sample turns, grows and deforms between acquisitions; aberrated LR PSF, bleaching, "
                        "scan-line jitter, saturation, hot pixels (truth in demo_truth.json, truth/paired_map/)")
    p.add_argument("--force", action="store_true", help="replace DIR if it exists")
    p.set_defaults(func=_demo_data)

    p = sub.add_parser("info", help="print shape, axes and pixel size of image files")
    p.add_argument("files", nargs="+")
    p.set_defaults(func=_info)

    ds = sub.add_parser("datasource", help="immutable, named collections of raw files").add_subparsers(
        dest="action", required=True)
    p = ds.add_parser("add", help="register files (or folders of files) under a name")
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
    dsets = sub.add_parser("dataset", help="datasets built from datasources by recipes").add_subparsers(
        dest="action", required=True)
    p = dsets.add_parser("make", help="build a dataset from a recipe (bpho/recipes/NAME.py or a .py file)")
    p.add_argument("recipe")
    p.add_argument("--datasource", help="use this datasource instead of the recipe's default")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe field (repeatable)")
    p.add_argument("--name", help="dataset name (default: the recipe's name)")
    p.add_argument("--force", action="store_true", help="rebuild (replace) an existing dataset of that name")
    p.add_argument("--workers", type=int, help="processes reading and registering images (default: one per core)")
    p.add_argument("--no-png", action="store_true", help="skip the QC and preview figures (faster; same digest)")
    p.set_defaults(func=_dataset_make)
    p = dsets.add_parser("list")
    p.set_defaults(func=_dataset_list)
    p = dsets.add_parser("show")
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="print the whole manifest")
    p.set_defaults(func=_dataset_show)

    p = sub.add_parser("train", help="train a U-Net on a dataset's tiles; logs and registers it in MLflow")
    p.add_argument("--dataset", required=True)
    p.add_argument("--tile-size", type=int, help="HR tile size (default: the dataset's smallest)")
    p.add_argument("--batch-size", type=int)
    how_long = p.add_mutually_exclusive_group()
    how_long.add_argument("--epochs", type=int, help="default 10")
    how_long.add_argument("--minutes", type=float,
                          help="a wall-clock budget instead: the epochs are planned from the pace of the first batches")
    p.add_argument("--encoder", help="any timm model with features_only (default resnet34)")
    p.add_argument("--depth", type=int, help="encoder stages used (default 3: stride 8 for a resnet)")
    p.add_argument("--mode", choices=("pre", "lr"), help="pre: upsample LR first; lr: pixel-shuffle at the end")
    p.add_argument("--frames", type=int, help="LR frames in (checked against the dataset)")
    p.add_argument("--loss", choices=("l1", "mse", "l1+ssim"))
    p.add_argument("--lr", type=float, help="peak learning rate of the one-cycle schedule")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--amp", action="store_true", default=None, help="mixed precision (bf16, or fp16 with scaling)")
    p.add_argument("--channels-last", action="store_true", default=None)
    p.add_argument("--grad-checkpointing", action="store_true", default=None, help="recompute encoder activations")
    p.add_argument("--accumulate", type=int, help="gradient accumulation steps (effective batch = batch x steps)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"))
    p.add_argument("--panel-every", type=int, help="log an LR|bicubic|model|HR panel every N epochs")
    p.add_argument("--decoder-widths", help="comma-separated decoder widths, deepest first (default 128,64,64)")
    p.add_argument("--head-channels", type=int, help="HR channels after the pixel shuffle (mode lr; default 8)")
    p.add_argument("--padding", choices=("replicate", "reflect", "zeros"),
                   help="of every convolution (default replicate; zeros lets the network find tile borders)")
    p.add_argument("--encoder-weights", help="a local weights file for the encoder (nothing is downloaded)")
    p.add_argument("--mix", action="append", metavar="DATASET[=W]",
                   help="also train on another dataset's tiles (e.g. synthetic pairs), W of them per real tile "
                        "each epoch (default 1); repeatable. Validation stays on --dataset's held-out images")
    p.add_argument("--model-name", help="registered model name (default bpho-<dataset>)")
    p.add_argument("--resume", metavar="RUN_ID", help="continue a killed run from its last checkpoint")
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="PSNR/SSIM/FRC of a model against nearest/bilinear/bicubic on full images")
    p.add_argument("--model", required=True, help="runs:/ID/model, models:/NAME/VERSION or models:/NAME/latest")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--dataset", help="its validation images")
    where.add_argument("--datasource", help="a paired datasource of full images never used in training")
    p.add_argument("--transform", default="translation", choices=("translation", "similarity", "flow"),
                   help="how --datasource pairs are registered (a dataset was registered when it was built)")
    p.add_argument("--out", help="folder for evaluation.csv and the figures (default: a temporary folder)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("predict", help="LR images / stacks / movies (CZI, TIFF) to HR ImageJ TIFF")
    p.add_argument("--model", required=True, help="runs:/ID/model, models:/NAME/VERSION or models:/NAME/latest")
    p.add_argument("inputs", nargs="+")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--tile", type=int, help="LR tile side in pixels (default 512 on a GPU, 128 on a CPU)")
    p.add_argument("--overlap", type=int, default=16, help="LR pixels of overlap between tiles")
    p.add_argument("--context", type=int, default=16,
                   help="LR pixels of context around each tile, so the output hardly depends on --tile")
    p.add_argument("--batch", type=int, default=4, help="tiles per forward pass")
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"), help="of the network")
    p.add_argument("--half", action="store_true", help="the same as --precision fp16 (GPU only)")
    p.add_argument("--format", default="imagej", choices=("imagej", "ome-tiff"),
                   help="ImageJ hyperstack TIFF (Fiji) or OME-TIFF (.ome.tif: OME-XML pixel sizes, axes, channels)")
    p.set_defaults(func=_predict)

    p = sub.add_parser("export", help="a model as a BioImage Model Zoo package (Fiji deepImageJ, napari, ilastik)")
    p.add_argument("--model", required=True, help="runs:/ID/model, models:/NAME/VERSION or models:/NAME/latest")
    p.add_argument("--format", default="bioimageio", choices=("bioimageio",), help="bioimage.io model spec 0.5")
    p.add_argument("--out", required=True, help="NAME.zip (the package) or a folder")
    p.add_argument("--sample", help="an LR image for the test tensors and cover (default: the model's dataset)")
    p.add_argument("--name", help="package name (default: the registered model name)")
    p.add_argument("--author", action="append", help="an author (repeat; default: who trained the model)")
    p.add_argument("--license", default="CC-BY-4.0", help="SPDX license id (default CC-BY-4.0)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--no-log", action="store_true", help="do not log the package on the model's training run")
    p.set_defaults(func=_export)

    tune = sub.add_parser("tune", help="Optuna: batch sizes that fit the card; hyperparameter search").add_subparsers(
        dest="action", required=True)
    p = tune.add_parser("fit", help="largest batch per tile size within a memory budget, with tiles/s")
    p.add_argument("--dataset", required=True)
    p.add_argument("--memory-gb", type=float, help="budget (default: the device's free memory)")
    p.add_argument("--tile-sizes", type=int, nargs="+", help="default: the dataset's")
    p.add_argument("--encoder", default="resnet34")
    p.add_argument("--mode", default="lr", choices=("pre", "lr"))
    p.add_argument("--decoder-widths", help="comma-separated, e.g. 128,64,64")
    p.add_argument("--precision", nargs="+", choices=("fp32", "amp"), help="default: fp32 amp on CUDA, fp32 on CPU")
    p.add_argument("--checkpointing", nargs="+", choices=("off", "on"), help="default: off on on CUDA, off on CPU")
    p.add_argument("--max-batch", type=int, default=256)
    p.add_argument("--refine", action="store_true", help="bisect to the exact largest batch (default: powers of 2)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.set_defaults(func=_tune_fit)
    p = tune.add_parser("hparams", help="Optuna study maximising validation PSNR gain; one MLflow run per trial")
    p.add_argument("--dataset", required=True)
    p.add_argument("--trials", type=int, default=20, help="finished trials the study should hold (all workers)")
    p.add_argument("--epochs", type=int, default=5, help="epochs per trial")
    p.add_argument("--storage", help="Optuna RDB URL shared by workers, e.g. postgresql://user@host/db "
                                     "(default: SQLite under BPHO_ROOT/tune)")
    p.add_argument("--study", help="study name to create, resume or join (default hparams-<dataset>)")
    p.add_argument("--encoders", nargs="+")
    p.add_argument("--modes", nargs="+", choices=("lr", "pre"))
    p.add_argument("--losses", nargs="+", choices=("l1", "mse", "l1+ssim"))
    p.add_argument("--tile-sizes", type=int, nargs="+")
    p.add_argument("--lr-min", type=float)
    p.add_argument("--lr-max", type=float)
    p.add_argument("--max-batch", type=int, help="batch cap where no fit table exists (default 16)")
    p.add_argument("--amp", action="store_true", default=None)
    p.add_argument("--decoder-widths")
    p.add_argument("--pruner", default="median", choices=("median", "hyperband", "none"))
    p.add_argument("--seed", type=int)
    p.add_argument("--timeout", type=float, help="seconds this worker runs at most")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.set_defaults(func=_tune_hparams)

    p = tune.add_parser("degradation", help="Optuna: degradation parameters whose LR looks most like real LR")
    p.add_argument("--datasource", required=True, help="a paired datasource (its training pairs are compared)")
    p.add_argument("--degradation", required=True, choices=("classic", "physical"))
    p.add_argument("--trials", type=int, default=100, help="trials to add to the study (demo: about 15 s per 100)")
    p.add_argument("--max-pairs", type=int, default=4, help="pairs compared per trial")
    p.add_argument("--storage")
    p.add_argument("--study")
    p.set_defaults(func=_tune_degradation)
    p = tune.add_parser("degradation-report", help="train on real vs synthetic pairs; evaluate on held-out real pairs")
    p.add_argument("--datasource", required=True, help="a paired datasource")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--trials", type=int, default=100, help="study trials for classic and physical "
                                                           "(0: their default parameters)")
    p.add_argument("--tile-size", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--encoder")
    p.add_argument("--decoder-widths")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="recipe field for all four datasets")
    p.add_argument("--out", help="folder for the table and figure")
    p.set_defaults(func=_tune_degradation_report)

    p = sub.add_parser("synthesize", help="a dataset of synthetic pairs: LR made from HR by a degradation model")
    p.add_argument("--datasource", required=True, help="hr datasource, or a paired/movie one (its HR side)")
    p.add_argument("--degradation", required=True, choices=("classic", "physical", "fitted"))
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="a degradation parameter, or a recipe field (repeatable)")
    p.add_argument("--dataset", required=True, help="name of the dataset to build")
    p.add_argument("--fit-on", help="fitted: the paired datasource to fit on (its training pairs)")
    p.add_argument("--recipe", help="default paired_001 (movie_001 for a movie datasource)")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=_synthesize)

    p = sub.add_parser("server", help="the group's MLflow tracking server (127.0.0.1 unless --host says otherwise)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every network; use with --auth)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--backend-store-uri", help="run store, e.g. postgresql://mlflow@db/mlflow "
                                               "(default: SQLite under BPHO_ROOT/server)")
    p.add_argument("--artifacts", help="artifact folder the server serves (default BPHO_ROOT/server/artifacts)")
    p.add_argument("--auth", action="store_true", help="MLflow basic auth; admin password from $BPHO_ADMIN_PASSWORD "
                                                       "or --admin-password-file")
    p.add_argument("--admin-password-file")
    p.add_argument("--auth-database-uri", help="where users and permissions live, e.g. the run store's PostgreSQL "
                                               "URI (default: SQLite under BPHO_ROOT/server)")
    p.add_argument("--default-permission", default="READ", help="what signed-in users may do with others' runs "
                                                                 "(READ, EDIT, MANAGE, NO_PERMISSIONS)")
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=_server)

    p = sub.add_parser("tracking-uri", help="print the MLflow tracking URI bpho uses (for `mlflow ui`)")
    p.set_defaults(func=_tracking_uri)
    return parser


def _one_line_warnings() -> None:
    """bpho's own warnings as `bpho: warning: ...` lines; others as Python prints them."""
    default = warnings.formatwarning

    def fmt(message, category, *args, **kwargs):
        if issubclass(category, BphoWarning):
            return f"bpho: warning: {message}\n"
        return default(message, category, *args, **kwargs)

    warnings.formatwarning = fmt


def main(argv: Optional[List[str]] = None) -> int:
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


if __name__ == "__main__":
    sys.exit(main())
