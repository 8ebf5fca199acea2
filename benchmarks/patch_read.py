"""Time to read one training patch: from its 4K frame, from the patch cache, and augmented.

python benchmarks/patch_read.py --data DIR --cache DIR [--config configs/tiny.yaml]
    [--patches 48] [--seed 0]

Reads the same randomly drawn patches (as a shuffled epoch does) through PatchDataset
three ways and prints the mean milliseconds per patch: decoded from the frame (the
PatchSet keeps its last 4 frames, which a shuffled order rarely hits), read from the
cache (built first if DIR holds none), and read from the cache with the config's
augmentation. One process, one thread for OpenCV, so the figures are per core.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np

from training.config import load_config
from training.data import PatchSet, load_frames
from training.data.dataset import PatchDataset
from training.data.patch_cache import PatchCache


def main() -> None:
    """Print the three timings."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--cache", type=Path, required=True)
    p.add_argument("--config", type=Path, default=Path("configs/tiny.yaml"))
    p.add_argument("--patches", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    cv2.setNumThreads(1)
    cfg = load_config(args.config)
    patches = PatchSet.for_config(load_frames(args.data), cfg)
    cache = PatchCache.open(patches, args.cache)
    drawn = np.random.default_rng(args.seed).integers(0, len(patches), args.patches).tolist()
    ways = {
        "from the frame": PatchDataset(patches),
        "from the cache": PatchDataset(patches, cache=cache),
        "from the cache, augmented": PatchDataset(patches, cfg.data.augment, 0, cache),
    }
    print(f"{len(patches)} patches in {args.data}; {args.patches} drawn at random")
    for name, dataset in ways.items():
        start = time.perf_counter()
        for n, i in enumerate(drawn):
            dataset[(i, 0, n)]
        ms = (time.perf_counter() - start) / len(drawn) * 1000
        print(f"{name:<28} {ms:7.1f} ms a patch")


if __name__ == "__main__":
    main()
