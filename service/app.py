"""The FastAPI app, embedded or scaled out.

POST /v1/frames validates and stores the upload, answers 202 with its frame_id and
queues it. Embedded (store sqlite): worker tasks in this process take frames from the
queue and run them through the pipeline, whose engine they share through the batcher.
Scaled out (store redis): the frame goes on a Redis stream and scrapscan-worker processes
(service/worker.py) do the work; this process answers from Redis.

The routes are in service/routes/ (one module per resource), the runtime they share in
service/runtime.py, and the answer to each kind of error in service/routes/errors.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from service import __version__
from service.auth import KeyRing
from service.logs import RequestId
from service.metrics import HTTPMetrics
from service.routes import errors, feedback, frames, live, models, ops, pages, results, trucks
from service.routes.deps import BodyLimit
from service.runner import settled_heap
from service.runtime import Service
from service.settings import Settings

log = logging.getLogger("scrapscan.service")


def create_app(settings: Settings | None = None, freeze_heap: bool = False) -> FastAPI:
    """The app; its lifespan starts and stops the Service.

    freeze_heap: once started, what start-up made is out of the garbage collector's walks
    while the app runs (service/runner.py, settled_heap), as in scrapscan-serve.
    """
    s = settings or Settings()
    keys = KeyRing(s.api_keys_file)  # a bad keys file stops the app here, named
    svc = Service(s)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.service = svc
        app.state.keys = keys
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            # SIGHUP reads the keys file again (only where the app owns the main thread)
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, keys.reload)
        if not keys.enabled:
            log.warning(
                "NO API KEYS: every route is open to anyone who can reach this port "
                "(set SCRAPSCAN_API_KEYS_FILE)"
            )
        await svc.start()
        try:
            with settled_heap(freeze_heap):
                yield
        finally:
            await svc.stop()

    app = FastAPI(
        title="scrapscan",
        version=__version__,
        summary="Finds motors, cables and spray cans in crane-camera frames of steel scrap.",
        lifespan=lifespan,
        docs_url=None,  # pages.install serves the docs from the package, not a CDN
        redoc_url=None,
    )
    for module in (frames, feedback, results, trucks, ops, models, live):
        app.include_router(module.router)
    pages.install(app)
    errors.install(app, s.queue.retry_after_s)
    errors.document(app)
    app.add_middleware(BodyLimit, limit=s.max_upload_bytes)
    if s.cors_origins:  # closed unless origins are listed
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(s.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Location", "Retry-After"],
        )
    app.add_middleware(HTTPMetrics, metrics=svc.metrics)
    app.add_middleware(RequestId)
    return app
