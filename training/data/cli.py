"""scrapscan-data: check a labelled data folder before training on it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from common.imaging import DEFAULT_OVERLAP
from training.data.frames import DataError, load_frames
from training.data.patches import PatchSet


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    p = argparse.ArgumentParser(
        prog="scrapscan-data",
        description="Work with labelled crane-frame folders (COCO annotations.json, or "
        "images/ + masks/).",
    )
    sub = p.add_subparsers(dest="command", required=True)
    check = sub.add_parser(
        "check",
        help="check a data folder and summarise it",
        description="Load DIR as training would and list every problem found (file and "
        "reason). Exit status 1 when there are problems.",
    )
    check.add_argument("dir", type=Path, metavar="DIR", help="data folder or COCO json file")
    check.add_argument(
        "--decode",
        action="store_true",
        help="decode every image fully to find truncated files (slow)",
    )
    check.add_argument(
        "--patches",
        action="store_true",
        help="also cut the training patches and count pixels and patches per class",
    )
    check.add_argument(
        "--overlap",
        type=int,
        default=DEFAULT_OVERLAP,
        help=f"tile overlap in pixels for --patches ({DEFAULT_OVERLAP})",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        frames = load_frames(args.dir, decode=args.decode)
    except FileNotFoundError as err:
        print(f"scrapscan-data: {err}", file=sys.stderr)
        return 2
    except DataError as err:
        print(f"scrapscan-data: {args.dir}: {len(err.problems)} problem(s)", file=sys.stderr)
        for problem in err.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    with_bed = sum(f.bed_polygon is not None for f in frames.frames)
    counts = ", ".join(f"{n} {name}" for name, n in frames.instance_counts().items())
    print(
        f"{args.dir}: {len(frames.frames)} frames ({frames.layout} layout), "
        f"{with_bed} with a bed polygon; instances: {counts}; no problems found"
    )
    if args.patches:
        try:
            stats = PatchSet(frames, overlap=args.overlap).class_stats()
        except (OSError, ValueError) as err:
            print(f"scrapscan-data: {err}", file=sys.stderr)
            return 1
        print(stats.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
