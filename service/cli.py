"""scrapscan-serve: run the HTTP API with uvicorn.

Embedded (store sqlite, the default) it processes frames itself; with store redis it
queues them for scrapscan-worker processes (service/worker.py).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments (everything else comes from SCRAPSCAN_* settings)."""
    p = argparse.ArgumentParser(
        prog="scrapscan-serve",
        description="Serve the scrapscan HTTP API: POST crane frames to /v1/frames; docs at "
        "/docs. Embedded (SCRAPSCAN_STORE=sqlite, the default) it runs the model itself; "
        "with SCRAPSCAN_STORE=redis it queues frames for scrapscan-worker processes. "
        "Settings come from SCRAPSCAN_* environment variables and the file named by "
        "SCRAPSCAN_SETTINGS_FILE; --bundle and --data-dir override them.",
    )
    p.add_argument("--bundle", type=Path, help="model bundle folder (default: models/demo)")
    p.add_argument("--data-dir", type=Path, help="where uploads and results are kept (data)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run until interrupted; exit 1 with a message when the settings or bundle are wrong."""
    args = build_parser().parse_args(argv)
    import uvicorn

    from service.app import create_app
    from service.bundle import BundleError, load_bundle
    from service.settings import Settings

    overrides = {k: v for k, v in (("bundle", args.bundle), ("data_dir", args.data_dir)) if v}
    try:
        settings = Settings(**overrides)
        if settings.store == "sqlite":  # with store redis the workers load the model
            load_bundle(settings.bundle)  # fail here, with the file named, not in the server
    except (ValidationError, BundleError, ValueError, OSError) as err:
        print(f"scrapscan-serve: {err}", file=sys.stderr)
        return 1
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
