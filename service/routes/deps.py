"""What routes share: the running Service, the caller's permission, the upload size limit."""

from __future__ import annotations

import asyncio
import functools
import re
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, Query, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.auth import KeyRing, Permission, allowed
from service.errors import InvalidInput, NotAllowed, NotAuthenticated, TooLarge
from service.routes.errors import error_response
from service.runtime import Service

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d(\.\d+)?([Zz]|[+-]\d\d:\d\d)$", re.ASCII)
TIME_SCHEMA = {"format": "date-time"}
"""How a time is declared in the document: RFC 3339, with its offset from UTC."""


def parse_time(value: str, name: str, code: str = "invalid_field") -> datetime:
    """An RFC 3339 time (2026-11-24T06:31:07Z); InvalidInput naming the field if not one."""
    try:
        if RFC3339.match(value):
            return datetime.fromisoformat(value.upper())
    except ValueError:  # the form is right, the date is not (February 30)
        pass
    raise InvalidInput(code, f"{name} must be an RFC 3339 time like 2026-11-24T06:31:07Z")


Since = Annotated[
    str | None, Query(description="from this time on (RFC 3339)", json_schema_extra=TIME_SCHEMA)
]
Until = Annotated[
    str | None, Query(description="before this time (RFC 3339)", json_schema_extra=TIME_SCHEMA)
]


def epoch(value: str | None, name: str) -> float | None:
    """A query's RFC 3339 time in seconds since the epoch (None stays None)."""
    return None if value is None else parse_time(value, name, "invalid_query").timestamp()


def _service(request: Request) -> Service:
    svc: Service = request.app.state.service
    return svc


ServiceDep = Annotated[Service, Depends(_service)]
"""The running Service (app.state.service), for a route's parameters."""

BEARER = HTTPBearer(auto_error=False, description="an API key: Authorization: Bearer <key>")


ANONYMOUS = "anonymous"
"""Who a caller is when the service runs without keys."""


@functools.cache
def require(permission: Permission) -> Any:
    """A route dependency: NotAuthenticated without a known key, NotAllowed for its role.

    Its value is who the caller is: the roles of the key that grant the permission
    (`Annotated[str, require(...)]` in a route's parameters), ANONYMOUS without keys.
    One dependency per permission, so that a router's and a parameter's check of the
    same permission run once per request.
    """

    async def check(
        request: Request, cred: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)]
    ) -> str:
        keys: KeyRing = request.app.state.keys
        if not keys.enabled:
            return ANONYMOUS
        if cred is None:
            raise NotAuthenticated("unauthorized", "send an API key: Authorization: Bearer <key>")
        roles = await asyncio.to_thread(keys.roles, cred.credentials)
        if not roles:
            raise NotAuthenticated("unauthorized", "this API key is not known")
        if not allowed(roles, permission):
            raise NotAllowed(
                "forbidden",
                f"a key of role {', '.join(sorted(roles))} may not {permission.replace('_', ' ')}",
            )
        return ",".join(sorted(r for r in roles if allowed(frozenset({r}), permission)))

    return Depends(check)


Admin = Annotated[str, require("config")]
"""Who changes the service's configuration: the caller's key (it must hold the admin role)."""


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
        too_large = TooLarge("upload_too_large", f"the upload is larger than {self.limit} bytes")
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
                    raise BodyTooLarge
            return message

        async def tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracking)
        except BodyTooLarge:
            if not started:
                await _send_error(send, too_large)


class BodyTooLarge(Exception):
    """Raised inside a request whose body passed the limit (BodyLimit answers 413)."""


async def _send_error(send: Send, err: TooLarge) -> None:
    answer = error_response(err)
    await send(
        {
            "type": "http.response.start",
            "status": answer.status_code,
            "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": answer.body})
