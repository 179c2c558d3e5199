"""Prometheus metrics: request counts and latency, cache hits, Triton latency, queues, jobs."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import func, select

from tilesight.tables import Job
from tilesight.telemetry import JOBS, QUEUE_DEPTH

router = APIRouter(tags=["operations"])
log = logging.getLogger(__name__)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}},
)
async def metrics(request: Request) -> Response:
    # A scrape must answer while Redis or PostgreSQL is down (that is when it matters most),
    # so a failed gauge keeps its last value, and the failure is logged, not swallowed.
    gauges = {"queue depth": _queue_depth(request), "jobs by state": _jobs_by_state(request)}
    results = await asyncio.gather(*gauges.values(), return_exceptions=True)
    for name, result in zip(gauges, results, strict=True):
        if isinstance(result, BaseException):
            log.warning("metrics: %s not refreshed: %r", name, result)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


async def _queue_depth(request: Request) -> None:
    redis = request.app.state.redis
    for queue in ("gpu", "cpu"):
        QUEUE_DEPTH.labels(queue).set(await redis.llen(queue))


async def _jobs_by_state(request: Request) -> None:
    def count() -> dict[str, int]:
        with request.app.state.sessionmaker() as session:
            rows = session.execute(select(Job.state, func.count()).group_by(Job.state))
            return {state: n for state, n in rows}

    counts = await asyncio.to_thread(count)
    for state in ("queued", "running", "merging", "done", "failed", "cancelled"):
        JOBS.labels(state).set(counts.get(state, 0))
