"""Area jobs as the API and the CLI see them: create, list, read, cancel.

Creating a job validates everything (source, model version, AOI, limits) before a row
is written, and the caller queues the chunks only after the rows are committed, so a
bad request leaves nothing behind and a worker never meets a chunk that is not there.
Progress is counted from chunk rows, never incremented, so a re-delivered chunk can
not count twice.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from geoalchemy2.shape import from_shape, to_shape
from kombu.exceptions import KombuError
from shapely.geometry import box
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from tilesight import registry, tables, tasks
from tilesight.errors import Conflict, NotFound, Unavailable, Unprocessable
from tilesight.jobs.plan import Plan, plan_job
from tilesight.jobs.vectorize import CleanParams
from tilesight.keys import Principal, owner_filter
from tilesight.settings import Settings
from tilesight.states import ChunkState, JobState

STAGES = ("read", "infer", "vectorize", "write")


class TaskSender(Protocol):
    """What queues tasks (a Celery app); tilesight knows tasks by name only."""

    def send_task(self, name: str, args: Any = None, **options: Any) -> Any: ...


@dataclass(frozen=True)
class JobStatus:
    id: uuid.UUID
    state: str
    source: str
    model: str
    version: int
    zoom: int
    progress: float
    chunks_done: int
    chunks_total: int
    tiles: int
    area_km2: float
    buildings: int
    timings: dict[str, float]
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    options: dict[str, Any]


def create_job(
    session: Session,
    settings: Settings,
    *,
    source_id: str,
    model: str,
    version: int | None,
    aoi: dict[str, Any],
    options: dict[str, Any] | None = None,
    owner_key_id: int | None = None,
) -> tables.Job:
    """Validate and plan an area job and add its rows to the session (not committed)."""
    source = _source(session, source_id)
    resolved = registry.resolve_version(session, model, version)
    meta = registry.model_metadata(settings, model, resolved)
    options = _check_options(options)
    footprint = to_shape(source.footprint) if source.footprint is not None else box(*source.bounds)
    plan = plan_job(
        aoi,
        zoom=int(meta.get("zoom", 19)),
        source_id=source_id,
        source_footprint=footprint,
        chunk_tiles=settings.job_chunk_tiles,
        max_area_km2=settings.job_max_area_km2,
        max_tiles=settings.job_max_tiles,
        max_vertices=settings.job_max_vertices,
    )
    _check_key_quota(session, settings, owner_key_id)
    _check_queue_room(session, settings, len(plan.chunks))
    job = tables.Job(
        id=uuid.uuid4(),
        source_id=source_id,
        model_name=model,
        model_version=resolved,
        aoi=from_shape(plan.aoi, srid=4326),
        state=JobState.QUEUED,
        zoom=plan.zoom,
        tiles_total=len(plan.tiles),
        chunks_total=len(plan.chunks),
        area_km2=plan.area_km2,
        params={"side": plan.side, "options": options, "tilesize": meta.get("tile_size", 256)},
        owner_key_id=owner_key_id,
    )
    _add_rows(session, job, plan)
    return job


def _source(session: Session, source_id: str) -> tables.Source:
    source = session.get(tables.Source, source_id)
    if source is None:
        known = session.scalars(select(tables.Source.id).order_by(tables.Source.id)).all()
        raise NotFound(f"source {source_id!r} is not registered", known=list(known))
    return source


def _check_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """Vectorisation options are stored with the job, so a typo is refused, not ignored."""
    options = dict(options or {})
    unknown = set(options) - set(CleanParams.__dataclass_fields__) - {"threshold"}
    if unknown:
        raise Unprocessable(
            f"unknown options {sorted(unknown)}",
            allowed=sorted(CleanParams.__dataclass_fields__),
        )
    return options


def _check_key_quota(session: Session, settings: Settings, owner_key_id: int | None) -> None:
    """One key cannot hold every worker: its active jobs are capped (keyless use is not)."""
    if owner_key_id is None:
        return
    active = session.scalar(
        select(func.count()).where(
            tables.Job.state.in_(JobState.active()),
            tables.Job.owner_key_id == owner_key_id,
        )
    )
    if (active or 0) >= settings.max_active_jobs_per_key:
        raise Conflict(
            f"{active} jobs of this key are still running; wait for one to finish or cancel one",
            limit=settings.max_active_jobs_per_key,
        )


def _check_queue_room(session: Session, settings: Settings, chunks: int) -> None:
    """A full queue refuses new work with a 503 and Retry-After instead of growing."""
    queued = (
        session.scalar(select(func.count()).where(tables.JobChunk.state == ChunkState.QUEUED)) or 0
    )
    if queued + chunks > settings.max_queued_chunks:
        raise Unavailable(
            f"the job queue holds {queued} chunks; this job's {chunks} would pass "
            f"the limit of {settings.max_queued_chunks}; retry later or submit a smaller area",
            retry_after=30,
            queued_chunks=queued,
            limit=settings.max_queued_chunks,
        )


def _add_rows(session: Session, job: tables.Job, plan: Plan) -> None:
    session.add(job)
    session.flush()
    session.add_all(
        tables.JobChunk(job_id=job.id, index=c.index, tiles=[list(t) for t in c.tiles])
        for c in plan.chunks
    )


def enqueue_job(session: Session, sender: TaskSender, job: tables.Job) -> None:
    """Queue every chunk; called after the job's rows are committed. If the broker is
    down the job is marked failed (nothing half-queued runs on) and the caller gets a 503."""
    try:
        for index in range(job.chunks_total):
            sender.send_task(tasks.RUN_CHUNK, args=[str(job.id), index], queue=tasks.Queue.GPU)
    except (OSError, KombuError) as exc:
        with session.begin():
            session.execute(
                update(tables.Job)
                .where(tables.Job.id == job.id)
                .values(
                    state=JobState.FAILED,
                    error=f"could not queue: {exc}",
                    finished_at=func.now(),
                )
            )
            session.execute(
                update(tables.JobChunk)
                .where(tables.JobChunk.job_id == job.id)
                .values(state=ChunkState.CANCELLED)
            )
        raise Unavailable("the job queue is unreachable; try again shortly", retry_after=5) from exc


def _visible(job: tables.Job | None, job_id: uuid.UUID, viewer: Principal | None) -> tables.Job:
    """Another key's job reads as missing (404), so ids cannot be probed for existence."""
    owner = owner_filter(viewer)
    if job is None or (owner is not True and job.owner_key_id != owner):
        raise NotFound(f"job {job_id} does not exist")
    return job


