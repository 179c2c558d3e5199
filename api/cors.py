"""What browsers and GIS clients on other origins need: CORS, HEAD, Range, Allow, gzip.

Map clients (MapLibre, OpenLayers) on another origin read tiles and TileJSON with
`fetch`, so every read-only GET route answers any origin; routes that change state only
answer the origins named in `TILESIGHT_CORS_ORIGINS`, so a page elsewhere cannot submit
jobs with a visitor's key. GDAL's `/vsicurl/` asks HEAD for a size and then byte ranges,
which FastAPI routes do not answer by themselves. All of it lives here, as pure ASGI
middleware (streamed responses stay streamed), installed once by `install`.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from fastapi import FastAPI
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.gzip import GZipResponder
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.middleware import send_error
from tilesight.settings import Settings

# GET routes any origin may read: tiles, TileJSON, predictions, MVT, GeoJSON and other
# job exports, the source and model lists.
PUBLIC_READS = re.compile(
    r"^/(tiles|predictions|buildings)(/.*)?$"
    r"|^/(sources|models)/?$"
    r"|^/jobs/[^/]+/buildings\.[a-z]+$"
)
SAFE_METHODS = ("GET", "HEAD")
ALLOWED_HEADERS = "Authorization, X-API-Key, Content-Type, If-None-Match, Range, X-Request-Id"
EXPOSED_HEADERS = (
    "ETag, Content-Length, Content-Range, Accept-Ranges, Location, Retry-After, "
    "X-Request-Id, X-Model-Version, X-Predictions-Minzoom"
)
PREFLIGHT_MAX_AGE = "600"
# Responses buffered to answer a Range request; larger ones are sent whole (200).
MAX_RANGE_BODY = 64 * 1024 * 1024
GZIP_TYPES = ("application/json", "application/geo+json")


class Cors:
    """CORS by route: reads for any origin, writes for the listed origins only."""

    def __init__(self, app: ASGIApp, origins: list[str]) -> None:
        self.app = app
        self.origins = {o.rstrip("/") for o in origins}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if not origin or _same_origin(origin, headers.get("host", "")):
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        preflight = method == "OPTIONS" and "access-control-request-method" in headers
        asked = headers["access-control-request-method"].upper() if preflight else method
        listed = "*" in self.origins or origin.rstrip("/") in self.origins
        allowed = listed or (asked in SAFE_METHODS and bool(PUBLIC_READS.match(scope["path"])))
        if preflight:
            await self._preflight(send, origin, asked, scope["path"], allowed, listed)
            return
        if not allowed and method not in SAFE_METHODS + ("OPTIONS",):
            # a "simple" cross-origin POST needs no preflight: refuse it before it acts
            await _refuse(send, origin, method, scope["path"])
            return
        if not allowed:
            await self.app(scope, receive, send)  # a read the browser will not hand over
            return
        allow_origin = origin if listed else "*"

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                out = MutableHeaders(scope=message)
                out["Access-Control-Allow-Origin"] = allow_origin
                out["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
                if listed:
                    out.add_vary_header("Origin")
            await send(message)

        await self.app(scope, receive, send_with_cors)

    async def _preflight(
        self, send: Send, origin: str, method: str, path: str, allowed: bool, listed: bool
    ) -> None:
        if not allowed:
            await _refuse(send, origin, method, path)
            return
        methods = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS" if listed else "GET, HEAD"
        headers = [
            (b"access-control-allow-origin", (origin if listed else "*").encode()),
            (b"access-control-allow-methods", methods.encode()),
            (b"access-control-allow-headers", ALLOWED_HEADERS.encode()),
            (b"access-control-expose-headers", EXPOSED_HEADERS.encode()),
            (b"access-control-max-age", PREFLIGHT_MAX_AGE.encode()),
            (b"vary", b"Origin"),
            (b"content-length", b"0"),
        ]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})


def _same_origin(origin: str, host: str) -> bool:
    """The viewer's own requests carry Origin too (on POST); they are not cross-origin."""
    return bool(host) and urlsplit(origin).netloc.lower() == host.lower()


async def _refuse(send: Send, origin: str, method: str, path: str) -> None:
    await send_error(
        send,
        403,
        f"{method} {path} is not open to pages on {origin}; list the origin "
        "in TILESIGHT_CORS_ORIGINS to allow it",
        {"origin": origin, "method": method, "open_to_any_origin": "GET, HEAD"},
    )


