"""scrapscan-worker: process frames from the Redis stream (store redis, the scaled-out shape).

One worker process per GPU (several per host are fine). Each reads the frame stream
through the consumer group "workers", so a frame goes to one worker at a time, and runs
up to `workers` frames at once, their tiles sharing engine batches.

- A frame is acknowledged (and deleted from the stream) once its end is stored.
- A worker renews the frames it works on every third of queue.claim_idle_s; a worker that
  stops (SIGKILL, lost host) stops renewing, and after claim_idle_s the others take its
  frames over with XAUTOCLAIM. Results are written once per frame, so a frame that two
  workers finish is stored, counted and in the feed once.
- Every attempt is counted in the frame's hash. An attempt that fails (not a bad image:
  that fails at once) queues the frame again; after queue.max_attempts, or when a taken-over
  frame has used them all (it kept killing its worker), the frame goes to the dead-letter
  stream with the reason and is marked failed.
- While Redis is away the worker retries every second and goes on where it stopped.
- A frame held longer than queue.max_frame_s is no longer renewed (others take it over)
  and /healthz fails, so an orchestrator restarts a hung worker.

The process serves /healthz, /readyz (the engine is loaded and warmed) and /metrics over
HTTP for probes and Prometheus.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import redis
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from service.cli import add_log_arguments
from service.errors import Unavailable
from service.logs import RequestId, configure_logging
from service.metrics import HTTPMetrics, LiveCollector, Metrics, queue_gauges
from service.processor import FrameFailed, Processor
from service.routes.errors import error_response
from service.settings import Settings
from service.store_redis import RedisStore

log = logging.getLogger("scrapscan.worker")


class StreamWorker:
    """Reads the frame stream as consumer `name` and processes what it gets."""

    def __init__(self, settings: Settings, name: str) -> None:
        self.settings = settings
        self.name = name
        self.metrics = Metrics()
        self.store = RedisStore(
            settings.redis_url.get_secret_value(), settings.result_ttl_s, settings.report_ttl_s
        )
        self.processor = Processor(settings, self.store, self.metrics)
        self.metrics.watch(
            LiveCollector("queue", lambda: queue_gauges(self.store.backlog, self.store.group_info))
        )
        self.inflight: dict[str, asyncio.Task[None]] = {}
        """Entry id -> the task processing its frame."""
        self.started: dict[str, float] = {}
        """Entry id -> when this worker took it (time.monotonic())."""
        self._slot = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.failure: str | None = None
        """Why loading the engine failed, if it did."""

    @property
    def ready(self) -> bool:
        """The engine is loaded and warmed."""
        return self.processor.ready

    async def start(self) -> None:
        """Load the engine, then read and renew in the background."""
        try:
            await self.processor.start()
        except Exception as err:
            self.failure = f"loading the engine failed: {type(err).__name__}: {err}"
            raise
        self._tasks = [
            asyncio.create_task(self._read(), name="read"),
            asyncio.create_task(self._renew(), name="renew"),
        ]

    async def stop(self, grace_s: float = 30) -> None:
        """Stop reading, let the frames in hand finish (up to grace_s), stop the engine.

        Frames still unfinished then stay pending and are taken over by other workers.
        """
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.inflight:
            _, late = await asyncio.wait(list(self.inflight.values()), timeout=grace_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        await self.processor.stop()
        self.store.close()

    async def _read(self) -> None:
        q = self.settings.queue
        idle_ms = int(q.claim_idle_s * 1000)
        group_ready = False
        while True:
            free = self.settings.workers - len(self.inflight)
            if free <= 0:
                self._slot.clear()
                await self._slot.wait()
                continue
            try:
                if not group_ready:
                    await asyncio.to_thread(self.store.ensure_group)
                    group_ready = True
                entries = await asyncio.to_thread(self.store.claim, self.name, idle_ms, free)
                if entries:
                    self.metrics.claimed.inc(len(entries))
                    log.info("took over %d frames of a stopped worker", len(entries))
                else:
                    entries = await asyncio.to_thread(self.store.read, self.name, free, q.block_ms)
            except redis.RedisError as err:
                log.warning("redis: %s; retrying in 1 s", err)
                group_ready = False
                await asyncio.sleep(1)
                continue
            for entry_id, frame_id in entries:
                if entry_id in self.inflight:  # ours already (a renewal came late)
                    continue
                task = asyncio.create_task(self._handle(entry_id, frame_id), name=frame_id)
                self.inflight[entry_id] = task
                self.started[entry_id] = time.monotonic()

    def stuck(self) -> list[str]:
        """Entries this worker has held longer than queue.max_frame_s."""
        limit = time.monotonic() - self.settings.queue.max_frame_s
        return [e for e, t in self.started.items() if t < limit]

    async def _renew(self) -> None:
        """Keep this worker's frames from looking stalled while it works on them.

        A frame held longer than queue.max_frame_s is no longer renewed: if this worker
        hangs on it, another takes it over.
        """
        period = self.settings.queue.claim_idle_s / 3
        while True:
            await asyncio.sleep(period)
            stuck = set(self.stuck())
            live = [e for e in self.inflight if e not in stuck]
            try:
                await asyncio.to_thread(self.store.renew, self.name, live)
            except redis.RedisError as err:
                log.warning("redis: could not renew frames in hand: %s", err)

    async def _handle(self, entry_id: str, frame_id: str) -> None:
        store = self.store
        limit = self.settings.queue.max_attempts
        try:
            record = await asyncio.to_thread(store.get, frame_id)
            if record is None or record.status in ("done", "failed"):
                await asyncio.to_thread(store.ack, entry_id)
                return
            attempts = await asyncio.to_thread(store.attempt, frame_id)
            if attempts > limit:  # it was taken over with every attempt used up
                why = await asyncio.to_thread(store.last_error, frame_id)
                await self._give_up(
                    entry_id,
                    frame_id,
                    f"gave up after {limit} attempts: "
                    f"{why or 'the worker processing it stopped each time'}",
                    attempts - 1,
                )
                return
            try:
                await self.processor.run(frame_id)
            except FrameFailed as err:
                if attempts >= limit:
                    await self._give_up(
                        entry_id, frame_id, f"gave up after {limit} attempts: {err}", attempts
                    )
                else:
                    await asyncio.to_thread(store.retry, entry_id, frame_id, str(err))
                    self.metrics.retries.inc()
                return
            await asyncio.to_thread(store.ack, entry_id)
        except redis.RedisError as err:
            # the frame stays pending: taken over (perhaps by this worker) once Redis is back
            log.warning("frame %s: redis: %s; left for a later attempt", frame_id, err)
        finally:
            self.inflight.pop(entry_id, None)
            self.started.pop(entry_id, None)
            self._slot.set()

    async def _give_up(self, entry_id: str, frame_id: str, reason: str, attempts: int) -> None:
        log.error("frame %s: %s", frame_id, reason)
        record = await asyncio.to_thread(self.store.get, frame_id)
        if await asyncio.to_thread(self.store.dead_letter, entry_id, frame_id, reason, attempts):
            self.metrics.dead_letters.inc()
            self.processor.count_failed(record.camera_id if record else "")


def create_worker_app(settings: Settings, name: str) -> FastAPI:
    """The worker's HTTP side: probes and metrics; its lifespan runs the StreamWorker."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.worker = worker
        # the engine loads in the background: /healthz answers at once, /readyz once loaded
        loading = asyncio.create_task(worker.start(), name="load")
        loading.add_done_callback(_report_failure)
        try:
            yield
        finally:
            loading.cancel()
            await asyncio.gather(loading, return_exceptions=True)
            await worker.stop()

    app = FastAPI(
        title="scrapscan-worker",
        version="0.1.0",
        summary="Processes crane frames from the Redis stream; probes and metrics only.",
        lifespan=lifespan,
    )

    worker = StreamWorker(settings, name)

    def worker_of(app: FastAPI) -> StreamWorker:
        w: StreamWorker = app.state.worker
        return w

    @app.get("/healthz")
    async def healthz() -> Response:
        """The process is up.

        503 once loading the engine has failed, or while a frame has been in hand longer
        than queue.max_frame_s (a hung worker: restart it).
        """
        w = worker_of(app)
        if w.failure is not None:
            return error_response(Unavailable("engine_failed", w.failure))
        if stuck := w.stuck():
            return error_response(
                Unavailable(
                    "stuck",
                    f"{len(stuck)} frames in hand for more than {settings.queue.max_frame_s} s",
                )
            )
        return JSONResponse({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        """The engine is loaded and warmed: 503 not_ready while it loads."""
        worker = worker_of(app)
        if not worker.ready:
            return error_response(
                Unavailable("not_ready", worker.failure or "the model is loading")
            )
        return JSONResponse({"status": "ready", "consumer": name})

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus metrics of this worker."""
        m = worker_of(app).metrics
        return Response(m.exposition(), media_type=m.content_type)

    app.add_middleware(HTTPMetrics, metrics=worker.metrics)
    app.add_middleware(RequestId)
    return app


def _report_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the worker cannot start", exc_info=task.exception())


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments (everything else comes from SCRAPSCAN_* settings)."""
    p = argparse.ArgumentParser(
        prog="scrapscan-worker",
        description="Process crane frames from the Redis stream that scrapscan-serve "
        "(SCRAPSCAN_STORE=redis) fills. Run one per GPU. Settings come from SCRAPSCAN_* "
        "environment variables and the file named by SCRAPSCAN_SETTINGS_FILE (redis_url, "
        "engine, workers, batch, queue.claim_idle_s, queue.max_attempts, ...). Serves "
        "/healthz, /readyz and /metrics on --port.",
    )
    p.add_argument("--bundle", type=Path, help="model bundle folder (default: models/demo)")
    p.add_argument(
        "--name",
        default=f"{socket.gethostname()}-{os.getpid()}",
        help="consumer name in the group, unique per worker (default: host-pid)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address of the probe/metrics server")
    p.add_argument("--port", type=int, default=8001, help="port of the probe/metrics server")
    add_log_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run until SIGTERM or SIGINT; exit 1 with a message when settings or bundle are wrong."""
    args = build_parser().parse_args(argv)
    import uvicorn

    from common.bundle import BundleError, load_bundle

    try:
        settings = Settings(**({"bundle": args.bundle} if args.bundle else {}))
        if settings.store != "redis":
            raise ValueError(
                "a worker reads the Redis stream: set SCRAPSCAN_STORE=redis and "
                "SCRAPSCAN_REDIS_URL (embedded mode needs no worker: scrapscan-serve has one)"
            )
        load_bundle(settings.bundle, serving=True)
    except (ValidationError, BundleError, ValueError, OSError) as err:
        print(f"scrapscan-worker: {err}", file=sys.stderr)
        return 1
    configure_logging(args.log_level, args.log_format)
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.run(
            create_worker_app(settings, args.name),
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            log_config=None,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
