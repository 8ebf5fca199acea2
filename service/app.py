"""The FastAPI app, embedded or scaled out.

POST /v1/frames validates and stores the upload, answers 202 with its frame_id and
queues it. Embedded (store sqlite): worker tasks in this process take frames from the
queue and run them through the pipeline, whose engine they share through the batcher.
Scaled out (store redis): the frame goes on a Redis stream and scrapscan-worker processes
(service/worker.py) do the work; this process answers from Redis. Errors are JSON:
{"error": {"code": "...", "message": "..."}}.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import signal
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

import redis
from fastapi import Depends, FastAPI, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import (
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.auth import KeyRing, Permission, allowed
from service.decode import FORMATS, read_header
from service.errors import APIError
from service.logs import RequestId
from service.metrics import HTTPMetrics, LiveCollector, Metrics, queue_gauges
from service.processor import FrameFailed, Processor
from service.reports import frame_links, report_csv, truck_report, trucks_csv
from service.settings import ID_PATTERN, Settings
from service.store import IdempotencyConflict, SQLiteStore, Store
from service.store_redis import RedisStore

log = logging.getLogger("scrapscan.service")

FRAME_ID = re.compile(r"^[0-9a-f]{32}$")
ID = re.compile(ID_PATTERN)
IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,128}$")


# --- response models (the OpenAPI schema) ---------------------------------------------------


class ErrorBody(BaseModel):
    """An error's code (stable, for programs) and message (for people)."""

    code: str = Field(examples=["image_too_large"])
    message: str = Field(examples=["the image is 9000x9000 = 81000000 pixels; the limit is ..."])


class ErrorResponse(BaseModel):
    """Every 4xx and 5xx answer."""

    error: ErrorBody


class FrameAccepted(BaseModel):
    """202: the frame is stored and queued."""

    frame_id: str = Field(examples=["3f2a9c0e5b7d4e1f8a6b2c9d0e1f2a3b"])
    status: str = Field(examples=["queued"])
    links: dict[str, str]


class FrameStatus(BaseModel):
    """A frame's state and, once done, its result."""

    frame_id: str
    camera_id: str
    truck_id: str | None
    captured_at: str | None
    status: str = Field(examples=["done"], description="queued, processing, done or failed")
    error: str | None = Field(None, description="why the frame failed")
    result: dict[str, Any] | None = Field(
        None,
        description="model, image size, bed polygon used, verdict, frame scores per class, "
        "instances (class, score, class_scores, bbox [x, y, w, h], area, polygon), tiles, "
        "per-stage timings in ms",
    )
    links: dict[str, str]


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "bad request: missing or invalid field, not an image, corrupt image",
        401: "unauthorized: no API key, or a key this service does not know",
        403: "forbidden: the key's role may not use this route",
        404: "unknown frame",
        409: "Idempotency-Key reused with other bytes",
        413: "upload or image too large",
        415: "not multipart/form-data, or not JPEG or PNG",
        429: "queue_full: too many frames wait to be processed; retry after Retry-After s",
        503: "not_ready: the model is loading; store_unavailable: Redis cannot be reached",
    }.items()
}

FRAME_FORM = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image", "camera_id"],
                    "properties": {
                        "image": {
                            "type": "string",
                            "format": "binary",
                            "description": "JPEG or PNG frame",
                        },
                        "camera_id": {
                            "type": "string",
                            "pattern": ID_PATTERN,
                            "example": "crane-2-north",
                        },
                        "truck_id": {
                            "type": "string",
                            "pattern": ID_PATTERN,
                            "example": "TRK-20261124-0031",
                        },
                        "captured_at": {
                            "type": "string",
                            "format": "date-time",
                            "example": "2026-11-24T06:31:07Z",
                        },
                    },
                }
            }
        },
    }
}


# --- API keys: each route names the permission it needs (service/auth.py) -----------------

BEARER = HTTPBearer(auto_error=False, description="an API key: Authorization: Bearer <key>")


