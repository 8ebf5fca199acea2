"""scrapscan-bench e2e: the service started here, N simulated cameras posting 4K frames.

How it runs and what it prints: scrapscan-bench --help (tools/bench.py).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tools.bench import NON_MODEL, machine, percentile


class GpuBusy:
    """Samples NVML's GPU utilisation in a thread; None where NVML cannot be read."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle: Any = pynvml.nvmlDeviceGetHandleByIndex(0)
            self._nvml: Any = pynvml
        except Exception:
            self._nvml = None

    def __enter__(self) -> GpuBusy:
        if self._nvml is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            rates = self._nvml.nvmlDeviceGetUtilizationRates(self._handle)
            self.samples.append(rates.gpu / 100)

    @property
    def fraction(self) -> float | None:
        """Mean busy fraction over the run."""
        return statistics.fmean(self.samples) if self.samples else None


TEXT_CLASSES = ("gas_cylinder", "battery", "sealed_tank", "fire_extinguisher")
PROMPTS = ("a photo of a {}.", "a {} in a pile of steel scrap.")
"""What `--text-classes N` defines: N of these, each with both prompts."""


def camera_frames(count: int, width: int, height: int) -> list[bytes]:
    """Synthetic crane frames as JPEG (seed 300: held out from the demo bundle's training)."""
    import cv2

    from training.synth import render_frame

    out = []
    for i in range(count):
        ok, data = cv2.imencode(
            ".jpg", render_frame(300, i, width, height).image, [cv2.IMWRITE_JPEG_QUALITY, 90]
        )
        if not ok:
            raise RuntimeError("could not encode a synthetic frame")
        out.append(data.tobytes())
    return out


def bench_e2e(args: argparse.Namespace) -> dict[str, Any]:
    """N cameras posting for T seconds against the service started here."""
    import httpx

    from service.local import running_service
    from service.settings import BatchSettings, CameraBed, Settings

    frames = camera_frames(args.distinct_frames, args.width, args.height)
    with tempfile.TemporaryDirectory() as tmp:
        # the service's own settings (SCRAPSCAN_* and their defaults: WORKERS frames in
        # flight, the batcher's limits) but for the data folder and the bed
        base: dict[str, Any] = {
            "data_dir": Path(tmp) / "data",
            "default_bed": CameraBed(bed=args.bed),
        }
        if args.bundle:
            base["bundle"] = args.bundle
        if args.mode == "naive":  # one frame at a time, full-resolution maps and overlay
            base.update(
                workers=1,
                map_stride=1,
                overlay_max_side=16384,
                batch=BatchSettings(max_batch=Settings().batch.max_batch, max_wait_ms=0),
            )
        settings = Settings(**base)
        latencies: list[float] = []
        non_model: list[float] = []
        tiles: list[int] = []
        stages: dict[str, list[float]] = {}
        lock = threading.Lock()
        stop_at = 0.0

        def camera(k: int, url: str) -> None:
            i = k
            with httpx.Client(timeout=600) as client:
                while time.perf_counter() < stop_at:
                    t0 = time.perf_counter()
                    r = client.post(
                        f"{url}/v1/frames",
                        params={"wait": "true"},
                        data={"camera_id": f"bench-{k}"},
                        files={"image": ("f.jpg", frames[i % len(frames)], "image/jpeg")},
                    )
                    seconds = time.perf_counter() - t0
                    i += args.cameras
                    if r.status_code != 200:
                        raise RuntimeError(f"HTTP {r.status_code}: {r.text[:300]}")
                    result = r.json()["result"]
                    timings = result["timings_ms"]
                    with lock:
                        latencies.append(seconds)
                        tiles.append(result["tiles"])
                        non_model.append(sum(timings[s] for s in NON_MODEL) / 1000)
                        for stage, ms in timings.items():
                            stages.setdefault(stage, []).append(ms)

        with running_service(settings, freeze_heap=True) as url:
            for k in range(args.text_classes):
                name = TEXT_CLASSES[k % len(TEXT_CLASSES)]
                body = {
                    "name": f"{name}_{k}",
                    "prompts": [p.format(name.replace("_", " ")) for p in PROMPTS],
                }
                r = httpx.post(f"{url}/v1/classes", json=body, timeout=60)
                if r.status_code != 201:
                    raise RuntimeError(f"POST /v1/classes: HTTP {r.status_code}: {r.text[:300]}")
            # one frame first: warm-up, not counted
            httpx.post(
                f"{url}/v1/frames",
                params={"wait": "true"},
                data={"camera_id": "warm-up"},
                files={"image": ("f.jpg", frames[0], "image/jpeg")},
                timeout=600,
            )
            config = httpx.get(f"{url}/v1/config").json()
            info = next(
                line
                for line in httpx.get(f"{url}/metrics").text.splitlines()
                if line.startswith("scrapscan_model_info{")
            )
            engine = info.split('engine="', 1)[1].split('"', 1)[0]
            with GpuBusy() as gpu:
                start = time.perf_counter()
                stop_at = start + args.seconds
                threads = [
                    threading.Thread(target=camera, args=(k, url)) for k in range(args.cameras)
                ]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                elapsed = time.perf_counter() - start
    return {
        "kind": "e2e",
        "machine": machine(),
        "mode": args.mode,
        "cameras": args.cameras,
        "seconds": round(elapsed, 2),
        "frame_size": f"{args.width}x{args.height}",
        "bundle": str(config["bundle"]),
        "engine": engine,
        "frames": len(latencies),
        "frames_per_s": round(len(latencies) / elapsed, 3),
        "latency_s": {q: round(percentile(latencies, q), 4) for q in (50, 95, 99)},
        "tiles_per_frame": round(statistics.fmean(tiles), 2) if tiles else None,
        "engine_bound_frames_per_s": None,
        "non_model_ms_p50": round(1000 * percentile(non_model, 50), 1),
        "stage_ms_p50": {k: round(percentile(v, 50), 1) for k, v in stages.items()},
        "gpu_busy": None if gpu.fraction is None else round(gpu.fraction, 3),
        "text_classes": args.text_classes,
    }


def e2e_table(r: dict[str, Any]) -> str:
    """Markdown for an end-to-end run."""
    gpu = "n/a (no NVML)" if r["gpu_busy"] is None else f"{100 * r['gpu_busy']:.0f}%"
    lat = r["latency_s"]
    bound = r.get("engine_bound_frames_per_s")
    against = (
        ""
        if not bound
        else f"; the engine alone allows {bound:.2f} frames/s of {r['tiles_per_frame']} "
        f"tiles: {100 * r['frames_per_s'] / bound:.0f}% of it"
    )
    return "\n".join(
        [
            f"{r['mode']} mode, {r['cameras']} cameras for {r['seconds']} s, "
            f"{r['frame_size']} frames, engine {r['engine']}, "
            f"{r.get('text_classes', 0)} classes defined by text, {r['machine']}",
            "",
            "| frames | frames/s | p50 s | p95 s | p99 s | outside the model, p50 ms | GPU busy |",
            "|---|---|---|---|---|---|---|",
            f"| {r['frames']} | {r['frames_per_s']:.2f} | {lat[50]:.3f} | {lat[95]:.3f} | "
            f"{lat[99]:.3f} | {r['non_model_ms_p50']:.1f} | {gpu} |",
            "",
            "stages, p50 ms: "
            + ", ".join(f"{k} {v:.1f}" for k, v in r["stage_ms_p50"].items())
            + f"; {r['tiles_per_frame']} tiles per frame{against}",
        ]
    )
