"""Per-stage time of the pipeline on synthetic 4K frames, in process (no HTTP), on the CPU.

python benchmarks/stages_cpu.py [--frames 8] [--bed learned|full]

Runs the demo bundle's pipeline (ONNX Runtime on the CPU, 2 threads) on frames cycled
from four held-out synthetic 4K frames (seed 300), one at a time, and prints the median
of each stage and of everything outside the model over all but the first two frames
(warm-up); then times make_tiles alone on a full 4K frame (45 tiles). Only the service's
public pieces (Pipeline, make_tiles) are used, so the same command measures older
revisions of the code as well.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import cv2
import numpy as np

from common.bundle import load_bundle
from common.inputs import make_tiles
from common.tiling import Box
from service.batcher import Batcher
from service.bedmodel import LearnedBed
from service.engine import open_engine
from service.pipeline import Pipeline
from service.settings import CameraBed, Settings
from training.synth import render_frame


async def stages(frames: int, bed: str) -> dict[str, float]:
    """Median ms per stage, and outside the model, over frames[2:]."""
    settings = Settings(default_bed=CameraBed(bed=bed), threads=2)  # type: ignore[arg-type]
    bundle = load_bundle(settings.bundle)
    engine = open_engine(bundle, "onnxruntime", "cpu", 2, "fp32")
    batcher = Batcher(engine, 8, 0.01)
    batcher.start()
    finder = LearnedBed(bundle) if bed == "learned" else None
    pipeline = Pipeline(bundle, batcher, settings, finder)
    jpgs = []
    for i in range(4):
        ok, data = cv2.imencode(".jpg", render_frame(300, i).image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        jpgs.append(data.tobytes())
    rows = [(await pipeline.process(jpgs[k % 4], "bench")).result.timings_ms for k in range(frames)]
    await batcher.stop()
    rows = rows[2:]
    out = {stage: statistics.median(r[stage] for r in rows) for stage in rows[0]}
    out["outside the model"] = statistics.median(
        sum(v for k, v in r.items() if k != "infer") for r in rows
    )
    return out


def tiles_ms(runs: int = 3) -> float:
    """make_tiles on a full 4K frame, median ms."""
    image = render_frame(300, 1).image
    box = Box(0, 0, 3840, 2160)
    make_tiles(image, box, 512, 64, 518)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        make_tiles(image, box, 512, 64, 518)
        times.append(1000 * (time.perf_counter() - t0))
    return float(np.median(times))


def main() -> None:
    """Measure and print."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--bed", choices=("learned", "full"), default="learned")
    args = p.parse_args()
    result = asyncio.run(stages(max(3, args.frames), args.bed))
    print(", ".join(f"{k} {v:.1f}" for k, v in result.items()) + " (median ms per 4K frame)")
    print(f"make_tiles, full 4K frame (45 tiles): median {tiles_ms():.1f} ms")


if __name__ == "__main__":
    main()
