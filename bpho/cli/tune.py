"""The `bpho tune` commands (Optuna studies) and `bpho synthesize` (LR made from HR).

The flags are the fields of FitConfig, HparamsConfig (with SearchSpace), DegradationStudyConfig,
DegradationReportConfig and SynthesizeConfig (bpho/config.py); the degradations offered are the
registered ones (bpho/degrade).
"""

from __future__ import annotations

import dataclasses

from bpho.cli.dataset import print_dataset
from bpho.cli.dataset import print_run
from bpho.config import (DegradationReportConfig, DegradationStudyConfig, FitConfig, HparamsConfig, SearchSpace,
                         SynthesizeConfig, add_fields, from_args)


def _tune_fit(args) -> int:
    from bpho import tune

    result = tune.fit_search(from_args(FitConfig, args))
    print(result.table())
    print(f"saved to {result.path}" + (f"; MLflow run {result.run_id}" if result.run_id else ""))
    _see_it(result.run_id)
    return 0


def _tune_hparams(args) -> int:
    from bpho import tune

    r = tune.hparams(from_args(HparamsConfig, args, space=from_args(SearchSpace, args)))
    print(f"study {r.study} on {r.storage}: {r.trials} trials; parent MLflow run {r.parent_run_id}")
    _see_it(r.parent_run_id)
    if r.best_value is None:
        print("no trial has finished yet")
    else:
        print(f"best validation PSNR gain over bicubic {r.best_value:+.3f} dB (run {r.best_run_id}) with "
              + ", ".join(f"{k}={v}" for k, v in r.best_params.items()))
    return 0


def _tune_degradation(args) -> int:
    from bpho import tune

    cfg = from_args(DegradationStudyConfig, args)
    r = tune.tune_degradation(cfg)
    print(f"study {r.study}: best distance {r.best_value:.4f} ("
          + ", ".join(f"{k} {v:.4f}" for k, v in r.scores.items() if k != "total") + ")")
    print("best parameters: " + ", ".join(f"{k}={v}" for k, v in r.best_params.items()))
    _see_it(r.parent_run_id)
    print(f"use them: bpho synthesize --degradation {cfg.degradation} "
          + " ".join(f"--set {k}={','.join(map(str, v)) if isinstance(v, (list, tuple)) else v}"
                     for k, v in r.best_params.items() if v is not None) + " ...")
    return 0


def _tune_degradation_report(args) -> int:
    from bpho import tune

    result = tune.report(from_args(DegradationReportConfig, args))
    print(tune.report_table(result))
    print(f"table and figure in {result.out}; MLflow run {result.run_id}")
    _see_it(result.run_id)
    return 0


def _synthesize(args) -> int:
    from bpho import synthesize

    deg, ds = synthesize.run(from_args(SynthesizeConfig, args))
    print(f"dataset {ds.name} built at {ds.path} (digest {ds.digest[:12]}) with LR synthesized by {deg.name}:")
    print("  " + ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(deg.params).items()))
    if deg.fitted_on:
        print(f"  fitted on {len(deg.fitted_on['pairs'])} pairs of {deg.fitted_on['datasource']} "
              f"(intensity mapping explains {deg.fitted_on['explained']:.1%} of the LR variance)")
    print_dataset(ds)
    print_run(ds)
    return 0


def _see_it(run_id) -> None:
    from bpho import tracking

    if run_id:
        print(f"see it: {tracking.run_url(run_id)}")


def add_to(sub) -> None:
    """Add `bpho tune` to the subcommands `sub`."""
    tune = sub.add_parser("tune", help="Optuna: batch sizes that fit the card; hyperparameter search").add_subparsers(
        dest="action", required=True)
    p = tune.add_parser("fit", help="largest batch per tile size within a memory budget, with tiles/s")
    add_fields(p, FitConfig)
    p.set_defaults(func=_tune_fit)

    p = tune.add_parser("hparams", help="Optuna study maximising validation PSNR gain; one MLflow run per trial")
    add_fields(p, HparamsConfig)
    add_fields(p, SearchSpace)
    p.set_defaults(func=_tune_hparams)

    p = tune.add_parser("degradation", help="Optuna: degradation parameters whose LR looks most like real LR")
    add_fields(p, DegradationStudyConfig)
    p.set_defaults(func=_tune_degradation)

    p = tune.add_parser("degradation-report", help="train on real vs synthetic pairs; evaluate on held-out real pairs")
    add_fields(p, DegradationReportConfig)
    p.add_argument("--set", action="append", dest="recipe_settings", metavar="KEY=VALUE",
                   help="recipe field for all four datasets (repeatable)")
    p.set_defaults(func=_tune_degradation_report)

    p = sub.add_parser("synthesize", help="a dataset of synthetic pairs: LR made from HR by a degradation model")
    add_fields(p, SynthesizeConfig)
    p.set_defaults(func=_synthesize)
