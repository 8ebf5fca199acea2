"""scrapscan-synth: write synthetic crane frames with masks and COCO annotations.

Renders crane-camera frames of trucks loaded with steel scrap, some with motors, cables
and spray cans in the load:

    DIR/images/*.jpg          the frames
    DIR/masks/*.png           class index per pixel: 0 normal, 1 motor, 2 cable, 3 spray_can
    DIR/annotations.json      COCO, with a truck-bed polygon per image

The same seed gives the same bytes.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from common.cli import command
from training.synth.frame import COVER
from training.synth.writer import write_dataset


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    p = command("scrapscan-synth", __doc__)
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    p.add_argument("--frames", type=int, default=10, metavar="N", help="frames to render (10)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (0)")
    p.add_argument("--width", type=int, default=3840, help="frame width in pixels (3840)")
    p.add_argument("--height", type=int, default=2160, help="frame height in pixels (2160)")
    p.add_argument(
        "--cover",
        type=float,
        default=COVER,
        metavar="F",
        help=(
            f"share of each bed's scrap laid over the contaminants ({COVER}: the median "
            "contaminant about 60%% hidden); 0 leaves them all lying on top"
        ),
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="K",
        help="processes rendering in parallel (1); does not change the output",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace images/, masks/, annotations.json and preview.jpg in DIR",
    )
    p.add_argument(
        "--preview",
        action="store_true",
        help="also write DIR/preview.jpg: the first beds with their labels drawn",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.frames < 1:
        parser.error(f"--frames must be at least 1, got {args.frames}")
    if args.width < 64 or args.height < 64:
        parser.error(f"--width and --height must be at least 64, got {args.width}x{args.height}")
    if not 0.0 <= args.cover <= 1.0:
        parser.error(f"--cover must be between 0 and 1, got {args.cover}")
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    start = time.perf_counter()
    try:
        summary = write_dataset(
            args.out,
            args.frames,
            args.seed,
            args.width,
            args.height,
            args.workers,
            args.overwrite,
            args.preview,
            args.cover,
        )
    except (FileExistsError, OSError) as err:
        print(f"scrapscan-synth: {err}", file=sys.stderr)
        return 2
    total = time.perf_counter() - start
    counts = ", ".join(f"{n} {name}" for name, n in summary.instances.items())
    print(
        f"wrote {summary.frames} frames of {args.width}x{args.height} to {args.out} "
        f"({summary.frames_with_contaminants} with contaminants: {counts})"
    )
    print(
        f"{total:.1f} s in all; per frame (render + encode + write) median "
        f"{summary.median_seconds:.2f} s, max {max(summary.seconds_per_frame):.2f} s, "
        f"{args.workers} worker(s)"
    )
    if args.preview:
        print(f"preview: {args.out / 'preview.jpg'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
