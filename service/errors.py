"""Errors the API answers with: `{"error": {"code": "...", "message": "..."}}` and a 4xx/5xx."""

from __future__ import annotations


class APIError(Exception):
    """An error with an HTTP status, a stable machine-readable code and a human message."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, dict[str, str]]:
        """The JSON body."""
        return {"error": {"code": self.code, "message": self.message}}


class BadImage(APIError):
    """The upload is not an image the service can use (400 or 413)."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(status, code, message)
