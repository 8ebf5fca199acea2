"""scrapscan-data: training's data commands, and export-feedback, which reads the service.

`check` lives in training.data.cli (training imports nothing of the service);
`export-feedback` reads the service's store, so the command starts here.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from service.errors import InvalidInput
from service.feedback_export import write_export
from service.routes.deps import parse_time
from service.settings import Settings
from service.store import Store
from service.store_redis import RedisStore
from service.store_sqlite import SQLiteStore
from training.data import cli


def open_store(settings: Settings) -> Store:
    """The store the service's settings name (SQLite in DATA_DIR, or Redis)."""
    if settings.store == "redis":
        return RedisStore.from_settings(settings)
    if not (settings.data_dir / "scrapscan.db").is_file():
        raise FileNotFoundError(f"{settings.data_dir}: no scrapscan.db (set SCRAPSCAN_DATA_DIR)")
    return SQLiteStore.from_settings(settings)


def export_feedback(args: argparse.Namespace) -> int:
    """The export-feedback command; returns the process exit code."""
    try:
        since = parse_time(args.since, "--since").timestamp() if args.since else None
        until = parse_time(args.until, "--until").timestamp() if args.until else None
        settings = Settings(**({"data_dir": args.data_dir} if args.data_dir else {}))
        store = open_store(settings)
    except (InvalidInput, ValidationError, FileNotFoundError) as err:
        print(f"scrapscan-data: {getattr(err, 'message', err)}", file=sys.stderr)
        return 2
    try:
        summary = write_export(store, args.out, since, until)
    except (ValueError, OSError) as err:
        print(f"scrapscan-data: {err}", file=sys.stderr)
        return 1
    finally:
        store.close()
    print(
        f"{args.out}: {summary.frames} judged frames, {summary.instances} labelled instances, "
        f"{summary.to_label} missed boxes to label ({summary.items} feedback items)"
    )
    if summary.left_out:
        print(
            f"left out, their upload is no longer kept: {', '.join(summary.left_out)}",
            file=sys.stderr,
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the process exit code."""
    args = cli.build_parser().parse_args(argv)
    if args.command == "export-feedback":
        return export_feedback(args)
    return cli.run(args)


if __name__ == "__main__":
    sys.exit(main())
