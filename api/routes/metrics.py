"""Prometheus metrics: request counts and latency, cache hits, Triton latency, queues, jobs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import cast

import redis.asyncio as aioredis
from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from api.deps import RedisDep, SessionmakerDep
from tilesight.states import JobState
from tilesight.tables import Job
from tilesight.tasks import Queue
from tilesight.telemetry import JOBS, QUEUE_DEPTH

router = APIRouter(tags=["operations"])
log = logging.getLogger(__name__)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}},
)
async def metrics(redis: RedisDep, factory: SessionmakerDep) -> Response:
    # A scrape must answer while Redis or PostgreSQL is down (that is when it matters most),
    # so a failed gauge keeps its last value, and the failure is logged, not swallowed.
    gauges = {"queue depth": _queue_depth(redis), "jobs by state": _jobs_by_state(factory)}
    results = await asyncio.gather(*gauges.values(), return_exceptions=True)
    for name, result in zip(gauges, results, strict=True):
        if isinstance(result, BaseException):
            log.warning("metrics: %s not refreshed: %r", name, result)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


async def _queue_depth(redis: aioredis.Redis) -> None:
    for queue in Queue:
        depth = await cast(Awaitable[int], redis.llen(queue.value))  # redis-py types both
        QUEUE_DEPTH.labels(queue.value).set(depth)


async def _jobs_by_state(factory: sessionmaker[Session]) -> None:
    def count() -> dict[str, int]:
        with factory() as session:
            rows = session.execute(select(Job.state, func.count()).group_by(Job.state))
            return {state: n for state, n in rows}

    counts = await asyncio.to_thread(count)
    for state in JobState:
        JOBS.labels(state.value).set(counts.get(state, 0))
