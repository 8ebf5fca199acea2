"""Prometheus metrics of one process (the API, the embedded worker, a scrapscan-worker).

Names follow the Prometheus conventions (`scrapscan_` prefix, base units, `_total` on
counters). Each Metrics object has its own registry, served at its process's /metrics.
When PROMETHEUS_MULTIPROC_DIR is set (scrapscan-serve --processes N sets it), the values
live in files there and /metrics adds up every process's.

Queue depth and lag, and GPU memory, are read when Prometheus scrapes, not counted.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("scrapscan.metrics")

STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128)
SCORE_BUCKETS = (*(round(0.05 * i, 2) for i in range(1, 20)), 0.96, 0.98, 0.99, 1.0)
"""Frame scores: probabilities, finer near 1 where a trained model's crowd."""


class Metrics:
    """The service's metrics on a registry of their own."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._requests_and_frames()
        self._model_and_drift()
        self._retention_and_workers()
        self._live: list[Collector] = []

    def _counter(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
        return Counter(name, doc, labels, registry=self.registry)

    def _histogram(
        self, name: str, doc: str, buckets: tuple[float, ...], labels: tuple[str, ...] = ()
    ) -> Histogram:
        return Histogram(name, doc, labels, buckets=buckets, registry=self.registry)

    def _gauge(self, name: str, doc: str, labels: tuple[str, ...]) -> Gauge:
        """A gauge whose value across processes is their maximum."""
        return Gauge(name, doc, labels, registry=self.registry, multiprocess_mode="max")

    def _requests_and_frames(self) -> None:
        """HTTP requests, frames by outcome, stage times, the engine's batches."""
        self.http_requests = self._counter(
            "scrapscan_http_requests",
            "HTTP requests by route template, method and status",
            ("route", "method", "status"),
        )
        self.http_seconds = self._histogram(
            "scrapscan_http_request_duration_seconds",
            "HTTP request latency by route template and method",
            HTTP_BUCKETS,
            ("route", "method"),
        )
        self.frames = self._counter(
            "scrapscan_frames",
            "Frames by outcome (accepted: 202 given; done; failed) and camera",
            ("outcome", "camera"),
        )
        self.throttled = self._counter(
            "scrapscan_frames_throttled", "Uploads refused with 429 because the queue was full"
        )
        self.stage_seconds = self._histogram(
            "scrapscan_stage_duration_seconds",
            "Time per frame stage: queue_wait, decode, crop, tile, infer, merge, postprocess, "
            "encode",
            STAGE_BUCKETS,
            ("stage",),
        )
        self.batch_size = self._histogram(
            "scrapscan_engine_batch_size", "Tiles per engine call", BATCH_SIZES
        )
        self.batch_seconds = self._histogram(
            "scrapscan_engine_batch_duration_seconds", "Time of one engine call", STAGE_BUCKETS
        )

    def _model_and_drift(self) -> None:
        """What the model finds, the signals of its drift, operators' feedback."""
        self.detections = self._counter(
            "scrapscan_detections", "Instances found, by class", ("class",)
        )
        self.frame_score = self._histogram(
            "scrapscan_frame_score",
            "Each done frame's highest probability inside the bed, for the anomaly map and each "
            "class, by camera (drift: compare with scrapscan_model_reference_frame_score)",
            SCORE_BUCKETS,
            ("class", "camera"),
        )
        self.verdicts = self._counter(
            "scrapscan_frame_verdicts",
            "Done frames by verdict (clean, inspect, reject) and camera",
            ("verdict", "camera"),
        )
        self.bed = self._counter(
            "scrapscan_bed",
            "Frames by how their bed was found (polygon, full, learned; learned-none-full: the "
            "bed model found none and the whole frame was used) and camera",
            ("strategy", "camera"),
        )
        self.reference = self._gauge(
            "scrapscan_model_reference_frame_score",
            "The served model's frame scores on its validation frames (bundle calibration), by "
            "class and percentile (10, 50, 90)",
            ("class", "percentile"),
        )
        self.feedback = self._counter(
            "scrapscan_feedback",
            "Operators' judgements: label (confirmed, false_alarm, other_class, missed) and the "
            "class it is about (the plant's precision: confirmed / (confirmed + false_alarm))",
            ("label", "class"),
        )

    def _retention_and_workers(self) -> None:
        """The retention, trucks' decisions, the model served, workers' takeovers."""
        self.purged = self._counter(
            "scrapscan_retention_purged_frames",
            "Frames the embedded store's retention changed (files removed, or forgotten)",
        )
        self.purge_seconds = self._histogram(
            "scrapscan_retention_purge_duration_seconds",
            "Time of one retention pass (all its batches): the embedded store's, or over the "
            "objects in the bucket",
            STAGE_BUCKETS,
        )
        self.purged_objects = self._counter(
            "scrapscan_retention_purged_objects",
            "Uploads, masks and overlays deleted from the bucket (store redis with objects)",
        )
        self.truck_decisions = self._counter(
            "scrapscan_truck_decisions",
            "Decisions recorded for trucks (accepted, rejected, manual_inspection)",
            ("decision",),
        )
        self.model = self._gauge(
            "scrapscan_model_info",
            "The model being served (always 1)",
            ("name", "version", "engine"),
        )
        self.model_swap_failures = self._counter(
            "scrapscan_model_swap_failures",
            "Repository versions this process could not load or warm (the old one served on)",
        )
        self.shadow_frames = self._counter(
            "scrapscan_shadow_frames",
            "Frames a candidate model in shadow scored beside the served one, by candidate "
            "(name/version) and whether the two verdicts agree (yes, no)",
            ("candidate", "agree"),
        )
        self.shadow_instances = self._counter(
            "scrapscan_shadow_instances",
            "Instances compared in shadow, by candidate and change: matched (both found it, same "
            "class), reclassified (another class), added (the candidate only), dropped (the "
            "served model only)",
            ("candidate", "change"),
        )
        self.shadow_failures = self._counter(
            "scrapscan_shadow_failures",
            "Frames a candidate in shadow could not score (the served answer is not affected)",
        )
        self.claimed = self._counter(
            "scrapscan_worker_claimed_frames",
            "Frames taken over from a worker that stopped answering",
        )
        self.retries = self._counter(
            "scrapscan_worker_retries", "Frame attempts that failed and were queued again"
        )
        self.dead_letters = self._counter(
            "scrapscan_worker_dead_letters",
            "Frames given up on after the last attempt (on the dead-letter stream)",
        )

    def watch(self, collector: Collector) -> None:
        """Add a collector read at scrape time (queue depth, GPU memory)."""
        self.registry.register(collector)
        self._live.append(collector)

    def exposition(self) -> bytes:
        """The text format for /metrics (every process's values in multi-process mode)."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            merged = CollectorRegistry()
            MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
            for collector in self._live:
                merged.register(collector)
            return bytes(generate_latest(merged))
        return bytes(generate_latest(self.registry))


class LiveCollector(Collector):
    """Gauges computed when scraped; a failure leaves them out of that scrape."""

    def __init__(self, name: str, read: Callable[[], list[Metric]]) -> None:
        self.name = name
        self.read = read

    def collect(self) -> Iterator[Metric]:
        """Prometheus calls this at each scrape."""
        try:
            yield from self.read()
        except Exception as err:  # Redis away, no GPU driver: the scrape still works
            log.debug("%s not collected: %s", self.name, err)

    def describe(self) -> list[Metric]:
        """Nothing up front: the families depend on what can be read."""
        return []


def queue_gauges(
    backlog: Callable[[], int], group: Callable[[], dict[str, Any]] | None
) -> list[Metric]:
    """Queue depth (accepted, not ended) and, with Redis, the consumer group's lag and pending."""
    out: list[Metric] = []
    g = GaugeMetricFamily("scrapscan_queue_backlog_frames", "Frames accepted and not yet ended")
    g.add_metric([], backlog())
    out.append(g)
    if group is not None:
        info = group()
        lag = GaugeMetricFamily(
            "scrapscan_queue_lag_frames", "Frames on the stream not yet read by any worker"
        )
        lag.add_metric([], float(info.get("lag") or 0))
        pending = GaugeMetricFamily(
            "scrapscan_queue_pending_frames", "Frames read by a worker and not yet acknowledged"
        )
        pending.add_metric([], float(info.get("pending") or 0))
        out += [lag, pending]
    return out


def gpu_memory() -> list[Metric]:
    """Memory in use per GPU, from NVML (nvidia-ml-py, in the gpu extra); none without it."""
    import pynvml

    pynvml.nvmlInit()
    g = GaugeMetricFamily(
        "scrapscan_gpu_memory_used_bytes", "GPU memory in use (all processes)", labels=["gpu"]
    )
    try:
        for i in range(pynvml.nvmlDeviceGetCount()):
            info = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i))
            g.add_metric([str(i)], float(info.used))
    finally:
        pynvml.nvmlShutdown()
    return [g]


class HTTPMetrics:
    """ASGI middleware: count requests and time them by route template, method and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def seen(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, seen)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            self.metrics.http_requests.labels(template, method, str(status)).inc()
            self.metrics.http_seconds.labels(template, method).observe(time.perf_counter() - start)
