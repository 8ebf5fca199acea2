"""Structured logs with request ids.

Every HTTP request gets an id: the caller's `X-Request-ID` when it is a plain token, a new
one otherwise. It is sent back in the `X-Request-ID` response header and written into
every log line made while the request is handled (threads started with asyncio.to_thread
inherit it). Logs are JSON lines (python-json-logger) for the plant's log collector, or
plain text with --log-format text for a person at a terminal.
"""

from __future__ import annotations

import contextvars
import logging
import re
import uuid
from typing import Literal

from pythonjsonlogger.json import JsonFormatter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
FIELDS = "%(asctime)s %(levelname)s %(name)s %(request_id)s %(message)s"


class _WithRequestId(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        record.__dict__.pop("color_message", None)  # uvicorn's ANSI copy of the message
        return True


def configure_logging(level: str, fmt: Literal["json", "text"] = "json") -> None:
    """Root logging for a service process (uvicorn's loggers propagate to it)."""
    handler = logging.StreamHandler()
    handler.addFilter(_WithRequestId())
    if fmt == "json":
        handler.setFormatter(JsonFormatter(FIELDS, rename_fields={"levelname": "level"}))
    else:
        handler.setFormatter(logging.Formatter(FIELDS))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


class RequestId:
    """ASGI middleware: set the request id for the request's logs and answer with it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        rid = given if REQUEST_ID.match(given) else uuid.uuid4().hex
        token = request_id.set(rid)

        async def with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, with_id)
        finally:
            request_id.reset(token)
