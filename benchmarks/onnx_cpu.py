"""Time a bundle's ONNX files with ONNX Runtime on the CPU, and the same graph after onnxslim.

Usage: python benchmarks/onnx_cpu.py BUNDLE_DIR [--batch 4] [--runs 10]
Prints the median seconds per batch of each file, the node counts, and the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from common.bundle import load_bundle
from model_export.onnx_export import simplify


def median_seconds(path: Path, batch: int, size: int, runs: int) -> float:
    """Median wall time of one batch (after one warm-up run)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    session.run(None, {"images": x})
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, {"images": x})
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    """Run the benchmark."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--runs", type=int, default=10)
    args = p.parse_args()
    bundle = load_bundle(args.bundle)
    size = bundle.manifest.input_size
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.is_file() else []
    cpu = next(
        (s.split(":", 1)[1].strip() for s in lines if s.startswith("model name")),
        platform.processor(),
    )
    print(f"{os.cpu_count()} cores ({cpu}), onnxruntime {ort.__version__}, batch {args.batch}")
    files = {n: bundle.path(n) for n, f in bundle.manifest.files.items() if f.kind == "onnx"}
    with tempfile.TemporaryDirectory() as tmp:
        slim = Path(tmp) / "model.slim.onnx"
        slim.write_bytes(files["model.onnx"].read_bytes())
        simplify(slim)
        files["model.onnx + onnxslim"] = slim
        for name, path in files.items():
            nodes = len(onnx.load(str(path)).graph.node)
            seconds = median_seconds(path, args.batch, size, args.runs)
            print(f"{name:24s} {nodes:5d} nodes  median {seconds * 1000:7.1f} ms per batch")


if __name__ == "__main__":
    main()
