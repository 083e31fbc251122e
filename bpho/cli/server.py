"""The `bpho server` (the group's MLflow server) and `bpho tracking-uri` commands."""

from __future__ import annotations


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


def add_to(sub) -> None:
    """Add `bpho server` and `bpho tracking-uri` to the subcommands `sub`."""
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
