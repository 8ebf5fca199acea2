"""Time the merge stage alone: 45 tiles of random maps into a full 3840x2160 bed.

Usage: python benchmarks/merge_cpu.py [--runs 5] [--stride 1] [--refine RADIUS_PX EPS]
Prints the median milliseconds and two sums (the same before and after a change means
the same maps). --stride 4 is the service's map grid; --refine adds the guided filter of
the maps on a synthetic 4K frame as the guide (scrapscan-export --refine).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from common.bundle import Refine
from common.tiling import tile_grid
from service.settings import CameraBed
from service.stages import bed_crop, merge


def main() -> None:
    """Run the benchmark."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--stride", type=int, default=1, help="frame pixels per map cell (1)")
    p.add_argument("--refine", nargs=2, metavar=("RADIUS_PX", "EPS"))
    args = p.parse_args()
    refine = None
    if args.refine is not None:  # checked as the bundle's manifest checks it
        refine = Refine(radius_px=args.refine[0], eps=args.refine[1])
    h, w = 2160, 3840
    bed = bed_crop(np.zeros((h, w, 3), np.uint8), CameraBed())
    tiles = tile_grid(bed.box, 512, 64).tiles
    rng = np.random.default_rng(0)
    anomaly = rng.random((len(tiles), 37, 37), dtype=np.float32)
    classes = rng.random((len(tiles), 4, 37, 37), dtype=np.float32)
    frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        out = merge(
            (h, w), bed, tiles, anomaly, classes, 64, 3.95, args.stride, None, refine, frame
        )
        times.append(time.perf_counter() - start)
    print(
        f"merge, full 4K bed, {len(tiles)} tiles, stride {args.stride}, refine "
        f"{None if refine is None else (refine.radius_px, refine.eps)}: "
        f"median {np.median(times) * 1000:.0f} ms "
        f"(sums {out.anomaly.sum():.0f}, {out.classes[2].sum():.0f})"
    )


if __name__ == "__main__":
    main()
