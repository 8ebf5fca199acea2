"""The frame runner: take a frame from the queue, run the pipeline, store how it ended.

One runner in the embedded service (an in-process queue) and one in each scrapscan-worker
(the Redis stream); they differ only in their queue (service/queue.py). Per delivery:

- a frame that has ended already (a second delivery after a takeover) is let go;
- a frame that cannot be decoded fails at once (trying again cannot help);
- any other failure is tried again, up to queue.max_attempts; then the frame fails with
  the reason and the queue records it as given up on (dead letter). A frame taken over
  with its attempts used up (it kept killing its worker) is given up on at once;
- while the store or Redis is away the delivery is left where it is, for a later attempt.

Up to `workers` frames run at once, their tiles sharing engine batches. Which bundle a
frame runs on is `Models`' to say (service/serving.py: swaps, shadow, live settings). A
candidate model in shadow (service/shadow.py) scores the frames it picks after their
result is stored, on an engine of its own, before the delivery ends. The runner renews
the deliveries it holds every third of queue.claim_idle_s, except those held longer than
queue.max_frame_s (a hung frame: another worker may take it over, and the worker's
/healthz fails).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from typing import Any

import redis

from service.decode import decode
from service.errors import BadImage, Conflict, ServiceError
from service.metrics import LiveCollector, Metrics, gpu_memory
from service.pipeline import Pipeline, Processed
from service.queue import Delivery, FrameQueue
from service.region import Description, Region
from service.result import ModelRef
from service.serving import Models
from service.settings import Settings
from service.shadow import CHANGES, changes, compare, picked
from service.store import FrameRecord, Store

log = logging.getLogger("scrapscan.runner")


class FrameFailed(Exception):
    """An attempt at a frame failed for a reason other than the frame's bytes (the reason)."""