class HeadAndRanges:
    """HEAD answered by every GET route, byte ranges on bodies, and `Allow` on a 405.

    HEAD runs the GET and drops the body, counting it for Content-Length (a streamed
    GeoJSON has none otherwise), so the headers are the GET's. A single `bytes=a-b`
    range buffers the body (up to MAX_RANGE_BODY) and answers 206 with its slice.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        if method == "HEAD":
            # identity bytes: a HEAD's Content-Length is what a byte range counts in
            plain = [(k, v) for k, v in scope["headers"] if k != b"accept-encoding"]
            get = {**scope, "method": "GET", "headers": plain}
            await self.app(get, receive, _allow_on_405(scope, _head_sender(send)))
            return
        reply = send
        if method == "GET" and "range" in Headers(scope=scope):
            reply = _range_sender(send, Headers(scope=scope)["range"])
        await self.app(scope, receive, _allow_on_405(scope, reply))


def _head_sender(send: Send) -> Send:
    start: Message | None = None
    size = 0

    async def sender(message: Message) -> None:
        nonlocal start, size
        if message["type"] == "http.response.start":
            start = message
            if "text/event-stream" in Headers(scope=message).get("content-type", ""):
                # a stream may never end: headers now and the response closed, so the
                # connection serves the next request (the server then tells the stream
                # the client is gone, and it stops)
                await send(start)
                await send({"type": "http.response.body", "body": b""})
                start = None
            return
        if message["type"] != "http.response.body" or start is None:
            return
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            out = MutableHeaders(scope=start)
            if "content-length" not in out:
                out["Content-Length"] = str(size)
            await send(start)
            await send({"type": "http.response.body", "body": b""})
            start = None

    return sender


RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def _range_sender(send: Send, header: str) -> Send:
    match = RANGE.match(header.strip())
    start: Message | None = None
    chunks: list[bytes] = []
    size = 0

    async def sender(message: Message) -> None:
        nonlocal start, size
        if message["type"] == "http.response.start":
            if message["status"] != 200 or match is None:
                await send(message)  # errors and multi-range requests: sent as they are
                return
            start = message
            return
        if start is None:
            await send(message)
            return
        body = message.get("body", b"")
        size += len(body)
        chunks.append(body)
        if size > MAX_RANGE_BODY:  # too big to slice: send it whole, as a 200
            await send(start)
            await send({"type": "http.response.body", "body": b"".join(chunks), "more_body": True})
            chunks.clear()
            start = None
            return
        if not message.get("more_body", False) and match is not None:  # start implies match
            await _send_slice(send, start, b"".join(chunks), match)
            start = None

    return sender


async def _send_slice(send: Send, start: Message, data: bytes, match: re.Match[str]) -> None:
    first, last = match.group(1), match.group(2)
    total = len(data)
    if first:
        lo, hi = int(first), min(int(last) if last else total - 1, total - 1)
    else:  # a suffix: the last N bytes
        lo, hi = max(total - int(last or 0), 0), total - 1
    headers = MutableHeaders(scope=start)
    if lo > hi or lo >= total:
        await send_error(
            send,
            416,
            f"the range {first}-{last} is outside the {total} bytes of this resource",
            {"size": total},
            [(b"content-range", f"bytes */{total}".encode())],
        )
        return
    headers["Content-Range"] = f"bytes {lo}-{hi}/{total}"
    headers["Content-Length"] = str(hi - lo + 1)
    headers["Accept-Ranges"] = "bytes"
    await send({**start, "status": 206})
    await send({"type": "http.response.body", "body": data[lo : hi + 1]})


def _allow_on_405(scope: Scope, send: Send) -> Send:
    async def sender(message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] == 405:
            MutableHeaders(scope=message)["Allow"] = ", ".join(allowed_methods(scope))
        await send(message)

    return sender


def allowed_methods(scope: Scope) -> list[str]:
    """Every method some route takes at this path (Starlette names only the first's)."""
    methods: set[str] = set()
    for pattern, verbs in _route_table(scope.get("app")):
        if pattern.match(scope["path"]):
            methods |= verbs
    if not methods:
        methods = {"GET"}  # the viewer's static files
    if "GET" in methods:
        methods.add("HEAD")
    methods.add("OPTIONS")
    return sorted(methods)


def _route_table(app: object) -> list[tuple[re.Pattern[str], set[str]]]:
    """Path patterns and methods from the app's OpenAPI paths, built once per app."""
    state = getattr(app, "state", None)
    table = getattr(state, "allow_table", None)
    if table is None:
        paths = app.openapi()["paths"] if isinstance(app, FastAPI) else {}
        table = [(compile_path(path)[0], {m.upper() for m in item}) for path, item in paths.items()]
        if state is not None:
            state.allow_table = table
    return table


class JsonGzip:
    """Gzip JSON and GeoJSON bodies for clients that accept it; tiles go as they are."""

    def __init__(self, app: ASGIApp, minimum_size: int = 1000) -> None:
        self.app = app
        self.minimum_size = minimum_size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope) if scope["type"] == "http" else Headers()
        if (
            scope["type"] != "http"
            or "gzip" not in headers.get("accept-encoding", "")
            or "range" in headers  # ranges are of the identity bytes
        ):
            await self.app(scope, receive, send)
            return
        gzip = GZipResponder(self.app, self.minimum_size, compresslevel=6)
        gzip.send = send
        compress = False

        async def sender(message: Message) -> None:
            nonlocal compress
            if message["type"] == "http.response.start":
                kind = Headers(scope=message).get("content-type", "")
                compress = kind.startswith(GZIP_TYPES)
            await (gzip.send_with_compression(message) if compress else send(message))

        await self.app(scope, receive, sender)


def install(app: FastAPI, settings: Settings) -> None:
    """Add the middleware, outermost last: CORS sees every answer, errors included."""
    app.add_middleware(JsonGzip)
    app.add_middleware(HeadAndRanges)
    app.add_middleware(Cors, origins=settings.cors_origins)