def require(permission: Permission) -> Any:
    """A route dependency: 401 without a known key, 403 when the key's role may not."""

    async def check(
        request: Request, cred: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)]
    ) -> None:
        keys: KeyRing = request.app.state.keys
        if not keys.enabled:
            return
        challenge = {"WWW-Authenticate": "Bearer"}
        if cred is None:
            raise APIError(
                401, "unauthorized", "send an API key: Authorization: Bearer <key>", challenge
            )
        roles = await asyncio.to_thread(keys.roles, cred.credentials)
        if not roles:
            raise APIError(401, "unauthorized", "this API key is not known", challenge)
        if not allowed(roles, permission):
            raise APIError(
                403,
                "forbidden",
                f"a key of role {', '.join(sorted(roles))} may not {permission.replace('_', ' ')}",
            )

    return Depends(check)


# --- the upload size limit, enforced while the body streams in ------------------------------


class BodyLimit:
    """Refuse a POST body over `limit` bytes as it arrives: 413 before it is all read."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry."""
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        too_large = APIError(
            413, "upload_too_large", f"the upload is larger than {self.limit} bytes"
        )
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await _send_error(send, too_large)
            return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return message

        async def tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracking)
        except _TooLarge:
            if not started:
                await _send_error(send, too_large)


class _TooLarge(Exception):
    pass


async def _send_error(send: Send, err: APIError) -> None:
    body = JSONResponse(err.body(), err.status).body
    await send(
        {
            "type": "http.response.start",
            "status": err.status,
            "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": body})


# --- the service ----------------------------------------------------------------------------


class Service:
    """What the app holds while it runs: store, metrics and, in embedded mode, the worker.

    Embedded (store sqlite): accepted frames go on an in-process queue that `workers`
    tasks drain through the Processor. Scaled out (store redis): the store puts each frame
    on the Redis stream that scrapscan-worker processes read; this process only follows
    the feed stream to wake long-polls and ?wait=true requests.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.redis: RedisStore | None = None
        self.store: Store
        if settings.store == "redis":
            self.redis = RedisStore(
                settings.redis_url.get_secret_value(), settings.result_ttl_s, settings.report_ttl_s
            )
            self.store = self.redis
            self.processor: Processor | None = None
        else:
            self.store = SQLiteStore(settings.data_dir)
            self.processor = Processor(settings, self.store, self.metrics)
        group = self.redis.group_info if self.redis is not None else None
        self.metrics.watch(LiveCollector("queue", lambda: queue_gauges(self.store.backlog, group)))
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self.done: dict[str, asyncio.Event] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self.finished = asyncio.Condition()
        """Notified each time a frame ends (done or failed): wakes feed long-polls."""

    async def start(self) -> None:
        """Start the worker tasks (embedded) or the feed follower (redis).

        Embedded: load the engine, queue the unfinished frames, start the workers. Redis:
        follow the feed stream (Redis may still be away; /readyz says so).
        """
        if self.processor is not None:
            await self.processor.start()
            for frame_id in self.store.unfinished():
                self.queue.put_nowait(frame_id)
            self.tasks = [
                asyncio.create_task(self._work(), name=f"worker-{i}")
                for i in range(self.settings.workers)
            ]
            self.tasks.append(asyncio.create_task(self._purge(), name="retention"))
        else:
            self.tasks = [asyncio.create_task(self._follow(), name="feed-follower")]

    async def stop(self) -> None:
        """Stop the tasks and the engine (unfinished frames stay queued in the store)."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.processor is not None:
            await self.processor.stop()
        self.store.close()

    async def ready(self) -> None:
        """Raise APIError 503 unless frames can be taken and processed."""
        if self.processor is not None and not self.processor.ready:
            raise APIError(503, "not_ready", "the model is loading")
        if self.redis is not None:
            await asyncio.to_thread(self.redis.ping)  # 503 store_unavailable when away

    def accept(self, frame_id: str, camera_id: str, wait: bool) -> None:
        """A frame was stored: queue it (embedded) and note who waits for it."""
        self.metrics.frames.labels("accepted", camera_id).inc()
        if wait:
            self.done[frame_id] = asyncio.Event()
        if self.processor is not None:
            self.queue.put_nowait(frame_id)

    async def ended(self, frame_ids: list[str]) -> None:
        """Wake the feed's long-polls and the requests waiting for these frames."""
        async with self.finished:
            self.finished.notify_all()
        for frame_id in frame_ids:
            event = self.done.pop(frame_id, None)
            if event is not None:
                event.set()

    async def _work(self) -> None:
        assert self.processor is not None
        while True:
            frame_id = await self.queue.get()
            try:
                await self.processor.run(frame_id)
            except FrameFailed as err:  # embedded: one attempt, the frame fails
                await self.processor.fail(frame_id, str(err))
            except Exception:
                log.exception("frame %s: the store failed", frame_id)
            finally:
                self.queue.task_done()
                await self.ended([frame_id])

    async def _purge(self) -> None:
        """Embedded: apply the retention at start and then every hour (Redis expires keys)."""
        assert isinstance(self.store, SQLiteStore)
        s = self.settings
        while True:
            try:
                n = await asyncio.to_thread(self.store.purge, s.result_ttl_s, s.report_ttl_s)
                if n:
                    log.info("retention: %d frames purged", n)
            except Exception:
                log.exception("retention failed; trying again in an hour")
            await asyncio.sleep(min(3600, s.result_ttl_s / 4))

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
                await self.ended(frame_ids)


