"""Prometheus metrics of one process (the API, the embedded worker, a scrapscan-worker).

Each process has its own registry, served at its /metrics; counters count each frame
once per process however often it is retried.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """The service's metrics on a registry of their own."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.frames = Counter(
            "scrapscan_frames",
            "Frames by outcome: accepted (202), throttled (429), done, failed",
            ["outcome"],
            registry=r,
        )
        self.stage_seconds = Histogram(
            "scrapscan_stage_duration_seconds",
            "Time per frame stage (decode, crop, tile, infer, merge, postprocess, encode)",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.claimed = Counter(
            "scrapscan_worker_claimed_frames",
            "Frames taken over from a worker that stopped answering",
            registry=r,
        )
        self.retries = Counter(
            "scrapscan_worker_retries",
            "Frame attempts that failed and were queued again",
            registry=r,
        )
        self.dead_letters = Counter(
            "scrapscan_worker_dead_letters",
            "Frames given up on after the last attempt (on the dead-letter stream)",
            registry=r,
        )

    def exposition(self) -> bytes:
        """The text format for /metrics."""
        return bytes(generate_latest(self.registry))
