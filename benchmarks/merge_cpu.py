"""Time the merge stage alone: 45 tiles of random maps into a full 3840x2160 bed.

Usage: python benchmarks/merge_cpu.py [--runs 5]
Prints the median milliseconds and two sums (the same before and after a change means
the same maps).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from common.tiling import tile_grid
from service.settings import CameraBed
from service.stages import bed_crop, merge


def main() -> None:
    """Run the benchmark."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    h, w = 2160, 3840
    bed = bed_crop(np.zeros((h, w, 3), np.uint8), CameraBed())
    tiles = tile_grid(bed.box, 512, 64).tiles
    rng = np.random.default_rng(0)
    anomaly = rng.random((len(tiles), 37, 37), dtype=np.float32)
    classes = rng.random((len(tiles), 4, 37, 37), dtype=np.float32)
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        out = merge((h, w), bed, tiles, anomaly, classes, 64, 3.95)
        times.append(time.perf_counter() - start)
    print(
        f"merge, full 4K bed, {len(tiles)} tiles: median {np.median(times) * 1000:.0f} ms "
        f"(sums {out.anomaly.sum():.0f}, {out.classes[2].sum():.0f})"
    )


if __name__ == "__main__":
    main()
