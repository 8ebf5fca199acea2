"""scrapscan-bench: how fast the engine and the service are, measured honestly.

    scrapscan-bench engine [--model paper|tiny|BUNDLE [--engine E] [--precision P]]
                           [--batch 1 4 8 16 32] [--seconds 5]
    scrapscan-bench e2e [--cameras 8] [--seconds 30] [--mode fast|naive] [--bundle DIR]
                        [--text-classes N]
    scrapscan-bench store --store sqlite|redis --frames N [--redis-url URL]

engine: tiles/s by batch size for one model, PyTorch (bf16 on a GPU, fp32 on a CPU) for
    `paper` (the paper-size model, random weights) and `tiny`, or the bundle's engine as
    the service opens it (`--engine`, `--precision`: as SCRAPSCAN_ENGINE and
    SCRAPSCAN_PRECISION). The same run measures the machine's dense matrix-product peak
    (the same dtype) and reports the fraction of it the model reaches, from the model's
    FLOPs per tile counted by torch's FLOP counter.
e2e: the service on the given bundle started in this process (uvicorn, a temporary data
    folder), N simulated cameras each posting synthetic 4K frames (`?wait=true`, the next
    frame once the answer is in) for T seconds. Prints frames/s, latency p50/p95/p99, the
    median time of the stages outside the model (decode, crop, tile, merge, postprocess,
    encode) from the results' timings, and the GPU busy fraction where NVML can read it.
    `--mode naive` is the baseline a user would otherwise write: one frame at a time (no
    batching across frames), full-resolution maps and overlay, the same engine and
    precision. `--text-classes N` defines N classes by text first (two prompts each).

store: a store (the embedded SQLite one, or Redis at --redis-url) filled through its own
    API to N frames; times every route's store calls, the retention purge (and what a
    concurrent reader waits meanwhile) and the bytes per frame.

Each prints a Markdown table and write the figures as JSON with --json FILE.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.cli import command
from tools import bench_store

NON_MODEL = ("decode", "crop", "tile", "merge", "postprocess", "encode")


def machine() -> str:
    """The machine in words: CPU model and count, and the GPU if torch sees one."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    words = f"{cpu}, {os.cpu_count()} CPUs"
    try:
        import torch

        if torch.cuda.is_available():
            words += f", {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return words


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between ranks (numpy's); NaN without values."""
    return float(np.percentile(values, q)) if len(values) else float("nan")


# --- engine only ---------------------------------------------------------------------------


def matmul_peak(device: str, dtype: Any, seconds: float = 2.0) -> float:
    """Dense matrix-product FLOP/s of this device and dtype (square products)."""
    import torch

    n = 8192 if device == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        runs += 1
        if device == "cuda" and runs % 10:
            continue
        _sync(device)
    _sync(device)
    return 2 * n**3 * runs / (time.perf_counter() - start)


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def torch_graph(model: str) -> tuple[Any, int]:
    """The paper-size or tiny model's inference graph (random weights) and input size."""
    import torch

    from model_export.graph import InferenceGraph
    from training.config import load_config
    from training.model import build_model

    configs = Path(__file__).resolve().parents[1] / "configs"
    cfg = load_config(configs / f"{model}.yaml").model
    cfg = cfg.model_copy(update={"pretrained": None})
    torch.manual_seed(0)
    return InferenceGraph(build_model(cfg).eval()).eval(), cfg.input_size


def bench_engine(args: argparse.Namespace) -> dict[str, Any]:
    """Tiles/s per batch size and the fraction of the matrix-product peak."""
    import numpy as np

    rows: list[dict[str, Any]] = []
    out: dict[str, Any] = {"kind": "engine", "machine": machine(), "model": args.model}
    if args.model in ("paper", "tiny"):
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        graph, size = torch_graph(args.model)
        graph = graph.to(device)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            graph(torch.zeros(1, 3, size, size, device=device))
        per_tile = counter.get_total_flops()
        peak = matmul_peak(device, dtype)
        out.update(
            engine=f"torch-{device}-{str(dtype).removeprefix('torch.')}",
            flops_per_tile=per_tile,
            matmul_peak_tflops=peak / 1e12,
        )

        def run(batch: int) -> float:
            x = torch.randn(batch, 3, size, size, device=device)
            with torch.no_grad(), torch.autocast(device, dtype=dtype, enabled=device == "cuda"):
                graph(x)
                _sync(device)
                n, start = 0, time.perf_counter()
                while time.perf_counter() - start < args.seconds:
                    graph(x)
                    _sync(device)
                    n += batch
            return n / (time.perf_counter() - start)

    else:
        from common.bundle import load_bundle
        from service.engine import open_engine

        bundle = load_bundle(Path(args.model))
        engine = open_engine(bundle, args.engine, "auto", 0, args.precision)
        size = bundle.manifest.input_size
        out.update(engine=engine.name, flops_per_tile=None, matmul_peak_tflops=None)
        per_tile, peak = 0, 0.0

        def run(batch: int) -> float:
            x = np.random.default_rng(0).standard_normal((batch, 3, size, size), np.float32)
            engine.infer(x)
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < args.seconds:
                engine.infer(x)
                n += batch
            return n / (time.perf_counter() - start)

    for batch in args.batch:
        tiles = run(batch)
        row: dict[str, Any] = {"batch": batch, "tiles_per_s": round(tiles, 2)}
        if per_tile and peak:
            row["fraction_of_peak"] = round(tiles * per_tile / peak, 4)
        rows.append(row)
        print(f"batch {batch}: {tiles:.1f} tiles/s", file=sys.stderr)
    out["rows"] = rows
    return out


def engine_table(r: dict[str, Any]) -> str:
    """Markdown for an engine run."""
    head = f"engine `{r['engine']}`, model `{r['model']}`, {r['machine']}"
    if r.get("flops_per_tile"):
        head += (
            f"; {r['flops_per_tile'] / 1e9:.1f} GFLOP per tile, matrix-product peak "
            f"{r['matmul_peak_tflops']:.2f} TFLOP/s"
        )
    lines = [head, "", "| batch | tiles/s | of the peak |", "|---|---|---|"]
    for row in r["rows"]:
        frac = row.get("fraction_of_peak")
        lines.append(
            f"| {row['batch']} | {row['tiles_per_s']:.1f} | "
            f"{'-' if frac is None else f'{100 * frac:.1f}%'} |"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    p = command("scrapscan-bench", __doc__)
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("engine", help="tiles/s of one model by batch size")
    e.add_argument(
        "--model",
        default="paper",
        help="paper or tiny (PyTorch, random weights), or a bundle folder (its engine)",
    )
    e.add_argument("--batch", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    e.add_argument("--seconds", type=float, default=5.0, help="per batch size")
    e.add_argument(
        "--engine",
        choices=("auto", "onnxruntime", "openvino", "torch", "tensorrt"),
        default="auto",
        help="bundle only: the service's engine (auto: as the service chooses)",
    )
    e.add_argument(
        "--precision",
        choices=("auto", "fp32", "fp16", "bf16"),
        default="auto",
        help="bundle only: as SCRAPSCAN_PRECISION (auto: ONNX Runtime fp32, OpenVINO bf16 "
        "where it keeps parity)",
    )
    s = sub.add_parser("e2e", help="N cameras posting 4K frames through HTTP")
    s.add_argument("--cameras", type=int, default=8, help="cameras posting at once (8)")
    s.add_argument("--seconds", type=float, default=30.0, help="how long they post (30)")
    s.add_argument(
        "--mode",
        choices=("fast", "naive"),
        default="fast",
        help="fast: the service as configured; naive: one frame at a time, full-resolution "
        "maps and overlay, the same engine",
    )
    s.add_argument("--bundle", type=Path, help="model bundle (default: models/demo)")
    s.add_argument(
        "--bed",
        choices=("auto", "full", "learned"),
        default="learned",
        help="bed crop strategy (auto: learned when the bundle has a bed model)",
    )
    s.add_argument("--width", type=int, default=3840, help="synthetic frame width (3840)")
    s.add_argument("--height", type=int, default=2160, help="synthetic frame height (2160)")
    s.add_argument(
        "--distinct-frames", type=int, default=8, help="different frames the cameras cycle"
    )
    s.add_argument(
        "--text-classes",
        type=int,
        default=0,
        metavar="N",
        help="define N classes by text (POST /v1/classes, two prompts each) before the run, "
        "so that every frame is also scored with them (0)",
    )
    s.add_argument(
        "--engine-tiles-per-s",
        type=float,
        help="the engine's tiles/s at the service's batch size (from `scrapscan-bench "
        "engine`): the table then says what fraction of the engine-bound frame rate the "
        "service reached",
    )
    bench_store.add_parser(sub)
    for q in sub.choices.values():
        q.add_argument("--json", type=Path, help="also write the figures here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run one benchmark, print its table (and write JSON)."""
    args = build_parser().parse_args(argv)
    if args.command == "engine":
        result = bench_engine(args)
        table = engine_table(result)
    elif args.command == "store":
        if args.frames < 1 or args.repeat < 1:
            print("scrapscan-bench: --frames and --repeat must be positive", file=sys.stderr)
            return 2
        if args.store == "redis" and not args.redis_url:
            print("scrapscan-bench: --store redis needs --redis-url", file=sys.stderr)
            return 2
        if args.s3_url and args.store != "redis":
            print("scrapscan-bench: --s3-url goes with --store redis", file=sys.stderr)
            return 2
        result = bench_store.bench_store(args)
        table = bench_store.store_table(result)
    else:
        if args.cameras < 1 or args.seconds <= 0:
            print("scrapscan-bench: --cameras and --seconds must be positive", file=sys.stderr)
            return 2
        from tools.bench_e2e import bench_e2e, e2e_table

        result = bench_e2e(args)
        if args.engine_tiles_per_s and result["tiles_per_frame"]:
            bound = args.engine_tiles_per_s / result["tiles_per_frame"]
            result["engine_bound_frames_per_s"] = round(bound, 3)
        table = e2e_table(result)
    print(table)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