async def _feed_page(
    svc: Service, after: str, limit: int, camera_id: str | None, wait: float
) -> tuple[list[dict[str, Any]], str]:
    """Up to `limit` finished frames after `after`; waits up to `wait` s for the first one."""
    deadline = asyncio.get_running_loop().time() + wait
    while True:
        async with svc.finished:
            try:
                page = await asyncio.to_thread(svc.store.feed, after, limit, camera_id)
            except ValueError:
                raise APIError(
                    400, "invalid_cursor", "a cursor is the `next` value of an earlier page"
                ) from None
            after = page.next  # frames of other cameras looked at are not looked at again
            remaining = deadline - asyncio.get_running_loop().time()
            if page.items or remaining <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(svc.finished.wait(), remaining)
    items = []
    for seq, r in page.items:
        res = r.result or {}
        items.append(
            {
                "cursor": seq,
                "frame_id": r.frame_id,
                "camera_id": r.camera_id,
                "truck_id": r.truck_id,
                "captured_at": r.captured_at,
                "status": r.status,
                "error": r.error,
                "completed_at": r.completed_at,
                "verdict": res.get("verdict"),
                "scores": res.get("scores"),
                "instances": len(res.get("instances", [])),
                "links": frame_links(r.frame_id),
            }
        )
    return items, page.next


