"""The one table from the service's errors to HTTP answers, and the handlers that apply it.

Every 4xx and 5xx answer is JSON: {"error": {"code": "...", "message": "..."}}.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.errors import (
    Busy,
    Conflict,
    InvalidInput,
    NotAllowed,
    NotAuthenticated,
    NotFound,
    ServiceError,
    TooLarge,
    Unavailable,
    UnsupportedMedia,
)
from service.objects import ObjectStoreError

log = logging.getLogger("scrapscan.service")

_NO_MODEL = ("no such model version", "no model repository", "no such class defined by text")
_CONFLICTS = (
    "Idempotency-Key reused with other bytes",
    "feedback on a frame not done or past retention",
    "a model version that cannot be served (bundle_refused)",
    "no earlier one to roll back to",
    "the served version put in shadow (shadow_is_served)",
    "a region to describe on a frame not done",
    "a bundle without a region encoder",
    "an upload no longer kept",
    "a class name already registered or learned (class_exists)",
    "more classes defined by text than allowed (too_many_classes)",
    "a class defined by text for a bundle without a text tower (no_text_tower)",
)
_AWAY = (
    "not_ready: the model is loading",
    "store_unavailable: Redis is away",
    "object_store_unavailable: the bucket is away",
    "describe_timeout: no worker answered",
)


def _reasons(*reasons: str) -> str:
    return "; ".join(reasons)


STATUS: dict[type[ServiceError], tuple[int, str]] = {
    InvalidInput: (400, "bad request: a missing or invalid field, query or header, not an image"),
    NotAuthenticated: (401, "unauthorized: no API key, or a key this service does not know"),
    NotAllowed: (403, "forbidden: the key's role may not use this route"),
    NotFound: (404, _reasons("no such frame or truck", "its result is not ready", *_NO_MODEL)),
    Conflict: (409, _reasons(*_CONFLICTS)),
    TooLarge: (413, "upload or image too large"),
    UnsupportedMedia: (415, "not multipart/form-data"),
    Busy: (429, "queue_full: too many frames wait; retry after Retry-After seconds"),
    Unavailable: (503, _reasons(*_AWAY)),
}
"""Each kind of error: its HTTP status and what that status means here (the OpenAPI text)."""


class ErrorBody(BaseModel):
    """An error's code (stable, for programs) and message (for people)."""

    code: str = Field(examples=["image_too_large"])
    message: str = Field(examples=["the image is 9000x9000 = 81000000 pixels; the limit is ..."])


class ErrorResponse(BaseModel):
    """Every 4xx and 5xx answer."""

    error: ErrorBody


def status_of(err: ServiceError) -> int:
    """The HTTP status of an error: its nearest class in STATUS (500 if none)."""
    for cls in type(err).__mro__:
        if cls in STATUS:
            return STATUS[cls][0]
    return 500


def error_response(err: ServiceError, status: int | None = None) -> JSONResponse:
    """The JSON answer for an error, with Retry-After and WWW-Authenticate where they apply."""
    headers = {}
    if err.retry_after is not None:
        headers["Retry-After"] = str(err.retry_after)
    if isinstance(err, NotAuthenticated):
        headers["WWW-Authenticate"] = "Bearer"
    body = {"error": {"code": err.code, "message": err.message}}
    return JSONResponse(body, status or status_of(err), headers=headers)


LIST = (InvalidInput, NotAuthenticated, NotAllowed, Unavailable)
"""The errors of a route that reads a list or a period (feed, trucks, export)."""
ONE = (*LIST, NotFound)
"""The errors of a route about one frame or truck."""
CHANGE = (*ONE, Conflict)
"""The errors of a route that records something about one frame or truck."""


def responses(
    *kinds: type[ServiceError], content: dict[str, Any] | None = None, ok: str | None = None
) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` of a route that can answer with these kinds of error.

    `content` names the media types of a 200 that is not (only) the response model's JSON
    (a file, CSV, an event stream), `ok` describes that 200.
    """
    out: dict[int | str, dict[str, Any]] = {
        STATUS[k][0]: {"model": ErrorResponse, "description": STATUS[k][1]} for k in kinds
    }
    if content is not None:
        out[200] = {"content": content, **({"description": ok} if ok else {})}
    return out


def document(app: FastAPI) -> None:
    """Make the OpenAPI document say what the service answers to invalid input.

    That is its 400 `invalid_request` (in each route's responses), not FastAPI's 422, which
    it never sends.
    """

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            for operations in schema["paths"].values():
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]


AWAY: dict[type[Exception], tuple[str, str]] = {
    redis.RedisError: ("store_unavailable", "frame store (Redis)"),
    ObjectStoreError: ("object_store_unavailable", "object store (S3)"),
}
"""The stores the service needs: the 503's code, and the store's name in its message."""


def install(app: FastAPI, retry_after_s: int) -> None:
    """Answer every error as the table says, the framework's own ones included."""

    @app.exception_handler(ServiceError)
    async def service_error(_: Request, err: ServiceError) -> JSONResponse:
        return error_response(err)

    @app.exception_handler(redis.ConnectionError)
    @app.exception_handler(redis.TimeoutError)
    @app.exception_handler(ObjectStoreError)
    async def backend_away(_: Request, err: Exception) -> JSONResponse:
        code, what = AWAY[type(err) if type(err) in AWAY else redis.RedisError]
        log.warning("%s: %s", code, err)
        message = f"the {what} cannot be reached; nothing was changed, retry later"
        return error_response(Unavailable(code, message, retry_after_s))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        code = codes.get(err.status_code, "http_error")
        body = {"error": {"code": code, "message": str(err.detail)}}
        return JSONResponse(body, err.status_code, headers=err.headers)  # 405 keeps Allow

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        where = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
        return error_response(InvalidInput("invalid_request", where))
