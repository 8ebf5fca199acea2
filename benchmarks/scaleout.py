"""Throughput of the scaled-out shape: a Redis, one API process, K scrapscan-worker processes.

python benchmarks/scaleout.py [--workers 1 2] [--frames 24] [--width 3840 --height 2160]

Starts its own redis-server (deploy/redis.conf) in a temporary folder, posts synthetic
crane frames from 4 threads as fast as the API takes them, and prints for each worker
count: frames per second from the first post to the last result, and the median and 95th
percentile of a frame's time from acceptance to its end (queue wait included).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import httpx
import redis

from service.local import free_port, wait_ready
from tools.bench import machine
from training.synth import render_frame

ROOT = Path(__file__).resolve().parents[1]


def run(workers: int, frames: list[bytes], n: int, threads: int, folder: Path) -> dict[str, float]:
    """One measurement with `workers` worker processes on a fresh Redis."""
    port = free_port()
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit("redis-server is needed (apt-get install redis-server)")
    rdir = folder / f"redis-{workers}"
    rdir.mkdir()
    procs = [
        subprocess.Popen(
            [server, str(ROOT / "deploy" / "redis.conf"), "--port", str(port), "--dir", str(rdir)],
            stdout=subprocess.DEVNULL,
        )
    ]
    env = {
        **os.environ,
        "SCRAPSCAN_STORE": "redis",
        "SCRAPSCAN_REDIS_URL": f"redis://127.0.0.1:{port}/0",
        "SCRAPSCAN_QUEUE__MAX_BACKLOG": str(n + 1),
        "SCRAPSCAN_DEFAULT_BED": '{"bed": "learned"}',
    }
    log = (folder / f"logs-{workers}.txt").open("ab")

    def start(args: list[str]) -> str:
        p = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", *args, "--port", str(p), "--log-level", "warning"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        procs.append(proc)
        wait_ready(f"http://127.0.0.1:{p}", lambda: proc.poll() is None)
        return f"http://127.0.0.1:{p}"

    try:
        time.sleep(0.5)
        api = start(["service", "--data-dir", str(folder / "data")])
        for k in range(workers):
            start(["service.worker", "--name", f"bench-{k}"])

        def post(i: int) -> None:
            r = httpx.post(
                f"{api}/v1/frames",
                data={"camera_id": "bench", "truck_id": "TRK-BENCH"},
                files={"image": ("f.jpg", frames[i % len(frames)], "image/jpeg")},
                timeout=60,
            )
            r.raise_for_status()

        t0 = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(post, range(n)))
        r = redis.Redis(port=port)
        while r.scard("scrapscan:open") > 0:
            time.sleep(0.05)
        seconds = time.perf_counter() - t0
        report = httpx.get(f"{api}/v1/results", params={"limit": 1000}).json()["items"]
        received = [
            float(r.hget(f"scrapscan:frame:{i['frame_id']}", "received_at")) for i in report
        ]
        latency = sorted(i["completed_at"] - t for i, t in zip(report, received, strict=True))
        return {
            "frames": len(report),
            "fps": n / seconds,
            "p50": statistics.median(latency),
            "p95": latency[int(0.95 * (len(latency) - 1))],
        }
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=60)


def main() -> int:
    """Measure each worker count; print one line each."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--width", type=int, default=3840)
    p.add_argument("--height", type=int, default=2160)
    p.add_argument("--threads", type=int, default=4)
    args = p.parse_args()
    frames = []
    for i in range(4):
        ok, data = cv2.imencode(
            ".jpg",
            render_frame(300, i, args.width, args.height).image,
            [cv2.IMWRITE_JPEG_QUALITY, 90],
        )
        assert ok
        frames.append(data.tobytes())
    print(
        f"machine: {machine()}; {args.frames} frames of {args.width}x{args.height}, demo "
        "bundle, learned bed, ONNX Runtime CPU"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for k in args.workers:
            res = run(k, frames, args.frames, args.threads, Path(tmp))
            print(
                f"workers {k}: {res['frames']:.0f} frames ended, {res['fps']:.2f} frames/s, "
                f"accept-to-end p50 {res['p50']:.1f} s, p95 {res['p95']:.1f} s"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
