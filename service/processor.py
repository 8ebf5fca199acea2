"""Runs a stored frame through the pipeline and stores its end.

The part of a worker that the embedded service (app.py) and scrapscan-worker (worker.py)
share.

Bundle, engine (warmed with one batch), batcher, optional bed model and pipeline are
loaded by start(). run() takes a frame id: a frame that cannot be decoded fails at once
(retrying cannot help); an unexpected error raises FrameFailed and the caller decides
whether to fail the frame or to try it again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Literal

import numpy as np

from common.bundle import BundleError, load_bundle
from service.batcher import Batcher, BatchRecord
from service.engine import open_engine
from service.errors import BadImage
from service.metrics import LiveCollector, Metrics, gpu_memory
from service.pipeline import Pipeline
from service.settings import Settings
from service.store import Store

log = logging.getLogger("scrapscan.processor")


async def open_pipeline(
    s: Settings, on_batch: Callable[[BatchRecord], None] | None = None
) -> Pipeline:
    """The pipeline the settings describe: bundle, engine (warmed), batcher (started), bed model.

    The bundle's bed model is loaded when a camera's bed is "learned", or "auto" and the
    bundle has one. The caller stops `pipeline.batcher` when done.
    """
    bundle = await asyncio.to_thread(load_bundle, s.bundle, True, True)
    engine = await asyncio.to_thread(
        open_engine, bundle, s.engine, s.device, s.threads, s.precision
    )
    m = bundle.manifest
    size = m.input_size
    out = await asyncio.to_thread(engine.infer, np.zeros((1, 3, size, size), np.float32))
    wanted = (1, len(m.classes), m.grid, m.grid)
    if out.class_probs.shape != wanted or out.anomaly.shape != (1, m.grid, m.grid):
        raise BundleError(
            f"{bundle.root}: its {engine.name} engine answers class_probs "
            f"{out.class_probs.shape} and anomaly {out.anomaly.shape} for one tile; the "
            f"manifest says {len(m.classes)} classes on a {m.grid} x {m.grid} grid"
        )
    batcher = Batcher(engine, s.batch.max_batch, s.batch.max_wait_ms / 1000, on_batch=on_batch)
    batcher.start()
    finder = None
    beds = {b.bed for b in (s.default_bed, *s.cameras.values())}
    if "learned" in beds or ("auto" in beds and bundle.manifest.bed_model is not None):
        from service.bedmodel import LearnedBed

        finder = LearnedBed(bundle)
    return Pipeline(bundle, batcher, s, finder)


class FrameFailed(Exception):
    """An attempt at a frame failed for a reason other than the frame's bytes (the reason)."""


class Processor:
    """The model and the pipeline, and what to store when a frame ends."""

    def __init__(self, settings: Settings, store: Store, metrics: Metrics) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.batcher: Batcher | None = None
        self.pipeline: Pipeline | None = None
        self.ready = False
        """True once the engine is loaded and warmed."""

    async def start(self) -> None:
        """Load the bundle and the engine, warm it with one batch, start the batcher."""
        self.pipeline = await open_pipeline(self.settings, on_batch=self._batch_done)
        self.batcher = self.pipeline.batcher
        m = self.pipeline.bundle.manifest.model
        engine = self.batcher.engine.name
        self.metrics.model.labels(m.name, m.version, engine).set(1)
        self.metrics.watch(LiveCollector("gpu_memory", gpu_memory))
        self.ready = True
        log.info("engine ready: bundle %s, engine %s", self.pipeline.bundle, engine)

    async def stop(self) -> None:
        """Stop the batcher."""
        self.ready = False
        if self.batcher is not None:
            await self.batcher.stop()

    async def run(self, frame_id: str) -> Literal["done", "failed", "skipped"]:
        """Process one stored frame and store its end.

        "skipped": unknown, or ended already (a second delivery after a takeover). Store
        errors propagate; pipeline errors other than a bad image raise FrameFailed.
        """
        assert self.pipeline is not None, "start() first"
        store = self.store
        record = await asyncio.to_thread(store.get, frame_id)
        if record is None or record.status in ("done", "failed"):
            return "skipped"
        await asyncio.to_thread(store.set_processing, frame_id)
        self.metrics.stage_seconds.labels("queue_wait").observe(
            max(0.0, time.time() - record.received_at)
        )
        try:
            data = await asyncio.to_thread(store.image, frame_id)
        except KeyError:
            raise FrameFailed("internal_error: the stored upload is missing") from None
        try:
            processed = await self.pipeline.process(data, record.camera_id)
        except BadImage as err:  # the bytes passed the header check but not decoding
            if await asyncio.to_thread(store.fail, frame_id, f"{err.code}: {err.message}"):
                self.count_failed(record.camera_id)
            return "failed"
        except Exception as err:
            log.exception("frame %s: attempt failed", frame_id)
            raise FrameFailed(f"internal_error: {type(err).__name__}: {err}") from err
        ended = await asyncio.to_thread(store.complete, frame_id, processed.result, processed.files)
        if not ended:  # another worker finished it first; its result stands
            return "skipped"
        for stage, ms in processed.result.timings_ms.items():
            self.metrics.stage_seconds.labels(stage).observe(ms / 1000)
        for inst in processed.result.instances:
            self.metrics.detections.labels(inst.class_name).inc()
        self.metrics.frames.labels("done", record.camera_id).inc()
        return "done"

    async def fail(self, frame_id: str, reason: str) -> bool:
        """Fail a frame with the reason (once); counted by camera. False if it had ended."""
        record = await asyncio.to_thread(self.store.get, frame_id)
        if not await asyncio.to_thread(self.store.fail, frame_id, reason):
            return False
        self.count_failed(record.camera_id if record else "")
        return True

    def count_failed(self, camera_id: str) -> None:
        """One more frame ended as failed."""
        self.metrics.frames.labels("failed", camera_id).inc()

    def _batch_done(self, batch: BatchRecord) -> None:
        self.metrics.batch_size.observe(batch.size)
        self.metrics.batch_seconds.observe(batch.seconds)