class FrameRunner:
    """Runs the frames of one queue through one pipeline."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        queue: FrameQueue,
        metrics: Metrics,
        on_end: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.queue = queue
        self.metrics = metrics
        self.on_end = on_end
        """Called with a frame's id after each delivery of it (to wake who waits for it)."""
        self.models = Models(settings, store, queue, metrics)
        """The bundle served (and any candidate in shadow)."""
        self.ready = False
        """True once the engine is loaded and warmed."""
        self.failure: str | None = None
        """Why loading the engine failed, if it did."""
        self.held: dict[str, Delivery] = {}
        self.started: dict[str, float] = {}
        """Delivery handle -> when it was taken (time.monotonic())."""
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._loops: list[asyncio.Task[None]] = []
        self._slot = asyncio.Event()

    async def start(self) -> None:
        """Load the bundle and the engine (warmed), then take frames in the background."""
        try:
            await self.models.load()
        except Exception as err:
            self.failure = f"loading the engine failed: {type(err).__name__}: {err}"
            raise
        self.metrics.watch(LiveCollector("gpu_memory", gpu_memory))
        self.ready = True
        self._loops = [
            asyncio.create_task(self._take(), name="take"),
            asyncio.create_task(self._renew(), name="renew"),
            asyncio.create_task(self._answer_describe(), name="describe"),
            *self.models.follow(),
        ]

    async def stop(self, grace_s: float = 30) -> None:
        """Stop taking frames, let those in hand finish (up to grace_s), stop the engine.

        Frames still unfinished then stay queued: in the store (embedded, queued again at
        the next start) or pending on the stream (taken over by another worker).
        """
        self.ready = False
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        if self._tasks:
            _, late = await asyncio.wait(list(self._tasks.values()), timeout=grace_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        await self.models.stop()

    async def describe(self, frame_id: str, region: Region) -> Description:
        """What the region encoder of the bundle served says of a region of a stored frame.

        Conflict when the bundle has no region encoder or the upload is no longer kept.
        """
        pipeline = self.models.pipeline
        if pipeline is None or pipeline.region is None:
            raise Conflict(
                "no_region_encoder",
                "the bundle served has no region encoder (scrapscan-export --region)",
            )
        try:
            data = await asyncio.to_thread(self.store.image, frame_id)
        except (KeyError, FileNotFoundError):
            raise Conflict(
                "upload_gone", f"frame {frame_id}: its upload is no longer kept"
            ) from None
        frame = await asyncio.to_thread(decode, data, self.settings.max_pixels)
        return await asyncio.to_thread(pipeline.region.rank, frame, region)

    async def _answer_describe(self) -> None:
        """Answer the describe requests the API puts for the workers (scaled out)."""
        while True:
            try:
                request = await self.queue.asked(1.0)
            except redis.RedisError as err:
                log.warning("redis: describe requests not read: %s", err)
                await asyncio.sleep(1.0)
                continue
            if request is None:
                continue
            region = Region(tuple(request["bbox"]), [tuple(p) for p in request["polygon"]])
            try:
                said = await self.describe(str(request["frame_id"]), region)
                body: dict[str, Any] = {"description": said.model_dump(mode="json")}
            except ServiceError as err:
                body = {
                    "error": {"kind": type(err).__name__, "code": err.code, "message": err.message}
                }
            except Exception as err:
                log.exception("describe request failed")
                body = {
                    "error": {"kind": "Unavailable", "code": "internal_error", "message": str(err)}
                }
            try:
                await self.queue.answer(request, body)
            except redis.RedisError as err:
                log.warning("redis: describe reply not sent: %s", err)

    def stuck(self) -> list[str]:
        """Deliveries held longer than queue.max_frame_s."""
        limit = time.monotonic() - self.settings.queue.max_frame_s
        return [h for h, t in self.started.items() if t < limit]

    async def _take(self) -> None:
        while True:
            free = self.settings.workers - len(self.held)
            if free <= 0:
                self._slot.clear()
                await self._slot.wait()
                continue
            try:
                deliveries = await self.queue.take(free)
            except redis.RedisError as err:
                log.warning("redis: %s; retrying in 1 s", err)
                await asyncio.sleep(1)
                continue
            if any(d.taken_over for d in deliveries):
                self.metrics.claimed.inc(len(deliveries))
                log.info("took over %d frames of a stopped worker", len(deliveries))
            for d in deliveries:
                if d.handle in self.held:  # ours already (a renewal came late)
                    continue
                self.held[d.handle] = d
                self.started[d.handle] = time.monotonic()
                self._tasks[d.handle] = asyncio.create_task(self._deliver(d), name=d.frame_id)

    async def _renew(self) -> None:
        """Keep the frames in hand from looking stalled, except the hung ones."""
        period = self.settings.queue.claim_idle_s / 3
        while True:
            await asyncio.sleep(period)
            stuck = set(self.stuck())
            try:
                await self.queue.renew([d for h, d in self.held.items() if h not in stuck])
            except redis.RedisError as err:
                log.warning("redis: could not renew frames in hand: %s", err)

    async def _deliver(self, d: Delivery) -> None:
        """One delivery: run the frame and end the delivery as its outcome says."""
        limit = self.settings.queue.max_attempts
        try:
            record = await asyncio.to_thread(self.store.get, d.frame_id)
            if record is None or record.status in ("done", "failed"):
                await self.queue.done(d)
            elif d.attempt > limit:  # taken over with every attempt used up
                why = await self.queue.last_error(d)
                why = why or "the worker processing it stopped each time"
                await self._give_up(d, record, f"gave up after {limit} attempts: {why}", limit)
            else:
                await self._attempt(d, record, limit)
        except redis.RedisError as err:
            # the delivery stays where it is: taken over (perhaps by this worker) later
            log.warning("frame %s: redis: %s; left for a later attempt", d.frame_id, err)
        except Exception:
            log.exception("frame %s: the store failed", d.frame_id)
        finally:
            self.held.pop(d.handle, None)
            self.started.pop(d.handle, None)
            self._tasks.pop(d.handle, None)
            self._slot.set()
            if self.on_end is not None:
                await self.on_end(d.frame_id)

    async def _attempt(self, d: Delivery, record: FrameRecord, limit: int) -> None:
        try:
            await self.run(record)
        except FrameFailed as err:
            if d.attempt >= limit:
                await self._give_up(d, record, f"gave up after {limit} attempts: {err}", limit)
            else:
                await asyncio.to_thread(self.store.requeue, d.frame_id)
                await self.queue.retry(d, str(err))
                self.metrics.retries.inc()
            return
        await self.queue.done(d)

    async def run(self, record: FrameRecord) -> None:
        """Process one stored frame and store its end (done, or failed for a bad image).

        Store errors propagate; pipeline errors other than a bad image raise FrameFailed.
        """
        with self.models.using() as pipeline:
            await self._run(record, pipeline)

    async def _run(self, record: FrameRecord, pipeline: Pipeline) -> None:
        store, frame_id = self.store, record.frame_id
        await asyncio.to_thread(store.set_processing, frame_id)
        self.metrics.stage_seconds.labels("queue_wait").observe(
            max(0.0, time.time() - record.received_at)
        )
        try:
            data = await asyncio.to_thread(store.image, frame_id)
        except KeyError:
            raise FrameFailed("internal_error: the stored upload is missing") from None
        try:
            processed = await pipeline.process(data, record.camera_id)
        except BadImage as err:  # the bytes passed the header check but not decoding
            if await asyncio.to_thread(store.fail, frame_id, f"{err.code}: {err.message}"):
                self._count_failed(record.camera_id)
            return
        except Exception as err:
            log.exception("frame %s: attempt failed", frame_id)
            raise FrameFailed(f"internal_error: {type(err).__name__}: {err}") from err
        ended = await asyncio.to_thread(store.complete, frame_id, processed.result, processed.files)
        if not ended:  # another worker finished it first; its result stands
            return
        for stage, ms in processed.result.timings_ms.items():
            self.metrics.stage_seconds.labels(stage).observe(ms / 1000)
        result, camera, m = processed.result, record.camera_id, self.metrics
        for inst in result.instances:
            m.detections.labels(inst.class_name).inc()
        for name, score in result.scores.items():  # drift signals
            m.frame_score.labels(name, camera).observe(score)
        m.verdicts.labels(result.verdict, camera).inc()
        m.bed.labels(result.bed.strategy, camera).inc()
        m.frames.labels("done", camera).inc()
        shadow = self.models.shadow
        if shadow is not None and picked(frame_id, self.models.shadow_share):
            await self._score_shadow(shadow, record, data, processed)

    async def _score_shadow(
        self, shadow: Pipeline, record: FrameRecord, data: bytes, served: Processed
    ) -> None:
        """The candidate's answer to a served frame, compared and kept (never served)."""
        m = shadow.bundle.manifest.model
        candidate = ModelRef(name=m.name, version=m.version)
        try:
            rules = shadow.rules
            a = await shadow.analyse(data, record.camera_id, rules)
            frame = compare(
                record.frame_id,
                record.camera_id,
                time.time(),
                served.result,
                candidate,
                shadow.verdict(a.findings, rules),
                a.findings,
            )
            await asyncio.to_thread(self.store.add_shadow, frame)
        except Exception as err:
            self.metrics.shadow_failures.inc()
            log.warning(
                "frame %s: shadow scoring failed: %s: %s", record.frame_id, type(err).__name__, err
            )
            return
        label = f"{m.name}/{m.version}"
        agree = "yes" if frame.served_verdict == frame.candidate_verdict else "no"
        self.metrics.shadow_frames.labels(label, agree).inc()
        counted = dict.fromkeys(CHANGES, 0)
        for change, _ in changes(frame):
            counted[change] += 1
        for change, n in counted.items():
            self.metrics.shadow_instances.labels(label, change).inc(n)

    async def _give_up(self, d: Delivery, record: FrameRecord, reason: str, attempts: int) -> None:
        log.error("frame %s: %s", d.frame_id, reason)
        if await asyncio.to_thread(self.store.fail, d.frame_id, reason):
            await self.queue.dead(replace(d, attempt=attempts), reason)
            self.metrics.dead_letters.inc()
            self._count_failed(record.camera_id)
        else:  # it ended meanwhile (another worker): nothing to give up on
            await self.queue.done(d)

    def _count_failed(self, camera_id: str) -> None:
        self.metrics.frames.labels("failed", camera_id).inc()


@contextlib.contextmanager
def settled_heap(on: bool = True) -> Iterator[None]:
    """What the process made until now (libraries, app, engine) out of the collector's way.

    A full collection walks every object the process holds, with every thread stopped:
    once the service has imported its libraries that is over 100,000 objects, 30 to 70 ms
    on 2 CPU cores, and a feed page or a POST that meets one waits as long (BENCHMARKS.md,
    "The purge beside the service"). Frozen after one last collection, they are not walked
    again until the block ends; what the process makes meanwhile is collected as before.
    """
    if on:
        gc.collect()
        gc.freeze()
    try:
        yield
    finally:
        if on:
            gc.unfreeze()
