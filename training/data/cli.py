"""scrapscan-data: work with labelled crane-frame folders.

A folder is COCO (annotations.json) or images/ + masks/: check one before training on
it, merge several into one, export operators' feedback as one.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from common.cli import command
from common.imaging import DEFAULT_OVERLAP
from training.data.frames import DataError, load_frames
from training.data.merge import merge_folders
from training.data.patches import PatchSet


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    p = command("scrapscan-data", __doc__)
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
    merge = sub.add_parser(
        "merge",
        help="join labelled data folders into one to train on",
        description="Write the frames of every DIR to the new folder OUT as one COCO folder "
        "(images hard-linked where possible, ids renumbered, file names prefixed with their "
        "folder's name, each image's fields kept): a yard's frames with its operators' "
        "exported feedback, or frames of several cameras. Every DIR is checked first; a "
        "problem stops the merge before OUT is written.",
    )
    merge.add_argument("dirs", type=Path, nargs="+", metavar="DIR", help="data folders")
    merge.add_argument("--out", type=Path, required=True, metavar="OUT", help="a new folder")
    export = sub.add_parser(
        "export-feedback",
        help="write the frames operators judged as a labelled COCO folder",
        description="Read the service's store (SCRAPSCAN_* settings, as scrapscan-serve "
        "reads them) and write the frames operators judged, with masks made from their "
        "judgements, as a COCO folder this command's check and scrapscan-train read as it "
        "is (README, 'Dashboard'). Frames the retention would delete are kept while "
        "feedback refers to them.",
    )
    export.add_argument("--out", type=Path, required=True, metavar="DIR", help="a new folder")
    export.add_argument("--since", metavar="TIME", help="feedback given from then (RFC 3339)")
    export.add_argument("--until", metavar="TIME", help="feedback given before then (RFC 3339)")
    export.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help="the embedded store's folder (SCRAPSCAN_DATA_DIR)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the process exit code."""
    args = build_parser().parse_args(argv)
    if args.command == "export-feedback":  # it reads the service's store
        print(
            "scrapscan-data: export-feedback runs from the scrapscan-data command", file=sys.stderr
        )
        return 2
    return run(args)


def run(args: argparse.Namespace) -> int:
    """The commands of training's own: check and merge."""
    return merge(args) if args.command == "merge" else check(args)


def _problems(where: Path, err: DataError) -> int:
    print(f"scrapscan-data: {where}: {len(err.problems)} problem(s)", file=sys.stderr)
    for problem in err.problems:
        print(f"  {problem}", file=sys.stderr)
    return 1


def merge(args: argparse.Namespace) -> int:
    """The merge command; returns the process exit code."""
    sets = []
    for folder in args.dirs:
        try:
            sets.append(load_frames(folder))
        except FileNotFoundError as err:
            print(f"scrapscan-data: {err}", file=sys.stderr)
            return 2
        except DataError as err:
            return _problems(folder, err)
    try:
        summary = merge_folders(sets, args.out)
    except (ValueError, OSError) as err:
        print(f"scrapscan-data: {err}", file=sys.stderr)
        return 2 if isinstance(err, ValueError) else 1
    parts = ", ".join(f"{n} from {prefix}" for prefix, n in summary.per_source)
    print(f"{args.out}: {summary.frames} frames ({parts}), {summary.instances} instances")
    return 0


def check(args: argparse.Namespace) -> int:
    """The check command; returns the process exit code."""
    try:
        frames = load_frames(args.dir, decode=args.decode)
    except FileNotFoundError as err:
        print(f"scrapscan-data: {err}", file=sys.stderr)
        return 2
    except DataError as err:
        return _problems(args.dir, err)
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
