"""Commands that use a trained model: `bpho evaluate`, `bpho predict`, `bpho export` (their flags are
EvaluateConfig's, PredictConfig's and ExportConfig's fields, bpho/config.py)."""

from __future__ import annotations

from bpho.config import (MODEL_URI_HELP, EvaluateConfig, ExportConfig, Precision, PredictConfig, add_fields,
                         from_args)


def _evaluate(args) -> int:
    from bpho.evaluate import ENSEMBLE_NOTE, evaluate

    cfg = from_args(EvaluateConfig, args)
    result = evaluate(cfg.model, dataset=cfg.dataset, datasource=cfg.datasource, out_dir=cfg.out, device=cfg.device,
                      transform=cfg.transform, split=cfg.split, ensemble=cfg.ensemble,
                      denoise_with=cfg.denoiser)
    s = result.summary
    used = ENSEMBLE_NOTE if result.ensemble else ""
    print(f"evaluated {cfg.model}{used} on {result.images} image(s); table and figures in {result.out}")
    if result.provenance is not None:
        print(result.provenance.describe())
    movie = "flicker" in s["model"]  # movies: the error of the frame-to-frame changes too
    print(f"{'method':10s} {'PSNR':>7s} {'SSIM':>6s} {'MS-SSIM':>8s} {'NRMSE':>7s} {'FRC px':>7s} {'FRC nm':>7s}"
          + (f" {'flicker':>8s}" if movie else ""))
    fmt = lambda v, f: format(v, f) if v is not None else "-"  # noqa: E731
    for method in result.methods:
        m = s[method]
        print(f"{method:10s} {fmt(m['psnr'], '7.2f')} {fmt(m['ssim'], '6.3f')} {fmt(m['ms_ssim'], '8.3f')} "
              f"{fmt(m['nrmse'], '7.4f')} {fmt(m['frc_px'], '7.2f')} {fmt(m['frc_nm'], '7.0f')}"
              + (f" {fmt(m['flicker'], '8.4f')}" if movie else ""))
    for method, choice in result.denoisers.items():
        print(f"{method}: {choice['params']} (PSNR {choice['psnr']:.2f} dB on {', '.join(result.tuned_on)})")
    for k in ("psnr", "ssim"):
        g = s[f"gain_{k}"]
        ci = (f"95% CI {g['ci95_low']:+.3f} .. {g['ci95_high']:+.3f} over images" if g["ci95_low"] is not None
              else "95% CI undefined with one image")
        print(f"gain over {result.reference}, {k.upper()}: {g['mean']:+.3f} ({ci})")
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

    cfg = from_args(ExportConfig, args)
    result = export_bioimageio(cfg.model, cfg.out, sample=cfg.sample, name=cfg.name, authors=list(cfg.author) or None,
                               license=cfg.license, force=cfg.force, track=not cfg.no_log)
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
    """Add `bpho evaluate`, `bpho predict` and `bpho export` to the subcommands `sub`."""
    p = sub.add_parser("evaluate", help="PSNR/SSIM/FRC (and flicker for movies) of a model against "
                       "nearest/bilinear/bicubic, or denoisers for scale 1, on full images")
    add_fields(p, EvaluateConfig)
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("predict", help="LR images / stacks / movies (CZI, TIFF, OME-Zarr) to HR ImageJ TIFF, "
                                       "OME-TIFF or OME-Zarr, block by block")
    p.add_argument("--model", required=True, action="append",
                   help=f"{MODEL_URI_HELP}; or CHANNEL=URI, repeated: one model per channel (a name or an index) "
                        "into one output")
    p.add_argument("inputs", nargs="+")
    p.add_argument("--out", required=True, help="output folder")
    add_fields(p, PredictConfig)
    p.add_argument("--half", action="store_true", help="the same as --precision fp16 (GPU only)")
    p.set_defaults(func=_predict)

    p = sub.add_parser("export", help="a model as a BioImage Model Zoo package (Fiji deepImageJ, napari, ilastik)")
    add_fields(p, ExportConfig)
    p.set_defaults(func=_export)
