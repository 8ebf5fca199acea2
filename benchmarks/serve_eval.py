"""Accuracy of the whole service, through HTTP, on held-out synthetic 4K frames.

Usage: python benchmarks/serve_eval.py [--frames 20] [--seed 300] [--bundle models/demo]
       [--bed learned|full]

Starts the service (embedded mode, a temporary data folder), posts each frame as a
camera would (?wait=true) and compares the answer with the frame's ground truth:
- pixel AP and AUROC: each pixel scored with the score of the returned instance covering
  it (0 elsewhere), against the true contaminant pixels (what the service's output
  supports; the evaluation of the model alone is scrapscan-eval's);
- instance recall: a true contaminant counts as found when returned instances cover at
  least 25% of its visible pixels; instance precision: returned instances that cover at
  least one true contaminant pixel;
- bed IoU of the polygon the service used against the true bed polygon.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import httpx
import numpy as np

from common.imaging import polygon_mask
from service.demo import running_service
from service.settings import CameraBed, Settings
from training.metrics import PixelMetricAccumulator
from training.synth import render_frame


def main() -> None:
    """Run the evaluation and print the figures."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=20)
    p.add_argument("--seed", type=int, default=300)
    p.add_argument("--bundle", type=Path)
    p.add_argument("--bed", choices=("learned", "full"), default="learned")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(default_bed=CameraBed(bed=args.bed), data_dir=Path(tmp))
        if args.bundle:
            settings = settings.model_copy(update={"bundle": args.bundle})
        acc = PixelMetricAccumulator()
        found = total = hits = returned = 0
        bed_iou: list[float] = []
        seconds: list[float] = []
        with running_service(settings) as url:
            for i in range(args.frames):
                frame = render_frame(args.seed, i)
                h, w = frame.image.shape[:2]
                _, jpg = cv2.imencode(".jpg", frame.image, [cv2.IMWRITE_JPEG_QUALITY, 90])
                start = time.perf_counter()
                r = httpx.post(
                    f"{url}/v1/frames",
                    params={"wait": "true"},
                    data={"camera_id": "eval"},
                    files={"image": ("f.jpg", jpg.tobytes(), "image/jpeg")},
                    timeout=300,
                )
                seconds.append(time.perf_counter() - start)
                res = r.json()["result"]
                scores = np.zeros((h, w), np.float32)
                covered = np.zeros((h, w), bool)
                truth = frame.class_mask() > 0
                for inst in res["instances"]:
                    region = polygon_mask(inst["polygon"], h, w)
                    scores = np.maximum(scores, np.where(region, inst["score"], 0.0))
                    covered |= region
                    returned += 1
                    hits += bool((region & truth).any())
                acc.update(scores[None], truth[None], np.ones((1, h, w), bool))
                for inst in frame.instances:
                    visible = frame.instance_map == inst.instance_id
                    if visible.any():
                        total += 1
                        found += bool((covered & visible).sum() >= 0.25 * visible.sum())
                used = polygon_mask(res["bed"]["polygon"], h, w)
                true_bed = polygon_mask(frame.bed_polygon, h, w)
                bed_iou.append(float((used & true_bed).sum() / max((used | true_bed).sum(), 1)))
    m = acc.compute()
    print(
        f"{args.frames} frames (seed {args.seed}, 3840x2160), bed {args.bed}, bundle "
        f"{settings.bundle}"
    )
    print(f"pixel AP {m['ap']:.4f}  AUROC {m['auroc']:.4f}  (instance scores painted on pixels)")
    print(
        f"instance recall {found}/{total} = {found / max(total, 1):.3f}; instance precision "
        f"{hits}/{returned} = {hits / max(returned, 1):.3f}"
    )
    print(f"bed IoU mean {np.mean(bed_iou):.4f}, min {np.min(bed_iou):.4f}")
    print(f"per frame through HTTP: median {np.median(seconds):.2f} s")


if __name__ == "__main__":
    main()
