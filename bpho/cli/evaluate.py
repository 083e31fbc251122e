"""Commands that use a trained model: `bpho evaluate`, `bpho predict`, `bpho export`."""

from __future__ import annotations

from bpho.config import Device, Precision, PredictConfig, Transform, add_fields, from_args


def _evaluate(args) -> int:
    from bpho.evaluate import ENSEMBLE_NOTE, evaluate

    result = evaluate(args.model, dataset=args.dataset, datasource=args.datasource, out_dir=args.out,
                      device=args.device, transform=args.transform, split=args.split, ensemble=args.ensemble)
    s = result.summary
    used = ENSEMBLE_NOTE if result.ensemble else ""
    print(f"evaluated {args.model}{used} on {result.images} image(s); table and figures in {result.out}")
    print(result.provenance.describe())
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
    if result.run_id:
        from bpho import tracking

        print(f"see it: {tracking.run_url(result.run_id)}")
    return 0


def _predict(args) -> int:
    from bpho.predict import predict_files

    if args.half:
        args.precision = Precision.FP16
    written = predict_files(args.model, args.inputs, args.out, from_args(PredictConfig, args))
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


def add_to(sub) -> None:
    p = sub.add_parser("evaluate", help="PSNR/SSIM/FRC of a model against nearest/bilinear/bicubic on full images")
    p.add_argument("--model", required=True, help="runs:/ID/model, models:/NAME/VERSION or models:/NAME/latest")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--dataset", help="its test images when it has any (no choice has seen them), else its "
                                         "validation images (they chose the model's epoch; said so)")
    where.add_argument("--datasource", help="a paired datasource of full images never used in training")
    p.add_argument("--transform", default=Transform.AUTO, choices=list(Transform),
                   help="how --datasource pairs are registered (default auto: the simplest transform that leaves "
                        "a small residual; a dataset was registered when it was built)")
    p.add_argument("--split", choices=("test", "valid"),
                   help="with --dataset: score its test images (held out by the recipe's test_fraction) or its "
                        "validation images (those training chose the epoch on); default test when it has any")
    p.add_argument("--out", help="folder for evaluation.csv and the figures (default: a temporary folder)")
    p.add_argument("--device", default=Device.AUTO, choices=list(Device))
    p.add_argument("--ensemble", action="store_true", help="average each tile's predictions in its 8 flips and "
                                                           "90-degree rotations (8 times the compute)")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("predict", help="LR images / stacks / movies (CZI, TIFF) to HR ImageJ TIFF")
    p.add_argument("--model", required=True, help="runs:/ID/model, models:/NAME/VERSION or models:/NAME/latest")
    p.add_argument("inputs", nargs="+")
    p.add_argument("--out", required=True, help="output folder")
    add_fields(p, PredictConfig)
    p.add_argument("--half", action="store_true", help="the same as --precision fp16 (GPU only)")
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
