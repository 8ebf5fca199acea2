"""What can go wrong, as the service's own exceptions (no HTTP here).

Each error has a stable code for programs and a message for people. Its class says what
kind of failure it is; the API layer (service/routes/errors.py) maps each class to an
HTTP status in one table, and a worker reads the same classes (a bad image fails a frame
at once, anything else may be retried).
"""

from __future__ import annotations


class ServiceError(Exception):
    """A failure the caller can act on: `code` (stable) and `message` (for people).

    `retry_after`: seconds after which trying again may succeed (busy, store away).
    """

    def __init__(self, code: str, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after


class InvalidInput(ServiceError):
    """A field, query or header the service cannot use."""


class BadImage(InvalidInput):
    """The upload is not an image the service can use (empty, not JPEG or PNG, corrupt)."""


class NotAuthenticated(ServiceError):
    """No API key, or one the service does not know."""


class NotAllowed(ServiceError):
    """The caller's role may not do this."""


class NotFound(ServiceError):
    """No such frame or truck, or the result is not there (yet, or any more)."""


class Conflict(ServiceError):
    """The request contradicts an earlier one (an Idempotency-Key reused with other bytes)."""


class TooLarge(ServiceError):
    """The upload is over the byte limit."""


class ImageTooLarge(TooLarge, BadImage):
    """The image declares more pixels than the service accepts."""


class UnsupportedMedia(ServiceError):
    """The body is not multipart/form-data."""


class Busy(ServiceError):
    """Too much work is waiting; try again after `retry_after` seconds."""


class Unavailable(ServiceError):
    """The service cannot take work now: the model is loading, or the store is away."""
