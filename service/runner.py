"""The frame runner: take a frame from the queue, run the pipeline, store how it ended.

One runner in the embedded service (an in-process queue) and one in each scrapscan-worker
(the Redis stream); they differ only in their queue (service/queue.py). Per delivery:

- a frame that has ended already (a second delivery after a takeover) is let go;
- a frame that cannot be decoded fails at once (trying again cannot help);
- any other failure is tried again, up to queue.max_attempts; then the frame fails with
  the reason and the queue records it as given up on (dead letter). A frame taken over
  with its attempts used up (it kept killing its worker) is given up on at once;
- while the store or Redis is away the delivery is left where it is, for a later attempt.

Up to `workers` frames run at once, their tiles sharing engine batches. A candidate model
in shadow (service/shadow.py) scores the frames it picks after their result is stored,
on an engine of its own, before the delivery ends. The runner
renews the deliveries it holds every third of queue.claim_idle_s, except those held
longer than queue.max_frame_s (a hung frame: another worker may take it over, and the
worker's /healthz fails).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import redis

from common.bundle import BundleError, load_bundle
from common.repository import Repository, RepositoryError, Shadow
from service.batcher import Batcher, BatchRecord
from service.decode import decode
from service.engine import open_engine
from service.errors import BadImage, Conflict, ServiceError
from service.live import SETTINGS_POLL_S, SettingsChange
from service.metrics import LiveCollector, Metrics, gpu_memory
from service.pipeline import Pipeline, Processed
from service.queue import Delivery, FrameQueue
from service.region import Description, Region
from service.result import ModelRef
from service.settings import Settings
from service.shadow import CHANGES, changes, compare, picked
from service.store import FrameRecord, Store

log = logging.getLogger("scrapscan.runner")


def _same(pipeline: Pipeline, path: Path) -> bool:
    return pipeline.bundle.root.resolve() == path.resolve()


def bundle_path(s: Settings) -> Path:
    """The bundle to serve: the repository's active version, else settings.bundle.

    RepositoryError when the repository cannot say (no folder, no active version).
    """
    if s.repository is None:
        return s.bundle
    repo = Repository(s.repository)
    repo.check()
    active = repo.active()
    if active is None:
        raise RepositoryError(
            f"{s.repository}: no active version; activate one (POST /v1/admin/bundles/active) or "
            "export with scrapscan-export --repository, which activates the first"
        )
    return repo.path(active.name, active.version)


async def open_pipeline(
    s: Settings, on_batch: Callable[[BatchRecord], None] | None = None, path: Path | None = None
) -> Pipeline:
    """The pipeline of a bundle: bundle, engine (warmed), batcher (started), bed model.

    The bundle at `path`, by default `bundle_path(s)`. Its bed model is loaded when a
    camera's bed is "learned", or "auto" and the bundle has one. The caller stops
    `pipeline.batcher` when done.
    """
    path = bundle_path(s) if path is None else path
    bundle = await asyncio.to_thread(load_bundle, path, True, True)
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
    region = None
    if bundle.manifest.region is not None:
        from service.region import RegionCheck

        region = await asyncio.to_thread(RegionCheck, bundle, s.device, s.threads)
    return Pipeline(bundle, batcher, s, finder, region)


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
        self.pipeline: Pipeline | None = None
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
        self._using: dict[asyncio.Task[Any], Pipeline] = {}
        """The pipeline each frame under way runs on (a swap waits for the old one's)."""
        self._swap = asyncio.Lock()
        self.live: SettingsChange | None = None
        """The live settings' version in force."""
        self.shadow: Pipeline | None = None
        """The candidate in shadow, when one is."""
        self.shadow_share = 0.0

    async def start(self) -> None:
        """Load the bundle and the engine (warmed), then take frames in the background."""
        try:
            self.pipeline = await open_pipeline(self.settings, on_batch=self._batch_done)
        except Exception as err:
            self.failure = f"loading the engine failed: {type(err).__name__}: {err}"
            raise
        self._serving(self.pipeline)
        self.live = await asyncio.to_thread(self.store.live_settings)
        self.pipeline.use(self.live)
        self.metrics.watch(LiveCollector("gpu_memory", gpu_memory))
        self.ready = True
        self._loops = [
            asyncio.create_task(self._take(), name="take"),
            asyncio.create_task(self._renew(), name="renew"),
            asyncio.create_task(self._follow_settings(), name="follow-settings"),
            asyncio.create_task(self._answer_describe(), name="describe"),
        ]
        if self.settings.repository is not None:
            self._loops.append(asyncio.create_task(self._follow(), name="follow-model"))

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
        if self.pipeline is not None:
            await self.pipeline.batcher.stop()
        await self._drop_shadow()

    async def swap(self, path: Path, then: Callable[[], object] | None = None) -> Pipeline:
        """Serve the bundle at `path` from the next frame on, without losing one.

        The new engine is loaded and warmed beside the old one; frames that start from
        then on run on it, frames under way finish on the old one, which is then stopped.
        A bundle that fails to load or warm raises, and the old one goes on serving.
        `then` (the repository's pointer moved, in a thread) runs once the new one
        serves, before the repository is looked at again.
        """
        async with self._swap:
            new = await self._swap_to(path)
            if then is not None:
                await asyncio.to_thread(then)
            if self.shadow is not None and _same(self.shadow, path):  # it serves now
                await self._drop_shadow()
            return new

    async def start_shadow(
        self, path: Path, share: float, then: Callable[[], object] | None = None
    ) -> Pipeline:
        """Score `share` of the frames with the bundle at `path` too (in place of any other).

        Its engine is loaded and warmed first; a bundle that fails raises, and any
        candidate before it stays. `then` (the repository's shadow set, in a thread) runs
        once it scores.
        """
        async with self._swap:
            new = await self._shadow_to(path, share)
            if then is not None:
                await asyncio.to_thread(then)
            return new

    async def stop_shadow(self, then: Callable[[], object] | None = None) -> None:
        """No candidate scores any more."""
        async with self._swap:
            await self._drop_shadow()
            if then is not None:
                await asyncio.to_thread(then)

    async def _shadow_to(self, path: Path, share: float) -> Pipeline:
        if self.shadow is not None and _same(self.shadow, path):
            self.shadow_share = share
            return self.shadow
        new = await open_pipeline(self.settings, path=path)
        new.use(self.live)
        await self._drop_shadow()
        self.shadow, self.shadow_share = new, share
        log.info("candidate %s scores %g of the frames in shadow", new.bundle, share)
        return new

    async def _drop_shadow(self) -> None:
        old, self.shadow = self.shadow, None
        if old is not None:  # a frame it scores now fails its shadow scoring only
            await old.batcher.stop()
            log.info("candidate %s no longer in shadow", old.bundle)

    async def _swap_to(self, path: Path) -> Pipeline:
        new = await open_pipeline(self.settings, self._batch_done, path)
        new.use(self.live)
        old, self.pipeline = self.pipeline, new
        self._serving(new, old)
        busy = [task for task, p in self._using.items() if p is old]
        if busy:
            await asyncio.wait(busy)
        if old is not None:
            await old.batcher.stop()
        return new

    async def _follow(self) -> None:
        """Serve the repository's active version and candidate, as it says.

        Looked at on each announcement (queue.news) and every settings.repository_poll_s
        besides; a change is swapped in. How a scrapscan-worker learns of an activation
        through the API (the repository folder is shared; embedded, the API swaps at once
        and this finds nothing to do).
        A version that fails to load is not tried again until the pointer moves.
        """
        assert self.settings.repository is not None
        repo = Repository(self.settings.repository)
        failed: Path | None = None
        failed_shadow: Path | None = None
        while True:
            try:
                await self.queue.news(self.settings.repository_poll_s)
            except redis.RedisError as err:  # the folder is still looked at
                log.warning("redis: no model announcements: %s", err)
                await asyncio.sleep(self.settings.repository_poll_s)
            async with self._swap:  # not while the API swaps and moves the pointer
                try:
                    path = await asyncio.to_thread(bundle_path, self.settings)
                except (RepositoryError, OSError) as err:
                    log.warning("model repository %s: %s", repo.root, err)
                    continue
                assert self.pipeline is not None
                if path.resolve() not in (self.pipeline.bundle.root.resolve(), failed):
                    try:
                        await self._swap_to(path)
                        failed = None
                    except Exception as err:  # the old one serves on
                        failed = path.resolve()
                        self.metrics.model_swap_failures.inc()
                        log.error("model %s not served: %s: %s", path, type(err).__name__, err)
                try:
                    plan = await asyncio.to_thread(repo.shadow)
                except (RepositoryError, OSError):
                    continue  # said above
                failed_shadow = await self._follow_shadow(repo, plan, failed_shadow)

    async def _follow_shadow(
        self, repo: Repository, plan: Shadow | None, failed: Path | None
    ) -> Path | None:
        """Score in shadow as the repository says; the candidate that failed to load, if any."""
        if plan is None:
            await self._drop_shadow()
            return None
        path = repo.folder(plan.name, plan.version)
        if path.resolve() == failed:
            return failed
        try:
            await self._shadow_to(path, plan.share)
        except Exception as err:
            self.metrics.model_swap_failures.inc()
            log.error("candidate %s not scoring: %s: %s", path, type(err).__name__, err)
            return path.resolve()
        return None

    async def describe(self, frame_id: str, region: Region) -> Description:
        """What the region encoder of the bundle served says of a region of a stored frame.

        Conflict when the bundle has no region encoder or the upload is no longer kept.
        """
        pipeline = self.pipeline
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

    def use(self, live: SettingsChange | None) -> None:
        """Apply a version of the live settings to the frames that start from now on."""
        if live is None or self.pipeline is None:
            return
        if self.live is None or live.version > self.live.version:
            self.live = live
            self.pipeline.use(live)
            if self.shadow is not None:
                self.shadow.use(live)
            log.info("live settings version %d (by %s) in force", live.version, live.by)

    async def _follow_settings(self) -> None:
        """Apply each new version of the live settings within SETTINGS_POLL_S."""
        while True:
            await asyncio.sleep(SETTINGS_POLL_S)
            try:
                self.use(await asyncio.to_thread(self.store.live_settings))
            except Exception as err:  # the store away: the settings in force stay
                log.warning("live settings not read: %s", err)

    def _serving(self, new: Pipeline, old: Pipeline | None = None) -> None:
        """Metrics and log: `new` serves (in place of `old`)."""
        if old is not None:
            was = old.bundle.manifest.model
            self.metrics.model.remove(was.name, was.version, old.batcher.engine.name)
        m, engine = new.bundle.manifest, new.batcher.engine.name
        self.metrics.model.labels(m.model.name, m.model.version, engine).set(1)
        for name, quantiles in m.postprocess.calibration.get("frame_score_quantiles", {}).items():
            for q, value in quantiles.items():  # "0.5" -> percentile "50"
                self.metrics.reference.labels(name, f"{float(q) * 100:g}").set(value)
        log.info("serving bundle %s on engine %s", new.bundle, engine)

    def serving(self) -> dict[str, str] | None:
        """The model served now: name and version (None before it is loaded)."""
        if self.pipeline is None:
            return None
        m = self.pipeline.bundle.manifest.model
        return {"name": m.name, "version": m.version}

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
        assert self.pipeline is not None, "start() first"
        task = asyncio.current_task()
        assert task is not None
        self._using[task] = pipeline = self.pipeline
        try:
            await self._run(record, pipeline)
        finally:
            self._using.pop(task, None)

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
        shadow = self.shadow
        if shadow is not None and picked(frame_id, self.shadow_share):
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

    def _batch_done(self, batch: BatchRecord) -> None:
        self.metrics.batch_size.observe(batch.size)
        self.metrics.batch_seconds.observe(batch.seconds)