def get_job(session: Session, job_id: uuid.UUID, viewer: Principal | None = None) -> JobStatus:
    return _status(session, _visible(session.get(tables.Job, job_id), job_id, viewer))


def list_jobs(
    session: Session,
    *,
    state: str | None,
    limit: int,
    offset: int,
    viewer: Principal | None = None,
) -> tuple[list[JobStatus], int]:
    query = select(tables.Job)
    count = select(func.count()).select_from(tables.Job)
    owner = owner_filter(viewer)
    if owner is not True:
        query = query.where(tables.Job.owner_key_id == owner)
        count = count.where(tables.Job.owner_key_id == owner)
    if state is not None:
        if state not in set(JobState):
            raise Unprocessable(f"unknown state {state!r}", allowed=[s.value for s in JobState])
        query = query.where(tables.Job.state == state)
        count = count.where(tables.Job.state == state)
    jobs = session.scalars(
        query.order_by(tables.Job.created_at.desc(), tables.Job.id).limit(limit).offset(offset)
    ).all()
    return [_status(session, j, chunk_timings=False) for j in jobs], session.scalar(count) or 0


def cancel_job(session: Session, job_id: uuid.UUID, viewer: Principal | None = None) -> JobStatus:
    """Mark a job cancelled; its queued chunks see that and do nothing."""
    job = _visible(session.get(tables.Job, job_id, with_for_update=True), job_id, viewer)
    if job.state in JobState.terminal():
        raise Conflict(f"job {job_id} is already {job.state}", state=job.state)
    job.state = JobState.CANCELLED
    job.finished_at = func.now()
    session.execute(
        update(tables.JobChunk)
        .where(tables.JobChunk.job_id == job_id, tables.JobChunk.state == ChunkState.QUEUED)
        .values(state=ChunkState.CANCELLED)
    )
    session.flush()
    session.refresh(job)
    return _status(session, job)


def stage_timings(session: Session, job_id: uuid.UUID) -> dict[str, float]:
    """Seconds per stage summed over the chunk rows (each chunk row holds its last attempt)."""
    sums = ", ".join(f"coalesce(sum((timings->>'{s}')::float), 0) AS {s}" for s in STAGES)
    row = session.execute(
        text(f"SELECT {sums} FROM job_chunks WHERE job_id = :job"),
        {"job": job_id},
    ).one()
    return {s: round(float(v), 3) for s, v in zip(STAGES, row, strict=True)}


def _status(session: Session, job: tables.Job, chunk_timings: bool = True) -> JobStatus:
    timings = stage_timings(session, job.id) if chunk_timings else {}
    timings.update({k: float(v) for k, v in (job.timings or {}).items()})
    buildings = job.buildings_count
    if job.state != JobState.DONE:
        buildings = (
            session.scalar(select(func.count()).where(tables.Building.job_id == job.id)) or 0
        )
    progress = 100.0 * job.chunks_done / job.chunks_total if job.chunks_total else 0.0
    if job.state == JobState.DONE:
        progress = 100.0
    return JobStatus(
        id=job.id,
        state=job.state,
        source=job.source_id,
        model=job.model_name,
        version=job.model_version,
        zoom=job.zoom,
        progress=round(progress, 1),
        chunks_done=job.chunks_done,
        chunks_total=job.chunks_total,
        tiles=job.tiles_total,
        area_km2=round(job.area_km2, 6),
        buildings=buildings,
        timings=timings,
        error=job.error,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        options=dict((job.params or {}).get("options", {})),
    )