async def _wait_for(svc: Service, frame_id: str) -> FrameStatus | None:
    """The frame's status once it has ended, or None after settings.wait_timeout_s.

    Woken by the frame's event; looks at the store every second as well, so a frame that
    ended before the event was set (or on another API process) is not missed.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + svc.settings.wait_timeout_s
    event = svc.done.get(frame_id)
    while True:
        status = await asyncio.to_thread(_status, frame_id, svc)
        remaining = deadline - loop.time()
        if status.status in ("done", "failed"):
            return status
        if remaining <= 0:
            return None
        if event is None:
            await asyncio.sleep(min(1.0, remaining))
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), min(1.0, remaining))


def _when(value: str | None, name: str) -> float | None:
    if value is None:
        return None
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise APIError(400, "invalid_query", f"{name} must be ISO 8601") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.timestamp()


def _status(frame_id: str, svc: Service) -> FrameStatus:
    record = svc.store.get(frame_id)
    if record is None:
        raise APIError(404, "frame_not_found", f"no frame {frame_id}")
    return FrameStatus(
        frame_id=record.frame_id,
        camera_id=record.camera_id,
        truck_id=record.truck_id,
        captured_at=record.captured_at,
        status=record.status,
        error=record.error,
        result=record.result,
        links=frame_links(frame_id),
    )


def _field(form: Any, name: str, required: bool) -> str | None:
    value = form.get(name)
    if value is None or value == "":
        if required:
            raise APIError(400, "missing_field", f"the form field {name!r} is required")
        return None
    if not isinstance(value, str):
        raise APIError(400, "invalid_field", f"{name} must be a text field, not a file")
    return value


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app; its lifespan starts and stops the Service."""
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
            yield
        finally:
            await svc.stop()

    def metrics_of(_: FastAPI) -> Metrics:
        return svc.metrics

    app = FastAPI(
        title="scrapscan",
        version="0.1.0",
        summary="Finds motors, cables and spray cans in crane-camera frames of steel scrap.",
        lifespan=lifespan,
    )

    @app.exception_handler(APIError)
    async def api_error(_: Request, err: APIError) -> JSONResponse:
        return JSONResponse(err.body(), err.status, headers=err.headers)

    @app.exception_handler(redis.ConnectionError)
    @app.exception_handler(redis.TimeoutError)
    async def store_away(_: Request, err: redis.RedisError) -> JSONResponse:
        log.warning("redis unreachable: %s", err)
        e = APIError(
            503,
            "store_unavailable",
            "the frame store (Redis) cannot be reached; nothing was changed, retry later",
            headers={"Retry-After": str(s.queue.retry_after_s)},
        )
        return JSONResponse(e.body(), e.status, headers=e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        e = APIError(err.status_code, codes.get(err.status_code, "http_error"), str(err.detail))
        return JSONResponse(e.body(), e.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        where = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
        return JSONResponse(APIError(400, "invalid_request", where).body(), 400)

    def service(request: Request) -> Service:
        svc: Service = request.app.state.service
        return svc

    @app.post(
        "/v1/frames",
        status_code=202,
        response_model=FrameAccepted,
        responses={200: {"model": FrameStatus, "description": "with ?wait=true"}, **ERRORS},
        openapi_extra=FRAME_FORM,
        summary="Submit a crane-camera frame",
        dependencies=[require("submit")],
    )
    async def post_frame(
        request: Request,
        wait: bool = Query(False, description="answer 200 with the result when it is ready"),
    ) -> Response:
        """Store a JPEG or PNG frame and queue it.

        `Idempotency-Key`: a retry with the same key and bytes gets the first frame_id back;
        the same key with other bytes is a 409. With `?wait=true` the answer is 200 with the
        result once the frame is done (202 as usual if it takes longer than the wait limit).
        """
        svc = service(request)
        ctype = request.headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            raise APIError(415, "unsupported_media_type", "send multipart/form-data")
        backlog = await asyncio.to_thread(svc.store.backlog)
        if backlog >= s.queue.max_backlog:  # before reading the body: no work it cannot do
            svc.metrics.throttled.inc()
            raise APIError(
                429,
                "queue_full",
                f"{backlog} frames are waiting to be processed (the limit is "
                f"{s.queue.max_backlog}); retry later",
                headers={"Retry-After": str(s.queue.retry_after_s)},
            )
        key = request.headers.get("idempotency-key")
        if key is not None and not IDEMPOTENCY_KEY.match(key):
            raise APIError(400, "invalid_idempotency_key", "1 to 128 printable ASCII characters")
        try:
            form = await request.form(max_files=1, max_fields=8)
        except _TooLarge:
            raise
        except Exception as err:
            raise APIError(
                400, "invalid_form", f"the multipart body cannot be read: {err}"
            ) from None
        camera_id = _field(form, "camera_id", True)
        truck_id = _field(form, "truck_id", False)
        captured_at = _field(form, "captured_at", False)
        for name, value in (("camera_id", camera_id), ("truck_id", truck_id)):
            if value is not None and not ID.match(value):
                raise APIError(
                    400, "invalid_field", f"{name} must match {ID_PATTERN} (letters, digits, . _ -)"
                )
        if captured_at is not None:
            try:
                datetime.fromisoformat(captured_at)
            except ValueError:
                raise APIError(400, "invalid_field", "captured_at must be ISO 8601") from None
        upload = form.get("image")
        if upload is None:
            raise APIError(400, "missing_field", "the form field 'image' (a file) is required")
        if isinstance(upload, str):
            raise APIError(400, "invalid_field", "image must be a file part")
        data = await upload.read()
        header = read_header(data, s.max_pixels)
        digest = hashlib.sha256(data).hexdigest()
        ext = ".jpg" if FORMATS[header.format] == "image/jpeg" else ".png"
        assert camera_id is not None
        try:
            frame_id, created = await asyncio.to_thread(
                svc.store.add,
                uuid.uuid4().hex,
                camera_id,
                truck_id,
                captured_at,
                data,
                ext,
                digest,
                key,
            )
        except IdempotencyConflict:
            raise APIError(
                409, "idempotency_conflict", "this Idempotency-Key was used with other bytes"
            ) from None
        if created:
            svc.accept(frame_id, camera_id, wait)
        if wait:
            result = await _wait_for(svc, frame_id)
            if result is not None:
                return JSONResponse(result.model_dump(), 200)
        accepted = FrameAccepted(frame_id=frame_id, status="queued", links=frame_links(frame_id))
        return JSONResponse(
            accepted.model_dump(), 202, headers={"Location": f"/v1/frames/{frame_id}"}
        )

    def checked_id(frame_id: str) -> str:
        if not FRAME_ID.match(frame_id):
            raise APIError(400, "invalid_frame_id", "a frame id is 32 lowercase hex digits")
        return frame_id

    @app.get(
        "/v1/frames/{frame_id}",
        response_model=FrameStatus,
        responses=ERRORS,
        dependencies=[require("frames")],
    )
    async def get_frame(request: Request, frame_id: str) -> FrameStatus:
        """A frame's status (queued, processing, done, failed with the reason) and result."""
        return _status(checked_id(frame_id), service(request))

    async def result_file(request: Request, frame_id: str, name: str, media: str) -> Response:
        status = _status(checked_id(frame_id), service(request))
        data = await asyncio.to_thread(service(request).store.file_bytes, frame_id, name)
        if status.status != "done" or data is None:
            raise APIError(404, "result_not_ready", f"frame {frame_id} is {status.status}")
        return Response(data, media_type=media)

    @app.get(
        "/v1/frames/{frame_id}/mask.png",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}, **ERRORS},
        dependencies=[require("frames")],
    )
    async def get_mask(request: Request, frame_id: str) -> Response:
        """Class index per pixel at full frame size (0 normal, 1 motor, 2 cable, 3 spray_can)."""
        return await result_file(request, frame_id, "mask.png", "image/png")

    @app.get(
        "/v1/frames/{frame_id}/overlay.jpg",
        response_class=Response,
        responses={200: {"content": {"image/jpeg": {}}}, **ERRORS},
        dependencies=[require("frames")],
    )
    async def get_overlay(request: Request, frame_id: str) -> Response:
        """The frame with instances outlined and labelled with class and score."""
        return await result_file(request, frame_id, "overlay.jpg", "image/jpeg")

    @app.get("/v1/results", responses=ERRORS, dependencies=[require("feed")])
    async def results(
        request: Request,
        after: str | None = Query(None, description="the `next` of the previous page"),
        limit: int = Query(100, ge=1, le=1000),
        camera_id: str | None = Query(None, pattern=ID_PATTERN),
        wait: float = Query(0, ge=0, le=60, description="long-poll up to this many seconds"),
    ) -> dict[str, Any]:
        """Finished frames (done or failed) in completion order, for dashboards.

        Page with `after=<next>`: each finished frame appears exactly once, however many
        arrive while paging. With `wait`, an empty page waits for the next frame to finish.
        """
        items, last = await _feed_page(service(request), (after or ""), limit, camera_id, wait)
        return {"items": items, "next": last}

    @app.get(
        "/v1/results/stream",
        response_class=StreamingResponse,
        responses=ERRORS,
        dependencies=[require("feed")],
    )
    async def results_stream(
        request: Request,
        after: str | None = Query(None),
        camera_id: str | None = Query(None, pattern=ID_PATTERN),
    ) -> StreamingResponse:
        """The same feed as server-sent events (`id:` is the cursor; Last-Event-ID resumes)."""
        svc = service(request)
        start = request.headers.get("last-event-id") or after or ""

        async def events() -> AsyncIterator[str]:
            cursor = start
            while not await request.is_disconnected():
                items, cursor = await _feed_page(svc, cursor, 100, camera_id, 15)
                if not items:
                    yield ": keep-alive\n\n"
                for item in items:
                    yield f"id: {item['cursor']}\nevent: result\ndata: {json.dumps(item)}\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    def csv_or_json(data: dict[str, Any] | list[Any], text: str, fmt: str) -> Response:
        if fmt == "csv":
            return PlainTextResponse(text, media_type="text/csv; charset=utf-8")
        return JSONResponse(data)

    @app.get("/v1/trucks/{truck_id}/report", responses=ERRORS, dependencies=[require("reports")])
    async def truck(
        request: Request, truck_id: str, format: str = Query("json", pattern="^(json|csv)$")
    ) -> Response:
        """Every frame of a truck aggregated.

        Per class: highest score, frames, distinct instances, contaminated area; the
        verdict (clean, inspect, reject); the evidence frames, strongest first.
        """
        if not ID.match(truck_id):
            raise APIError(400, "invalid_truck_id", f"a truck_id matches {ID_PATTERN}")
        svc = service(request)
        frames = await asyncio.to_thread(svc.store.truck, truck_id)
        if not frames:
            raise APIError(404, "truck_not_found", f"no frame of truck {truck_id}")
        report = truck_report(truck_id, frames)
        return csv_or_json(report, report_csv(report), format)

    @app.get("/v1/trucks", responses=ERRORS, dependencies=[require("reports")])
    async def trucks(
        request: Request,
        since: str | None = Query(None, description="ISO 8601; frames received from then"),
        until: str | None = Query(None, description="ISO 8601; frames received before then"),
        verdict: str | None = Query(None, pattern="^(clean|inspect|reject)$"),
        format: str = Query("json", pattern="^(json|csv)$"),
    ) -> Response:
        """Trucks seen in a time range, most recent first, with their verdicts."""
        svc = service(request)
        ids = await asyncio.to_thread(
            svc.store.trucks, _when(since, "since"), _when(until, "until")
        )
        reports = []
        every = await asyncio.to_thread(svc.store.trucks_frames, ids)
        for truck_id in ids:
            frames = every[truck_id]
            if not frames:  # its frames have expired
                continue
            r = truck_report(truck_id, frames)
            if verdict is None or r["verdict"] == verdict:
                reports.append(r)
        summary = [{k: v for k, v in r.items() if k != "evidence"} for r in reports]
        return csv_or_json({"trucks": summary}, trucks_csv(reports), format)

    @app.get("/v1/config", responses=ERRORS, dependencies=[require("config")])
    async def get_config(request: Request) -> dict[str, Any]:
        """The settings the service started with (secrets masked)."""
        return service(request).settings.public()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"model": ErrorResponse}})
    async def readyz(request: Request) -> dict[str, str]:
        """Ready for frames.

        Embedded: the bundle is loaded and the engine warmed with one batch. With store
        redis: Redis answers (each scrapscan-worker has its own /readyz).
        """
        await service(request).ready()
        return {"status": "ready"}

    @app.get("/metrics", response_class=Response)
    async def metrics(request: Request) -> Response:
        """Prometheus metrics."""
        m = service(request).metrics
        return Response(m.exposition(), media_type=m.content_type)

    app.add_middleware(BodyLimit, limit=s.max_upload_bytes)
    if s.cors_origins:  # closed unless origins are listed
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(s.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Location", "Retry-After"],
        )
    app.add_middleware(HTTPMetrics, metrics=metrics_of(app))
    app.add_middleware(RequestId)
    return app
