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
from celery.exceptions import Reject
from sqlalchemy.orm import Session, sessionmaker

from tilesight import registry, tables, tasks
from tilesight.db import make_engine, make_sessionmaker
from tilesight.imagery.sources import get_source
from tilesight.jobs import chunk
from tilesight.jobs.infer import ChunkPredictor, chunk_predictor, job_context
from tilesight.predict import PredictContext
from tilesight.settings import Settings, get_settings

log = logging.getLogger(__name__)

MAX_RETRIES = 3  # for errors that another attempt is unlikely to fix
MAX_TRANSIENT_RETRIES = 12  # Triton, PostgreSQL or Redis restarting: about 3 minutes in all
# Publishing the merge must outlive a broker restart, or a finished job would hang in
# `merging` with no task left to move it on.
PUBLISH_RETRY = {"max_retries": 60, "interval_start": 0.5, "interval_step": 0.5, "interval_max": 3}


def is_transient(exc: BaseException) -> bool:
    """A dependency was down or restarting, not a fault of this chunk's data."""
    import redis
    from sqlalchemy.exc import DBAPIError, OperationalError

    from tilesight.errors import Unavailable

    if isinstance(exc, Unavailable | OperationalError | redis.ConnectionError | ConnectionError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def backoff(retries: int) -> float:
    return float(min(2**retries, 20))


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


def _predictor(rt: Runtime, job_id: uuid.UUID) -> tuple[ChunkPredictor, dict[str, Any]] | None:
    """The job's predictor and its model version's metadata (classes, threshold, depth)."""
    with rt.factory() as session:
        job = session.get(tables.Job, job_id)
        if job is None:
            return None
        source = get_source(session, job.source_id)
        model, version = job.model_name, job.model_version
    meta = registry.model_metadata(rt.settings, model, version)
    predict = chunk_predictor(rt.ctx, rt.loop, model, version, source)
    return predict, meta


def _retry(task: Task, exc: Exception, limit: int) -> Exception:
    """Publish the retry, waiting out a broker restart (PUBLISH_RETRY). Celery answers a
    retry it cannot publish with Reject(requeue=False), which acks the message: the chunk
    would be lost and its job left running forever. Requeue instead; while the broker is
    down even that cannot be said, so the message stays unacknowledged and the broker
    delivers it again (on reconnect, or after the visibility timeout)."""
    try:
        return task.retry(
            exc=exc,
            countdown=backoff(task.request.retries),
            max_retries=limit,
            throw=False,
            retry=True,
            retry_policy=PUBLISH_RETRY,
        )
    except Reject as rejected:
        log.warning("could not publish the retry; requeueing the chunk: %s", rejected.reason)
        return Reject(rejected.reason, requeue=True)


@shared_task(
    name=tasks.RUN_CHUNK,
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
        predict_fn, meta = found
        result = chunk.run_chunk(
            rt.factory, jid, index, predict=predict_fn, classes=meta.get("classes"),
            threshold=float(meta.get("threshold", 0.5)), peak_depth=meta.get("peak_depth"),
        )  # fmt: skip
    except Exception as exc:
        attempts = self.request.retries + 1
        limit = MAX_TRANSIENT_RETRIES if is_transient(exc) else MAX_RETRIES
        if self.request.retries < limit:
            log.warning(
                "chunk %s/%s failed (attempt %s), retrying: %s", job_id, index, attempts, exc
            )
            raise _retry(self, exc, limit) from exc
        chunk.fail_chunk(rt.factory, jid, index, f"{type(exc).__name__}: {exc}", attempts)
        raise
    if result.merge:
        merge.apply_async(
            args=[job_id], queue=tasks.Queue.CPU.value, retry=True, retry_policy=PUBLISH_RETRY
        )
    return {"state": result.state, "buildings": result.buildings, "timings": result.timings}


@shared_task(name=tasks.MERGE, bind=True, acks_late=True, max_retries=MAX_TRANSIENT_RETRIES)
def merge(self: Task, job_id: str) -> str:
    try:
        return chunk.finish_job(runtime().factory, uuid.UUID(job_id))
    except Exception as exc:
        raise _retry(self, exc, MAX_TRANSIENT_RETRIES) from exc
