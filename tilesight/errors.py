"""The errors a user can cause or meet, raised by library code and mapped to HTTP once.

Library functions raise these instead of returning None, so the API (`api/errors.py`)
turns each into a status code with a JSON body, and the CLI prints the same message.
"""

from __future__ import annotations

from typing import Any


class TilesightError(Exception):
    """Base class: `message` says what went wrong and, where possible, what to change;
    `headers` go out with the HTTP response (a 404 can say where the data starts)."""

    status_code = 500

    def __init__(
        self, message: str, *, headers: dict[str, str] | None = None, **detail: Any
    ) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.headers = dict(headers or {})


class NotFound(TilesightError):
    status_code = 404


class InvalidInput(TilesightError):
    status_code = 400


class Unprocessable(TilesightError):
    status_code = 422


class Conflict(TilesightError):
    status_code = 409


class TooLarge(TilesightError):
    status_code = 413


class Forbidden(TilesightError):
    status_code = 403


class Unauthorized(TilesightError):
    status_code = 401


class UpstreamError(TilesightError):
    """A remote server (imagery URL, XYZ template) failed or answered garbage."""

    status_code = 502


class Unavailable(TilesightError):
    """A dependency (Triton, the database) is down or loading; retry after a while."""

    status_code = 503

    def __init__(self, message: str, retry_after: int = 1, **detail: Any) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)}, **detail)
        self.retry_after = retry_after
