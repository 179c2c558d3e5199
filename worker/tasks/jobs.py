"""Area-job tasks: `run_chunk` on the gpu queue, `merge` on the cpu queue.

Both take ids only and call `tilesight.jobs.chunk`, whose writes are idempotent, so
Celery's late acknowledgement (a killed worker's task is delivered again) and retries
never double a building or a progress count.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from celery import Task, shared_task
from sqlalchemy.orm import Session, sessionmaker

from tilesight import registry, tables
from tilesight.db import make_engine, make_sessionmaker
from tilesight.imagery.sources import get_source
from tilesight.jobs import chunk
from tilesight.jobs.infer import ChunkPredictor, chunk_predictor, job_context
from tilesight.predict import PredictContext
from tilesight.settings import Settings, get_settings

log = logging.getLogger(__name__)

MAX_RETRIES = 3


@dataclass
class Runtime:
    """What one worker process keeps between tasks: its database pool, its event loop
    and its Triton connection (bound to that loop)."""

    settings: Settings
    factory: sessionmaker[Session]
    loop: asyncio.AbstractEventLoop
    ctx: PredictContext


@lru_cache(maxsize=1)
def runtime() -> Runtime:
    """Made on first use inside the (forked) worker process, never at import time."""
    settings = get_settings()
    factory = make_sessionmaker(make_engine(settings))
    return Runtime(settings, factory, asyncio.new_event_loop(), job_context(settings))


def _predictor(
    rt: Runtime, job_id: uuid.UUID
) -> tuple[ChunkPredictor, list[dict[str, Any]] | None, float] | None:
    with rt.factory() as session:
        job = session.get(tables.Job, job_id)
        if job is None:
            return None
        source = get_source(session, job.source_id)
        model, version = job.model_name, job.model_version
    meta = registry.model_metadata(rt.settings, model, version)
    predict = chunk_predictor(rt.ctx, rt.loop, model, version, source)
    return predict, meta.get("classes"), float(meta.get("threshold", 0.5))


@shared_task(
    name="tilesight.jobs.run_chunk",
    bind=True,
    acks_late=True,
    max_retries=MAX_RETRIES,
    soft_time_limit=600,
)
def run_chunk(self: Task, job_id: str, index: int) -> dict[str, Any]:
    rt = runtime()
    jid = uuid.UUID(job_id)
    try:
        found = _predictor(rt, jid)
        if found is None:
            return {"state": "skipped"}
        predict_fn, classes, threshold = found
        result = chunk.run_chunk(
            rt.factory, jid, index, predict=predict_fn, classes=classes, threshold=threshold
        )
    except Exception as exc:
        attempts = self.request.retries + 1
        if self.request.retries < MAX_RETRIES:
            log.warning(
                "chunk %s/%s failed (attempt %s), retrying: %s", job_id, index, attempts, exc
            )
            raise self.retry(exc=exc, countdown=2**self.request.retries) from exc
        chunk.fail_chunk(rt.factory, jid, index, f"{type(exc).__name__}: {exc}", attempts)
        raise
    if result.merge:
        merge.apply_async(args=[job_id], queue="cpu")
    return {"state": result.state, "buildings": result.buildings, "timings": result.timings}


@shared_task(name="tilesight.jobs.merge", bind=True, acks_late=True, max_retries=MAX_RETRIES)
def merge(self: Task, job_id: str) -> str:
    try:
        return chunk.finish_job(runtime().factory, uuid.UUID(job_id))
    except Exception as exc:
        raise self.retry(exc=exc, countdown=2**self.request.retries) from exc
