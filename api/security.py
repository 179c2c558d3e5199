"""Host check and security headers, as pure ASGI middleware (streams stay streamed).

The Host check answers only names this server goes by (`tilesight.exposure`), so a
page on attacker.example whose DNS is rebound to 127.0.0.1 cannot reach the API. The
headers keep browsers from sniffing JSON or tiles into HTML, from framing the viewer,
and from loading anything into it from outside this origin.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from api.middleware import send_error
from tilesight.exposure import allowed_hosts, check_exposure, host_name
from tilesight.settings import Settings

# The viewer loads only its own files (web/index.html, web/js, node_modules copies) and
# this API's tiles. Leaflet positions its panes with inline styles, and GeoJSON icons and
# the favicon are data: URIs, hence those two allowances.
VIEWER_CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data: blob:",
        "connect-src 'self'",
        "font-src 'self'",
        "worker-src 'self' blob:",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
# FastAPI's /docs and /redoc pages load Swagger UI / ReDoc from jsDelivr with an inline
# bootstrap script; they get a policy of their own so the rest stays 'self' only.
DOCS_CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net",
        "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com",
        "img-src 'self' data: https://fastapi.tiangolo.com https://cdn.redoc.ly",
        "font-src 'self' https://fonts.gstatic.com",
        "worker-src 'self' blob:",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ]
)
DOCS_PATHS = ("/docs", "/redoc")
HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


class SecurityHeaders:
    """Adds the headers above to every response and drops any `server` header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        csp = DOCS_CSP if scope["path"].startswith(DOCS_PATHS) else VIEWER_CSP
        extra = [*HEADERS, (b"content-security-policy", csp.encode())]
        names = {name for name, _ in extra} | {b"server"}

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                message["headers"] = [*kept, *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


class HostCheck:
    """Answers 400 with the project's JSON error to a Host header not in `allowed`."""

    def __init__(self, app: ASGIApp, allowed: list[str]) -> None:
        self.app = app
        self.any = "*" in allowed
        self.allowed = frozenset(allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.any:
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
        if host_name(header) in self.allowed:
            await self.app(scope, receive, send)
            return
        await send_error(
            send,
            400,
            "this server does not answer to that Host header; reach it by a name it serves, "
            "or add the name to TILESIGHT_ALLOWED_HOSTS",
            {"host": header[:200]},
        )


def install(app: FastAPI, settings: Settings) -> None:
    """Refuse settings that expose an open API, then wrap the app, outermost last: the
    headers go on every answer, the Host check's 400 included.

    X-Forwarded-For is read here, from `trusted_proxies` only (the stack runs uvicorn
    with --no-proxy-headers), so a client cannot pick a fresh rate-limit bucket by
    naming a made-up address."""
    check_exposure(settings)
    if settings.trusted_proxies:
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxies)
    app.add_middleware(HostCheck, allowed=allowed_hosts(settings))
    app.add_middleware(SecurityHeaders)
