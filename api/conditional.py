"""Conditional requests: one reading of If-None-Match for every tile and TileJSON route."""

from __future__ import annotations

import hashlib

from fastapi import Request, Response
from pydantic import BaseModel


def not_modified(request: Request, etag: str) -> bool:
    """True when the client already holds `etag` (a list, weak tags or `*` included)."""
    header = request.headers.get("if-none-match")
    if not header:
        return False
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or etag in tags


def etag(key: str | bytes, *, prefix: str = "", weak: bool = False) -> str:
    """An entity tag from what identifies a representation (its source, version and
    parameters) or from its bytes; `prefix` keeps something readable in front (a model
    version), `weak` marks bytes that a proxy may encode differently."""
    data = key.encode() if isinstance(key, str) else key
    tag = '"' + prefix + hashlib.blake2b(data, digest_size=12).hexdigest() + '"'
    return "W/" + tag if weak else tag


def json_with_etag(request: Request, payload: BaseModel, cache_control: str) -> Response:
    """A JSON document with a weak ETag of its bytes, or a 304 when the client has it.

    Weak, because the gzip middleware may send other bytes for the same document.
    """
    body = payload.model_dump_json(exclude_none=True).encode()
    tag = etag(body, weak=True)
    headers = {"ETag": tag, "Cache-Control": cache_control}
    if not_modified(request, tag.removeprefix("W/")):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)
