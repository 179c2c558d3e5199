"""One table from library errors to HTTP responses, installed once on the app."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.middleware import BodyTooLarge
from tilesight.errors import TilesightError

log = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    """Every error a client can cause: a sentence saying what to change, and details."""

    error: str
    detail: dict[str, object] | None = None


_ERRORS = {
    400: "invalid input: the message says what to change",
    401: "an API key is needed or the one sent is not valid",
    403: "the API key lacks the scope this needs",
    404: "no such resource, or outside the data",
    409: "conflicts with the current state",
    413: "too large: the message gives the limit",
    422: "the request does not validate: the message names the field",
    429: "rate limited: retry after the Retry-After seconds",
    502: "a remote server failed",
    503: "a dependency is unavailable: retry after the Retry-After seconds",
}
COMMON_RESPONSES: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorBody, "description": text} for code, text in _ERRORS.items()
}


def _body(message: str, **detail: object) -> dict[str, object]:
    return {"error": message, **({"detail": detail} if detail else {})}


async def tilesight_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TilesightError)
    headers = exc.headers
    if exc.status_code >= 500 and exc.status_code not in (502, 503):
        log.error("unhandled library error", exc_info=exc)
    return JSONResponse(_body(exc.message, **exc.detail), exc.status_code, headers=headers)


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()
    ]
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    where = ".".join(str(p) for p in first["loc"])
    return JSONResponse(
        {"error": f"invalid request: {where}: {first['msg']}", "detail": {"errors": errors}}, 422
    )


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    message = exc.detail if isinstance(exc.detail, str) else "request failed"
    return JSONResponse(_body(message), exc.status_code, headers=exc.headers)


async def unhandled_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(_body("internal error; it has been logged"), 500)


async def body_too_large(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, BodyTooLarge)
    return JSONResponse(_body(str(exc), limit=exc.limit), 413)


async def data_error(request: Request, exc: Exception) -> JSONResponse:
    """PostgreSQL refused a value the validation let through (a NUL byte, an overflow)."""
    reason = str(getattr(exc, "orig", exc)).splitlines()[0]
    return JSONResponse(_body(f"a value in the request cannot be stored: {reason}"), 400)


def install(app: FastAPI) -> None:
    app.add_exception_handler(DataError, data_error)
    app.add_exception_handler(BodyTooLarge, body_too_large)
    app.add_exception_handler(TilesightError, tilesight_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unhandled_error)
