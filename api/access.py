"""Who may call what, and how often: API keys with scopes, and token-bucket rate limits.

Both are router-level dependencies attached in api/main.py, so resource routers stay
free of access logic. A router's reads need the `read` scope and its writes `submit` or
`admin`; tile routers may be public (a setting). The principal is left on
`request.state.principal` for handlers that scope data to the caller (jobs).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import redis
from fastapi import Request
from sqlalchemy.orm import Session

from tilesight.errors import Forbidden, TilesightError, Unauthorized
from tilesight.keys import ANONYMOUS, Principal, authenticate
from tilesight.ratelimit import Budget, RateLimiter
from tilesight.telemetry import RATE_LIMITED

log = logging.getLogger(__name__)

READ_METHODS = {"GET", "HEAD", "OPTIONS"}


class RateLimited(TilesightError):
    status_code = 429

    def __init__(self, message: str, retry_after: int, **detail: object) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)}, **detail)
        self.retry_after = retry_after


def _token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    return request.headers.get("x-api-key") or None


def _principal(request: Request, needs_key: bool) -> Principal:
    token = _token(request)
    if token is None:
        if needs_key:
            raise Unauthorized(
                "this server needs an API key: send `Authorization: Bearer <key>` or "
                "`X-API-Key: <key>` (create one with `tilesight keys create`)"
            )
        return ANONYMOUS
    factory = request.app.state.sessionmaker
    with factory() as session:
        assert isinstance(session, Session)
        return authenticate(session, token)


def access(
    read: str = "read",
    write: str = "submit",
    budget: str = "default",
    public: bool = False,
    read_budget: str | None = None,
) -> Callable[[Request], Awaitable[None]]:
    """A dependency that authenticates, checks the scope for the method and rate-limits
    from `budget` (reads from `read_budget` when given, so polling a job does not eat
    into the budget for submitting them)."""

    async def dependency(request: Request) -> None:
        settings = request.app.state.settings
        scope = read if request.method in READ_METHODS else write
        is_public = public and settings.public_tiles and scope == "read"
        needs_key = settings.auth_required and not is_public
        principal = _principal(request, needs_key)
        if not principal.allows(scope):
            raise Forbidden(
                f"this API key lacks the `{scope}` scope", scopes=sorted(principal.scopes)
            )
        request.state.principal = principal
        is_read = request.method in READ_METHODS
        await _limit(request, principal, (read_budget or budget) if is_read else budget)

    return dependency


async def _limit(request: Request, principal: Principal, budget_name: str) -> None:
    settings = request.app.state.settings
    rate, burst = settings.rate_limits.get(budget_name) or settings.rate_limits["default"]
    caller = (
        f"key:{principal.key_id}"
        if principal.key_id is not None
        else f"ip:{request.client.host if request.client else 'unknown'}"
    )
    limiter = RateLimiter(request.app.state.redis)
    try:
        decision = await limiter.hit(Budget(budget_name, rate, int(burst)), caller)
    except redis.RedisError as exc:
        # Fail open: a Redis outage must not take imagery down with it.
        log.warning("rate limiter unavailable: %s", exc)
        return
    if not decision.allowed:
        RATE_LIMITED.labels(budget_name).inc()
        raise RateLimited(
            f"rate limit for {budget_name} exceeded ({rate:g}/s, burst {burst:g}); "
            f"retry after {decision.retry_after_s}s",
            retry_after=decision.retry_after_s,
            budget=budget_name,
        )


def principal_of(request: Request) -> Principal:
    """The caller of this request (set by `access`); anonymous when no key was sent."""
    return getattr(request.state, "principal", ANONYMOUS)
