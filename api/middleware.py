"""Request ids, body size limits, metrics and one structured log line per request."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tilesight.logs import request_id
from tilesight.telemetry import LATENCY, REQUESTS

log = logging.getLogger("tilesight.access")

# routes with their own, larger, streamed limit
UNLIMITED_BODY_PATHS = ("/sources/upload",)


class RequestContext:
    """Pure ASGI middleware (no BaseHTTPMiddleware) so streaming responses stay streamed."""

    def __init__(self, app: ASGIApp, max_body_bytes: int = 2 * 1024 * 1024) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        rid = headers.get(b"x-request-id", b"").decode("latin-1")[:64] or uuid.uuid4().hex
        token = request_id.set(rid)
        start = time.perf_counter()
        status = 500
        # a body cut off at the limit: FastAPI turns the error inside receive() into a
        # 400 "error parsing the body", so whatever the app answers becomes our 413
        cut = {"over": False, "sent": False, "ours": False}

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if cut["over"] and not cut["ours"]:
                if message["type"] == "http.response.start" and not cut["sent"]:
                    cut["sent"] = cut["ours"] = True
                    await _too_large(send_with_id, self.max_body_bytes)
                    cut["ours"] = False
                return
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            if self._too_large(scope, headers):
                await _too_large(send_with_id, self.max_body_bytes)
            else:
                await self.app(scope, self._limited(scope, receive, cut), send_with_id)
        finally:
            elapsed = time.perf_counter() - start
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            REQUESTS.labels(scope["method"], route, str(status)).inc()
            LATENCY.labels(scope["method"], route).observe(elapsed)
            log.info(
                "%s %s %s",
                scope["method"],
                scope["path"],
                status,
                extra={
                    "ctx_status": status,
                    "ctx_route": route,
                    "ctx_ms": round(elapsed * 1000, 1),
                },
            )
            request_id.reset(token)

    def _too_large(self, scope: Scope, headers: dict[bytes, bytes]) -> bool:
        if scope["path"].startswith(UNLIMITED_BODY_PATHS):
            return False
        length = headers.get(b"content-length")
        return length is not None and length.isdigit() and int(length) > self.max_body_bytes

    def _limited(self, scope: Scope, receive: Receive, cut: dict[str, bool]) -> Receive:
        """Counts a body sent without content-length and cuts it off at the limit."""
        if scope["path"].startswith(UNLIMITED_BODY_PATHS):
            return receive
        seen = 0
        limit = self.max_body_bytes

        async def wrapped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    cut["over"] = True
                    raise BodyTooLarge(limit)
            return message

        return wrapped


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"request body larger than {limit} bytes")
        self.limit = limit


async def _too_large(send: Send, limit: int) -> None:
    await send_error(
        send, 413, f"request body too large: the limit is {limit} bytes", {"limit": limit}
    )


async def send_error(
    send: Send,
    status: int,
    error: str,
    detail: dict[str, Any] | None = None,
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    """The API's JSON error body, sent straight from ASGI middleware: refusals made
    before the app runs (body limits, Host, CORS, ranges) look like every other error."""
    body = json.dumps({"error": error, "detail": detail or {}}).encode()
    start = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body})
