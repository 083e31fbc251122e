"""The `bpho train` command: its flags are TrainConfig's fields (bpho/config.py)."""

from __future__ import annotations

from bpho.config import TrainConfig, add_fields, from_args


def _train(args) -> int:
    from bpho import tracking
    from bpho.train import process_start, train

    result = train(from_args(TrainConfig, args), resume=args.resume, setup_since=process_start())
    if result.registered_version:
        name, version = result.registered_name, result.registered_version
        print(f"run {result.run_id}: model registered as {name} version {version}"
              f" (load it with mlflow.pyfunc.load_model('models:/{name}/{version}'))")
        print(f"see it: {tracking.run_url(result.run_id)}")
    return 0


def add_to(sub) -> None:
    """Add `bpho train` to the subcommands `sub`."""
    p = sub.add_parser("train", help="train a U-Net on a dataset's tiles; logs and registers it in MLflow")
    add_fields(p, TrainConfig)
    p.add_argument("--resume", metavar="RUN_ID", help="continue a killed run from its last checkpoint")
    p.set_defaults(func=_train)
