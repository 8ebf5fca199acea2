"""scrapscan-serve: run the HTTP API with uvicorn.

Embedded (store sqlite, the default) it processes frames itself; with store redis it
queues them for scrapscan-worker processes (service/worker.py) and may run as several
processes (--processes) behind one port. POST crane frames to /v1/frames; the API's
documentation is at /docs.

Settings come from SCRAPSCAN_* environment variables and the file named by
SCRAPSCAN_SETTINGS_FILE; --bundle, --repository and --data-dir override them. Without
SCRAPSCAN_API_KEYS_FILE it serves only on a loopback address.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from common.cli import command

LOOPBACK = ("127.0.0.1", "localhost", "::1")
LOG_ENV = "SCRAPSCAN_PROCESS_LOGGING"
"""How --processes passes the log level and format to each process."""
log = logging.getLogger("scrapscan.serve")


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments (everything else comes from SCRAPSCAN_* settings)."""
    p = command("scrapscan-serve", __doc__)
    add_model_arguments(p)
    p.add_argument("--data-dir", type=Path, help="where uploads and results are kept (data)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    add_log_arguments(p)
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        help="API processes sharing the port (store redis only; metrics are added up across them)",
    )
    return p


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """--bundle and --repository, shared with scrapscan-worker."""
    p.add_argument("--bundle", type=Path, help="model bundle folder (default: models/demo)")
    p.add_argument(
        "--repository",
        type=Path,
        metavar="DIR",
        help="model repository (scrapscan-export --repository; the API and the workers "
        "share the folder): serve its active version, and follow it when an admin changes "
        "it (POST /v1/admin/bundles/active, /v1/admin/bundles/rollback)",
    )


def add_log_arguments(p: argparse.ArgumentParser) -> None:
    """--log-level and --log-format, shared with scrapscan-worker."""
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.add_argument(
        "--log-format",
        default="json",
        choices=("json", "text"),
        help="JSON lines with the request id (default), or plain text",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run until interrupted; exit 1 with a message when the settings or bundle are wrong."""
    args = build_parser().parse_args(argv)
    import uvicorn

    from common.bundle import BundleError, load_bundle
    from service.auth import KeyRing, KeysFileError
    from service.local import GRACE_S
    from service.logs import configure_logging
    from service.objects import ObjectStore, ObjectStoreError
    from service.serving import bundle_path
    from service.settings import Settings

    given = (("bundle", args.bundle), ("data_dir", args.data_dir), ("repository", args.repository))
    overrides = {k: v for k, v in given if v}
    try:
        settings = Settings(**overrides)
        # fail here, with the file named, not in the server
        path = bundle_path(settings)
        if settings.store == "sqlite":  # with store redis the workers load the model
            load_bundle(path, serving=True)
        KeyRing(settings.api_keys_file)
        if settings.api_keys_file is None and args.host not in LOOPBACK:
            raise ValueError(
                f"refusing to serve on {args.host} without API keys: set "
                "SCRAPSCAN_API_KEYS_FILE (README, 'API keys') or bind to 127.0.0.1"
            )
        if settings.objects is not None:
            ObjectStore.of(settings.objects).check()
        if args.processes > 1 and settings.store != "redis":
            raise ValueError(
                "--processes needs SCRAPSCAN_STORE=redis (embedded, one process holds the model)"
            )
    except (
        ValidationError,
        BundleError,
        KeysFileError,
        ValueError,
        OSError,
        ObjectStoreError,
    ) as err:
        print(f"scrapscan-serve: {err}", file=sys.stderr)
        return 1
    configure_logging(args.log_level, args.log_format)
    if args.processes == 1:
        from service.app import create_app

        app: object = create_app(settings, freeze_heap=True)
    else:  # each process builds the app from the environment
        for name, value in overrides.items():
            os.environ[f"SCRAPSCAN_{name.upper()}"] = str(value)
        os.environ[LOG_ENV] = f"{args.log_level} {args.log_format}"
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="scrapscan-"))
        app = "service.cli:process_app"
    uvicorn.run(
        app,  # type: ignore[arg-type]
        factory=args.processes > 1,
        workers=args.processes,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        log_config=None,
        timeout_graceful_shutdown=GRACE_S,  # then open event streams are closed
    )
    return 0


def process_app() -> Any:
    """The app of one of several API processes (uvicorn calls this in each)."""
    from service.app import create_app
    from service.logs import configure_logging

    level, fmt = os.environ.get(LOG_ENV, "info json").split()
    configure_logging(level, "text" if fmt == "text" else "json")
    return create_app(freeze_heap=True)


if __name__ == "__main__":
    sys.exit(main())
