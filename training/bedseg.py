"""The learned bed cropper: a small CNN that finds the truck bed in a downscaled frame.

Cameras on a crane see trucks parked anywhere under them, so a fixed polygon does not
fit every truck. This model segments the bed interior on the frame shrunk to 384 x 224;
the service takes the largest region, outlines it and crops the full-resolution frame to
it. It is trained on the synthetic frames' bed polygons (each frame carries one), which
take a few minutes on 2 CPU cores.

scrapscan-train-bed --out bed.pt [--frames 400] [--steps 600] [--seed 500]
scrapscan-export ... --bed-model bed.pt   puts it into the bundle as bed.onnx
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn

from common.bed import BED_INPUT, bed_input
from common.imaging import polygon_mask


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class BedNet(nn.Module):
    """Encoder (4 stride-2 stages) and a decoder with skips; logits at input resolution."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        c = [width, width * 2, width * 4, width * 8]
        self.down = nn.ModuleList(
            [
                nn.Sequential(_block(3, c[0], 2), _block(c[0], c[0], 1)),
                nn.Sequential(_block(c[0], c[1], 2), _block(c[1], c[1], 1)),
                nn.Sequential(_block(c[1], c[2], 2), _block(c[2], c[2], 1)),
                nn.Sequential(_block(c[2], c[3], 2), _block(c[3], c[3], 1)),
            ]
        )
        self.up = nn.ModuleList(
            [
                _block(c[3] + c[2], c[2], 1),
                _block(c[2] + c[1], c[1], 1),
                _block(c[1] + c[0], c[0], 1),
            ]
        )
        self.head = nn.Conv2d(c[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) from bed_input; returns (B, 1, H, W) logits."""
        skips = []
        for stage in self.down:
            x = stage(x)
            skips.append(x)
        x = skips.pop()
        for block in self.up:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        out: torch.Tensor = F.interpolate(
            self.head(x), scale_factor=2, mode="bilinear", align_corners=False
        )
        return out


def bed_mask(polygon: npt.NDArray[np.float64], frame_w: int, frame_h: int) -> npt.NDArray[np.uint8]:
    """The polygon (frame pixels, COCO convention) rasterised at the bed model's size."""
    h, w = BED_INPUT
    return polygon_mask(polygon, h, w, (w / frame_w, h / frame_h)).astype(np.uint8)


def synthetic_set(seed: int, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (N, 3, 224, 384) and masks (N, 1, 224, 384) from synthetic frames at 768x432."""
    from training.synth import render_frame

    xs, ys = [], []
    for i in range(frames):
        f = render_frame(seed, i, 768, 432)
        xs.append(bed_input(f.image))
        ys.append(bed_mask(f.bed_polygon, 768, 432)[None].astype(np.float32))
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


def iou(logits: torch.Tensor, masks: torch.Tensor) -> float:
    """Mean IoU of the thresholded predictions."""
    pred = logits > 0
    truth = masks > 0.5
    inter = (pred & truth).flatten(1).sum(1).float()
    union = (pred | truth).flatten(1).sum(1).float().clamp_min(1)
    return float((inter / union).mean())


def train_bed_model(
    frames: int = 400, steps: int = 600, seed: int = 500, batch: int = 16, log: bool = True
) -> tuple[BedNet, dict[str, float]]:
    """Train on `frames` synthetic frames (seed) and measure IoU on 50 others (seed + 1)."""
    torch.manual_seed(seed)
    x, y = synthetic_set(seed, frames)
    xt, yt = synthetic_set(seed + 1, 50)
    model = BedNet()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    model.train()
    for step in range(1, steps + 1):
        idx = torch.randint(len(x), (batch,), generator=gen)
        xb, yb = x[idx], y[idx]
        if step % 2:  # mirror half the batches: trucks park both ways
            xb, yb = xb.flip(-1), yb.flip(-1)
        logits = model(xb)
        p = logits.sigmoid()
        dice = 1 - (2 * (p * yb).sum() + 1) / (p.sum() + yb.sum() + 1)
        loss = F.binary_cross_entropy_with_logits(logits, yb) + dice
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if log and step % 100 == 0:
            print(f"step {step}: loss {float(loss):.4f}", flush=True)
    model.eval()
    with torch.no_grad():
        held_out = iou(torch.cat([model(xt[i : i + 16]) for i in range(0, len(xt), 16)]), yt)
    return model, {
        "held_out_iou": round(held_out, 4),
        "frames": frames,
        "steps": steps,
        "seconds": round(time.perf_counter() - start, 1),
    }


def save_bed_model(path: Path, model: BedNet, metrics: dict[str, float]) -> None:
    """The weights and their metrics, for scrapscan-export --bed-model."""
    torch.save({"bed_model": model.state_dict(), "metrics": metrics}, path)


def load_bed_model(path: Path) -> tuple[BedNet, dict[str, float]]:
    """The model saved by scrapscan-train-bed, in eval mode; ValueError names a wrong file."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = BedNet()
        model.load_state_dict(state["bed_model"])
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except Exception as err:
        raise ValueError(f"{path}: not a scrapscan-train-bed model ({err})") from err
    return model.eval(), dict(state.get("metrics", {}))


def main(argv: Sequence[str] | None = None) -> int:
    """scrapscan-train-bed."""
    p = argparse.ArgumentParser(
        prog="scrapscan-train-bed",
        description="Train the learned bed cropper on synthetic crane frames and save it.",
    )
    p.add_argument("--out", type=Path, required=True, metavar="FILE", help="e.g. runs/bed.pt")
    p.add_argument("--frames", type=int, default=400)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--seed", type=int, default=500)
    args = p.parse_args(argv)
    if args.frames < 1 or args.steps < 1:
        p.error("--frames and --steps must be >= 1")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model, metrics = train_bed_model(args.frames, args.steps, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_bed_model(args.out, model, metrics)
    print(
        f"bed model: held-out IoU {metrics['held_out_iou']:.4f} on 50 frames "
        f"(seed {args.seed + 1}); {metrics['seconds']} s; saved {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
