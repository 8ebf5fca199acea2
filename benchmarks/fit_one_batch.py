"""Can a config's model fit one batch? Separates optimisation from generalisation.

python benchmarks/fit_one_batch.py --data DIR [--config configs/tiny.yaml] [--steps 80]
                                   [--batch 4] [--min-pixels 3000] [--every 20]

Takes the first `--batch` training patches of DIR holding at least `--min-pixels`
contaminant pixels, builds the model as scrapscan-train does (class weights from the
whole data set, schedule-free AdamW, the training loop's own step) and trains on that
one batch again and again. Every `--every` steps it prints the loss and the pixel AP of
1 - p(normal) on the same batch (model and optimizer in eval mode). A model that cannot
reach a high AP here cannot learn the data set; one that can, but stays low on the
whole set, is short of steps, data or inductive bias instead.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from common.classes import IGNORE_INDEX
from training.config import load_config
from training.data import PatchSet, load_frames
from training.data.dataset import PatchDataset
from training.metrics import pixel_metrics
from training.model import build_model, upsample
from training.runs import class_weights
from training.train import make_optimizer, train_step

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    """Train on one batch and print how well it fits."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "tiny.yaml")
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--min-pixels", type=int, default=3000)
    p.add_argument("--every", type=int, default=20)
    args = p.parse_args(argv)
    cfg = load_config(args.config)
    torch.manual_seed(cfg.train.seed)
    patches = PatchSet.for_config(load_frames(args.data), cfg)
    counts = patches.pixel_counts()
    chosen = np.flatnonzero(counts[:, 1:].sum(axis=1) >= args.min_pixels)[: args.batch]
    if len(chosen) < args.batch:
        print(
            f"{args.data}: only {len(chosen)} patches hold {args.min_pixels} contaminant "
            f"pixels or more; lower --min-pixels or --batch",
            file=sys.stderr,
        )
        return 2
    dataset = PatchDataset(patches)
    items = [dataset[int(i)] for i in chosen]
    images = torch.stack([x for x, _ in items])
    masks = torch.stack([y for _, y in items])
    weights = class_weights(patches.class_stats(counts).pixels, cfg)
    model = build_model(cfg.model)
    optimizer = make_optimizer(model, cfg)
    labels = masks.numpy()
    keep = labels != IGNORE_INDEX
    truth = (labels > 0) & keep

    def batch_ap() -> float:
        model.eval()
        optimizer.eval()
        with torch.no_grad():
            scores = upsample(1 - model(images).class_probs[:, 0], labels.shape[-1]).numpy()
        model.train()
        optimizer.train()
        return pixel_metrics(scores, truth, valid=keep)["ap"]

    print(
        f"{cfg.name}: {len(chosen)} patches, {truth.mean():.4f} of their pixels contaminant, "
        f"AP before training {batch_ap():.4f}"
    )
    model.train()
    optimizer.train()
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        parts = train_step(model, optimizer, images, masks, weights, cfg, nullcontext(), step)
        if step % args.every == 0 or step == args.steps:
            print(
                f"step {step:4d}  loss {parts['loss']:.3f}  AP on the batch {batch_ap():.4f}  "
                f"{time.perf_counter() - start:.0f} s"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
