"""What the API process holds while it runs: the store, the metrics and, embedded, the runner.

Embedded (store sqlite): accepted frames go on an in-process queue that a FrameRunner
(service/runner.py) drains through the pipeline. Scaled out (store redis): the store
puts each frame on the Redis stream that scrapscan-worker processes read; this process
only follows the feed stream to wake long-polls and ?wait=true requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

import redis

from common.bundle import BundleError, load_bundle
from common.repository import Pointer, Repository, RepositoryError, Shadow
from service.errors import Conflict, InvalidInput, NotFound, Unavailable
from service.metrics import LiveCollector, Metrics, queue_gauges
from service.queue import LocalQueue, announce_models, ask_describe, group_info
from service.region import DescribeIn, Description
from service.result import FrameResult
from service.runner import FrameRunner
from service.settings import Settings
from service.store import FeedPage, FrameRecord, Store
from service.store_redis import RedisStore
from service.store_sqlite import SQLiteStore

log = logging.getLogger("scrapscan.service")

OBJECTS_PURGE_S = 60
"""How often the bucket's objects that are due are deleted (S3 lifecycle rules count days;
an upload of a clean frame is due an hour after its end)."""


class Service:
    """The running service: store, metrics, the embedded worker or the feed follower."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.redis: RedisStore | None = None
        self.store: Store
        if settings.store == "redis":
            self.redis = RedisStore.from_settings(settings)
            self.store = self.redis
            self.runner: FrameRunner | None = None
        else:
            self.store = SQLiteStore.from_settings(settings)
            self.queue = LocalQueue()
            self.runner = FrameRunner(
                settings, self.store, self.queue, self.metrics, on_end=self.ended
            )
        redis_client = self.redis.r if self.redis is not None else None
        group = None if redis_client is None else lambda: group_info(redis_client)
        self.metrics.watch(LiveCollector("queue", lambda: queue_gauges(self.store.backlog, group)))
        self.done: dict[str, asyncio.Event] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self.finished = asyncio.Condition()
        """Notified each time a frame ends (done or failed): wakes feed long-polls."""

    async def start(self) -> None:
        """Start the worker tasks (embedded) or the feed follower (redis).

        Embedded: load the engine, queue the unfinished frames, start the workers. Redis:
        follow the feed stream (Redis may still be away; /readyz says so).
        """
        if self.runner is not None:
            for frame_id in await asyncio.to_thread(self.store.unfinished):
                self.queue.put(frame_id)
            await self.runner.start()
            self.tasks = [asyncio.create_task(self._purge(), name="retention")]
        else:
            self.tasks = [asyncio.create_task(self._follow(), name="feed-follower")]
            if self.redis is not None and self.redis.objects is not None:
                self.tasks.append(asyncio.create_task(self._purge_objects(), name="objects"))

    async def stop(self) -> None:
        """Stop the tasks and the engine (unfinished frames stay queued in the store)."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.runner is not None:
            await self.runner.stop()
        self.store.close()

    async def ready(self) -> None:
        """Raise Unavailable unless frames can be taken and processed."""
        if self.runner is not None and not self.runner.ready:
            raise Unavailable("not_ready", "the model is loading")
        if self.redis is not None:
            await asyncio.to_thread(self.redis.ping)  # store_unavailable when away

    def accept(self, frame_id: str, camera_id: str, wait: bool) -> None:
        """A frame was stored: queue it (embedded) and note who waits for it."""
        self.metrics.frames.labels("accepted", camera_id).inc()
        if wait:
            self.done[frame_id] = asyncio.Event()
        if self.runner is not None:
            self.queue.put(frame_id)

    # --- the model repository ----------------------------------------------------------

    def repository(self) -> Repository:
        """The repository the service serves from; NotFound when it serves a lone bundle."""
        if self.settings.repository is None:
            raise NotFound(
                "no_repository",
                "this service serves one bundle (SCRAPSCAN_BUNDLE); start it with "
                "--repository DIR to change models while it runs",
            )
        return Repository(self.settings.repository)

    async def activate(self, name: str, version: str, by: str) -> Pointer:
        """Serve this version: hot-swapped here (embedded), or announced to the workers.

        NotFound for a version the repository does not hold; Conflict (bundle_refused)
        with the reason when it cannot be served, and the version served stays.
        """
        repo = self.repository()
        try:
            path = await asyncio.to_thread(repo.path, name, version)
        except RepositoryError as err:
            raise NotFound("model_version_not_found", str(err)) from None
        return await self._switch(path, lambda: repo.activate(name, version, by))

    async def rollback(self, by: str) -> Pointer:
        """Serve again the version served before the current one."""
        repo = self.repository()
        history = (await asyncio.to_thread(repo.state))["history"]
        if len(history) < 2:
            raise Conflict("nothing_to_roll_back", "no version was served before this one")
        previous = history[-2]
        try:
            path = await asyncio.to_thread(repo.path, previous["name"], previous["version"])
        except RepositoryError as err:
            raise Conflict("bundle_refused", str(err)) from None
        return await self._switch(path, lambda: repo.rollback(by))

    async def _switch(self, path: Path, move: Callable[[], Pointer]) -> Pointer:
        """Serve the bundle at `path`, then `move` the repository's pointer to it.

        Embedded the swap comes first, and the pointer moves only once the new one
        serves; with store redis the bundle's files are checked, and the workers follow
        the pointer.
        """
        moved: list[Pointer] = []
        if self.runner is None:
            try:
                await asyncio.to_thread(load_bundle, path, True, True)
            except BundleError as err:
                raise Conflict("bundle_refused", str(err)) from None
            pointer = await asyncio.to_thread(move)
            await self._announce()
            return pointer
        try:
            await self.runner.models.swap(path, lambda: moved.append(move()))
        except Exception as err:  # not loaded or not warmed: the old one serves on
            log.warning("model %s refused: %s: %s", path, type(err).__name__, err)
            raise Conflict("bundle_refused", f"{type(err).__name__}: {err}") from None
        return moved[0]

    async def start_shadow(self, name: str, version: str, share: float, by: str) -> Shadow:
        """Score `share` of the frames with this version too, its answers kept, not served.

        Embedded its engine is loaded and warmed here; with store redis the bundle's
        files are checked and the workers follow the repository. NotFound for a version
        the repository does not hold; Conflict for the version served (shadow_is_served)
        or a bundle that cannot be served (bundle_refused).
        """
        repo = self.repository()
        try:
            path = await asyncio.to_thread(repo.path, name, version)
            active = await asyncio.to_thread(repo.active)
        except RepositoryError as err:
            raise NotFound("model_version_not_found", str(err)) from None
        if active is not None and (active.name, active.version) == (name, version):
            raise Conflict("shadow_is_served", f"model {name} version {version} is the one served")
        planned: list[Shadow] = []

        def move() -> None:
            planned.append(repo.start_shadow(name, version, share, by))

        try:
            if self.runner is None:
                await asyncio.to_thread(load_bundle, path, True, True)
                move()
                await self._announce()
            else:
                await self.runner.models.start_shadow(path, share, move)
        except Exception as err:
            log.warning("candidate %s refused: %s: %s", path, type(err).__name__, err)
            raise Conflict("bundle_refused", f"{type(err).__name__}: {err}") from None
        return planned[0]

    async def stop_shadow(self, by: str) -> Shadow | None:
        """No candidate scores any more; the one that did, if any."""
        repo = self.repository()
        stopped: list[Shadow | None] = []

        def move() -> None:
            stopped.append(repo.stop_shadow(by))

        if self.runner is None:
            await asyncio.to_thread(move)
            await self._announce()
        else:
            await self.runner.models.stop_shadow(move)
        return stopped[0]

    async def _announce(self) -> None:
        """Tell the workers the repository changed (else they see it within their poll)."""
        assert self.redis is not None
        try:
            await asyncio.to_thread(announce_models, self.redis.r)
        except redis.RedisError as err:
            log.warning("redis: model change not announced (workers poll the folder): %s", err)

    async def describe(self, frame_id: str, given: DescribeIn) -> Description:
        """What the region encoder says of a region of a done frame.

        Embedded the runner's model answers; scaled out a worker does, through Redis.
        NotFound for no such frame; Conflict for a frame not done (or past the results'
        retention), no region encoder, or an upload no longer kept; InvalidInput for a
        region not inside the frame; Unavailable when no worker answers in time.
        """
        record = await self.record(frame_id)
        if not isinstance(record.result, FrameResult):
            raise Conflict(
                "frame_not_done", f"frame {frame_id} has no result to describe (yet, or any more)"
            )
        try:
            region = given.outline(record.result.image.width, record.result.image.height)
        except ValueError as err:
            raise InvalidInput("invalid_region", str(err)) from None
        if self.runner is not None:
            return await self.runner.describe(frame_id, region)
        assert self.redis is not None
        request = {"frame_id": frame_id, "bbox": region.bbox, "polygon": region.polygon}
        timeout = self.settings.wait_timeout_s
        reply = await asyncio.to_thread(ask_describe, self.redis.r, request, timeout)
        if reply is None:
            raise Unavailable("describe_timeout", f"no worker answered within {timeout:g} s")
        if "error" in reply:
            kind = {"Conflict": Conflict, "NotFound": NotFound}.get(
                reply["error"]["kind"], Unavailable
            )
            raise kind(reply["error"]["code"], reply["error"]["message"])
        return Description.model_validate(reply["description"])

    async def record(self, frame_id: str) -> FrameRecord:
        """The stored frame; NotFound when there is none."""
        record = await asyncio.to_thread(self.store.get, frame_id)
        if record is None:
            raise NotFound("frame_not_found", f"no frame {frame_id}")
        return record

    async def wait_for(self, frame_id: str) -> FrameRecord | None:
        """The frame once it has ended, or None after settings.wait_timeout_s.

        Woken by the frame's event; looks at the store every second as well, so a frame
        that ended before the event was set (or on another API process) is not missed.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.wait_timeout_s
        event = self.done.get(frame_id)
        while True:
            record = await self.record(frame_id)
            remaining = deadline - loop.time()
            if record.status in ("done", "failed"):
                return record
            if remaining <= 0:
                return None
            if event is None:
                await asyncio.sleep(min(1.0, remaining))
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(1.0, remaining))

    async def feed(self, after: str, limit: int, camera_id: str | None, wait: float) -> FeedPage:
        """Up to `limit` ended frames after `after`; waits up to `wait` s for the first one.

        InvalidInput for a cursor the store did not give out.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            async with self.finished:
                try:
                    page = await asyncio.to_thread(self.store.feed, after, limit, camera_id)
                except ValueError:
                    raise InvalidInput(
                        "invalid_cursor", "a cursor is the `next` value of an earlier page"
                    ) from None
                after = page.next  # frames of other cameras looked at are not looked at again
                remaining = deadline - loop.time()
                if page.items or remaining <= 0:
                    return page
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.finished.wait(), remaining)

    async def ended(self, *frame_ids: str) -> None:
        """Wake the feed's long-polls and the requests waiting for these frames."""
        async with self.finished:
            self.finished.notify_all()
        for frame_id in frame_ids:
            event = self.done.pop(frame_id, None)
            if event is not None:
                event.set()

    async def _purge(self) -> None:
        """Embedded: apply the retention at start, then hourly (Redis expires keys).

        More often when half the upload TTL is shorter, so that uploads go near their time.
        """
        assert isinstance(self.store, SQLiteStore)
        s = self.settings
        while True:
            try:
                start = time.perf_counter()
                n = await asyncio.to_thread(self.store.purge, s.result_ttl_s, s.report_ttl_s)
                self.metrics.purge_seconds.observe(time.perf_counter() - start)
                self.metrics.purged.inc(n)
                if n:
                    log.info("retention: %d frames purged", n)
            except Exception:
                log.exception("retention failed; trying again in an hour")
            await asyncio.sleep(min(3600, s.result_ttl_s / 4, max(60, s.upload_ttl_s / 2)))

    async def _purge_objects(self) -> None:
        """Redis with a bucket: delete the objects that are due, every minute.

        Every API process does it; each batch is taken off the list atomically, so two
        processes never delete the same objects.
        """
        assert self.redis is not None
        while True:
            try:
                start = time.perf_counter()
                n = await asyncio.to_thread(self.redis.purge_objects)
                self.metrics.purge_seconds.observe(time.perf_counter() - start)
                self.metrics.purged_objects.inc(n)
            except Exception as err:  # Redis or the bucket away: the next pass catches up
                log.warning("retention of the bucket's objects failed: %s", err)
            await asyncio.sleep(OBJECTS_PURGE_S)

    async def _follow(self) -> None:
        """Redis mode: read the feed stream as workers end frames."""
        assert self.redis is not None
        last: str | None = None
        while True:
            try:
                if last is None:
                    last = await asyncio.to_thread(self.redis.results_tail)
                last, frame_ids = await asyncio.to_thread(
                    self.redis.follow, last, self.settings.queue.block_ms
                )
            except redis.RedisError as err:
                log.warning("feed follower: %s; retrying in 1 s", err)
                await asyncio.sleep(1)
                continue
            if frame_ids:
                await self.ended(*frame_ids)
