"""The pixel AP a perfect map at a given grid could reach: resolution, not learning.

python benchmarks/map_ceiling.py --data DIR [--grid 37 16 ...] [--input-size 518] [--sigma 4]
                                 [--per-class]

The model scores a patch on a g x g grid of tokens (g = input size / patch size: 37 for
both configs at 518 px) that scrapscan-eval upsamples bilinearly to the input size and
smooths with a Gaussian. This script puts the ground truth itself through that path:
each patch's contaminant mask is averaged over the g x g cells, upsampled and smoothed
the same way, and scored against the mask with scrapscan-eval's streaming metrics. What
it prints per grid is the best a model with that grid can reach on DIR; a trained
model far below it is short of learning, not of resolution. --per-class does the same
for each contaminant class's own mask (scrapscan-eval's per-class AP): a thin class such
as cables fills only part of the cells it crosses, so its ceiling is lower.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common.classes import CLASS_NAMES, IGNORE_INDEX
from common.imaging import INPUT_SIZE
from training.data import DataError, PatchSet, load_frames
from training.evaluate import DEFAULT_SIGMA, smooth
from training.metrics import PixelMetricAccumulator
from training.model import upsample


def ceiling(
    patches: PatchSet, grid: int, sigma: float, classes: Sequence[int | None] = (None,)
) -> list[tuple[dict[str, float] | None, float]]:
    """Pixel metrics of every patch's own mask seen through a grid x grid map; base rate.

    One (metrics, base rate) per entry of `classes`, in one pass over the patches: None
    for the mask of all contaminants, a class index for that class's mask alone; the
    metrics are None when the data holds no pixel of it.
    """
    accs = [PixelMetricAccumulator() for _ in classes]
    positives = [0] * len(classes)
    labelled = 0
    for i in range(len(patches)):
        mask = patches[i].mask
        valid = mask != IGNORE_INDEX
        labelled += int(valid.sum())
        for k, cls in enumerate(classes):
            truth = valid & ((mask > 0) if cls is None else (mask == cls))
            pooled = F.adaptive_avg_pool2d(
                torch.from_numpy(truth[None, None].astype(np.float32)), grid
            )
            scores = smooth(upsample(pooled[:, 0], mask.shape[-1]).numpy(), sigma)
            accs[k].update(scores, truth[None], valid[None])
            positives[k] += int(truth.sum())
    return [
        (acc.compute() if n else None, n / max(labelled, 1))
        for acc, n in zip(accs, positives, strict=True)
    ]


def main(argv: list[str] | None = None) -> int:
    """Print the metric ceiling of each grid."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="labelled frames")
    p.add_argument("--grid", type=int, nargs="+", default=[37], help="map sizes to try")
    p.add_argument("--input-size", type=int, default=INPUT_SIZE, help="patch size in px")
    p.add_argument("--sigma", type=float, default=DEFAULT_SIGMA, help="Gaussian smoothing")
    p.add_argument("--per-class", action="store_true", help="each class's ceiling too")
    args = p.parse_args(argv)
    bad = [g for g in args.grid if not 1 <= g <= args.input_size]
    if bad or args.sigma < 0:
        p.error(f"--grid must be in 1..{args.input_size} (got {bad}), --sigma >= 0")
    try:
        patches = PatchSet(load_frames(args.data), input_size=args.input_size)
    except (DataError, FileNotFoundError) as err:
        print(f"map_ceiling: {err}", file=sys.stderr)
        return 2
    wanted: list[int | None] = [None]
    if args.per_class:
        wanted += list(range(1, len(CLASS_NAMES)))
    for k, grid in enumerate(args.grid):
        (m, base), *per_class = ceiling(patches, grid, args.sigma, wanted)
        if k == 0:
            print(
                f"{args.data}: {len(patches)} patches at {args.input_size} px, base rate {base:.4f}"
            )
        if m is None:
            print(f"map_ceiling: {args.data} holds no contaminant pixel", file=sys.stderr)
            return 2
        print(
            f"grid {grid:3d}: AUROC {m['auroc']:.4f}  AP {m['ap']:.4f}  AUPRO {m['aupro']:.4f}  "
            f"F1-max {m['f1_max']:.4f}"
        )
        for cls, (mc, bc) in zip(wanted[1:], per_class, strict=True):
            assert cls is not None
            if mc is None:
                print(f"  {CLASS_NAMES[cls]:10s} none in the data")
            else:
                print(
                    f"  {CLASS_NAMES[cls]:10s} AP {mc['ap']:.4f}  F1-max {mc['f1_max']:.4f}  "
                    f"base rate {bc:.4f}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
