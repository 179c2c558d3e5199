"""Conditional requests: one reading of If-None-Match for every tile route."""

from __future__ import annotations

from fastapi import Request


def not_modified(request: Request, etag: str) -> bool:
    """True when the client already holds `etag` (a list, weak tags or `*` included)."""
    header = request.headers.get("if-none-match")
    if not header:
        return False
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or etag in tags
