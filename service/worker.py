"""scrapscan-worker: process frames from the Redis stream (store redis, the scaled-out shape).

One worker process per GPU (several per host are fine). Each reads the frame stream
through the consumer group "workers", so a frame goes to one worker at a time, and runs
up to `workers` frames at once, their tiles sharing engine batches.

- A frame is acknowledged (and deleted from the stream) once its end is stored.
- A worker renews the frames it works on every third of queue.claim_idle_s; a worker that
  stops (SIGKILL, lost host) stops renewing, and after claim_idle_s the others take its
  frames over with XAUTOCLAIM. Results are written once per frame, so a frame that two
  workers finish is stored, counted and in the feed once.
- Every attempt is counted (by the queue, service/queue.py). An attempt that fails (not a bad image:
  that fails at once) queues the frame again; after queue.max_attempts, or when a taken-over
  frame has used them all (it kept killing its worker), the frame goes to the dead-letter
  stream with the reason and is marked failed.
- While Redis is away the worker retries every second and goes on where it stopped.
- A frame held longer than queue.max_frame_s is no longer renewed (others take it over)
  and /healthz fails, so an orchestrator restarts a hung worker.

The process serves /healthz, /readyz (the engine is loaded and warmed) and /metrics over
HTTP for probes and Prometheus. Settings come from SCRAPSCAN_* environment variables and
the file named by SCRAPSCAN_SETTINGS_FILE (redis_url, engine, workers, batch,
queue.claim_idle_s, queue.max_attempts, ...).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import socket
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from common.cli import command
from service import __version__
from service.cli import add_log_arguments, add_model_arguments
from service.errors import Unavailable
from service.logs import RequestId, configure_logging
from service.metrics import HTTPMetrics, LiveCollector, Metrics, queue_gauges
from service.queue import RedisQueue, group_info
from service.routes.errors import error_response
from service.runner import FrameRunner, settled_heap
from service.serving import bundle_path
from service.settings import Settings
from service.store_redis import RedisStore

log = logging.getLogger("scrapscan.worker")


class StreamWorker:
    """A FrameRunner on the Redis stream, as consumer `name`."""

    def __init__(self, settings: Settings, name: str) -> None:
        self.settings = settings
        self.name = name
        self.metrics = Metrics()
        self.store = RedisStore.from_settings(settings)
        q = settings.queue
        self.queue = RedisQueue(self.store.r, name, q.block_ms, q.claim_idle_s)
        self.runner = FrameRunner(settings, self.store, self.queue, self.metrics)
        self.metrics.watch(
            LiveCollector(
                "queue", lambda: queue_gauges(self.store.backlog, lambda: group_info(self.store.r))
            )
        )

    @property
    def ready(self) -> bool:
        """The engine is loaded and warmed."""
        return self.runner.ready

    @property
    def failure(self) -> str | None:
        """Why loading the engine failed, if it did."""
        return self.runner.failure

    def serving(self) -> dict[str, str] | None:
        """The model served now: name and version (None before it is loaded)."""
        return self.runner.models.serving()

    def stuck(self) -> list[str]:
        """Entries this worker has held longer than queue.max_frame_s."""
        return self.runner.stuck()

    async def start(self) -> None:
        """Load the engine, then take and renew frames in the background."""
        await self.runner.start()

    async def stop(self, grace_s: float = 30) -> None:
        """Stop taking frames, let those in hand finish (up to grace_s), stop the engine.

        Frames still unfinished then stay pending and are taken over by other workers.
        """
        await self.runner.stop(grace_s)
        self.store.close()


def create_worker_app(settings: Settings, name: str, freeze_heap: bool = False) -> FastAPI:
    """The worker's HTTP side: probes and metrics; its lifespan runs the StreamWorker.

    freeze_heap: as create_app's (service/app.py), once the engine is loaded.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.worker = worker
        with contextlib.ExitStack() as settled:

            async def start() -> None:
                await worker.start()
                settled.enter_context(settled_heap(freeze_heap))

            # the engine loads in the background: /healthz answers at once, /readyz once loaded
            loading = asyncio.create_task(start(), name="load")
            loading.add_done_callback(_report_failure)
            try:
                yield
            finally:
                loading.cancel()
                await asyncio.gather(loading, return_exceptions=True)
                await worker.stop()

    app = FastAPI(
        title="scrapscan-worker",
        version=__version__,
        summary="Processes crane frames from the Redis stream; probes and metrics only.",
        lifespan=lifespan,
        openapi_url=None,  # no API to document (and so no /docs): the API process has it
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
        """The engine is loaded and warmed (and which model it serves): 503 while it loads."""
        worker = worker_of(app)
        if not worker.ready:
            return error_response(
                Unavailable("not_ready", worker.failure or "the model is loading")
            )
        return JSONResponse({"status": "ready", "consumer": name, "model": worker.serving()})

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
    p = command("scrapscan-worker", __doc__)
    add_model_arguments(p)
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
    from service.objects import ObjectStore, ObjectStoreError

    try:
        given = {"bundle": args.bundle, "repository": args.repository}
        settings = Settings(**{k: v for k, v in given.items() if v})
        if settings.store != "redis":
            raise ValueError(
                "a worker reads the Redis stream: set SCRAPSCAN_STORE=redis and "
                "SCRAPSCAN_REDIS_URL (embedded mode needs no worker: scrapscan-serve has one)"
            )
        load_bundle(bundle_path(settings), serving=True)
        if settings.objects is not None:
            ObjectStore.of(settings.objects).check()
    except (ValidationError, BundleError, ValueError, OSError, ObjectStoreError) as err:
        print(f"scrapscan-worker: {err}", file=sys.stderr)
        return 1
    configure_logging(args.log_level, args.log_format)
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.run(
            create_worker_app(settings, args.name, freeze_heap=True),
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            log_config=None,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
