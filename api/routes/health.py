"""Liveness and readiness: what a load balancer and `tilesight status` ask."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import text

from api.deps import EngineDep, RedisDep, TritonDep

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    components: dict[str, str]


@router.get("/healthz", response_model=Health, summary="The API process is up")
async def healthz() -> Health:
    return Health(status="ok")


async def _check_postgres(engine: EngineDep) -> str:
    def ping() -> None:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    await asyncio.wait_for(asyncio.to_thread(ping), timeout=3)
    return "ok"


async def _check_redis(redis: RedisDep) -> str:
    await asyncio.wait_for(redis.ping(), timeout=2)
    return "ok"


async def _check_triton(triton: TritonDep) -> str:
    if not await triton.is_live(timeout_s=2):
        raise ConnectionError("Triton is not live")
    return "ok"


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="PostgreSQL, Redis and Triton are reachable",
    responses={503: {"model": Readiness, "description": "a component is down (named)"}},
)
async def readyz(engine: EngineDep, redis: RedisDep, triton: TritonDep) -> JSONResponse:
    checks = {
        "postgres": _check_postgres(engine),
        "redis": _check_redis(redis),
        "triton": _check_triton(triton),
    }
    results = await asyncio.gather(*checks.values(), return_exceptions=True)
    components = {
        name: (r if isinstance(r, str) else f"down: {type(r).__name__}: {r}".strip())
        for name, r in zip(checks, results, strict=True)
    }
    ok = all(v == "ok" for v in components.values())
    body = Readiness(status="ok" if ok else "unavailable", components=components)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)
