"""One chunk of an area job, start to finish, and the job's last step (the seam merge).

A chunk may run twice (a worker killed before it acknowledged, a retry), so its result
is written in one transaction that first deletes what an earlier attempt of the same
chunk wrote and counts progress from chunk rows. The job row is locked in that
transaction, which serialises the "was this the last chunk?" decision: exactly one
chunk moves the job to `merging`, and a re-delivered chunk that finds the job there
asks for the (idempotent) merge again rather than assume it was queued.

Every change of a job's state or progress is published (tilesight.jobs.events) after
its transaction commits, so the events endpoint pushes it without polling.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from geoalchemy2.shape import from_shape, to_shape
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from tilesight import tables
from tilesight.db import session_scope
from tilesight.errors import NotFound
from tilesight.jobs import events
from tilesight.jobs.merge import merge_seams
from tilesight.jobs.plan import Tile
from tilesight.jobs.vectorize import (
    CleanParams,
    Footprint,
    mosaic_origin,
    stitch_classes,
    vectorize,
)
from tilesight.settings import get_settings

# predicts one tile: [C, tilesize, tilesize] float32 probabilities; NotFound = no imagery
TilePredictor = Callable[[Tile], Awaitable[np.ndarray]]


def default_publisher() -> events.Publisher:
    """The process's publisher, from its settings' Redis URL."""
    return events.publisher(get_settings().redis_url)


def _buildings(session: Session, job_id: uuid.UUID) -> int:
    return session.scalar(select(func.count()).where(tables.Building.job_id == job_id)) or 0


def _announce(publish: events.Publisher | None, job: tables.Job, buildings: int) -> None:
    """Publish the job's counters as they stand (call once its transaction is committed)."""
    (publish or default_publisher()).job_changed(
        job.id,
        state=job.state,
        chunks_done=job.chunks_done,
        chunks_total=job.chunks_total,
        buildings=buildings,
        error=job.error,
    )


@dataclass
class ChunkResult:
    state: str  # done | skipped | stopped
    merge: bool = False  # the caller should queue the job's merge
    buildings: int = 0
    timings: dict[str, float] = field(default_factory=dict)


async def predict_tiles(
    predict: TilePredictor, tiles: list[Tile], concurrency: int = 8
) -> dict[Tile, np.ndarray]:
    """Every tile of the chunk, several in flight so Triton can batch them; tiles
    without imagery are left out (they stay empty in the mosaic)."""
    gate = asyncio.Semaphore(concurrency)

    async def one(tile: Tile) -> tuple[Tile, np.ndarray | None]:
        async with gate:
            try:
                return tile, await predict(tile)
            except NotFound:
                return tile, None

    results = await asyncio.gather(*(one(t) for t in tiles))
    return {t: p for t, p in results if p is not None}


def run_chunk(
    factory: sessionmaker[Session],
    job_id: uuid.UUID,
    index: int,
    *,
    predict: Callable[[list[Tile]], tuple[dict[Tile, np.ndarray], dict[str, float]]],
    classes: list[dict[str, Any]] | None,
    threshold: float,
    tilesize: int = 256,
    publish: events.Publisher | None = None,
    peak_depth: float | None = None,
) -> ChunkResult:
    """Infer, vectorise and write one chunk; a no-op when the job no longer wants it."""
    with session_scope(factory) as session:
        job = session.get(tables.Job, job_id)
        chunk = session.get(tables.JobChunk, (job_id, index))
        if job is None or chunk is None:
            return ChunkResult("skipped")
        if job.state in ("cancelled", "failed", "done"):
            return ChunkResult("skipped")
        if chunk.state == "done":
            return ChunkResult("skipped", merge=job.state == "merging")
        started = job.state == "queued"  # announced once committed (twice in a race: harmless)
        session.execute(
            update(tables.Job)
            .where(tables.Job.id == job_id, tables.Job.state == "queued")
            .values(state="running", started_at=func.now())
        )
        tiles: list[Tile] = [tuple(t) for t in chunk.tiles]  # type: ignore[misc]
        aoi = to_shape(job.aoi)
        params = CleanParams.from_options(
            (job.params or {}).get("options", {}), threshold=threshold, peak_depth=peak_depth
        )
        model, version = job.model_name, job.model_version
        chunks_done, chunks_total = job.chunks_done, job.chunks_total
    if started:
        (publish or default_publisher()).job_changed(
            job_id, state="running", chunks_done=chunks_done, chunks_total=chunks_total, buildings=0
        )

    t0 = time.perf_counter()
    probs, stage_times = predict(tiles)
    t1 = time.perf_counter()
    mosaic, border = stitch_classes(probs, tiles, classes, tilesize)
    transform = mosaic_origin(tiles, tilesize)[4]
    footprints = vectorize(mosaic, transform, aoi, params, border)
    t2 = time.perf_counter()
    # the predictor may split its time into read and infer; otherwise it all counts as infer
    timings = {"infer": round(t1 - t0, 4), **stage_times, "vectorize": round(t2 - t1, 4)}
    result, job_now = _write(factory, job_id, index, footprints, timings, model, version, t2)
    if job_now is not None:
        _announce(publish, *job_now)
    return result


def _write(
    factory: sessionmaker[Session],
    job_id: uuid.UUID,
    index: int,
    footprints: list[Footprint],
    timings: dict[str, float],
    model: str,
    version: int,
    started: float,
) -> tuple[ChunkResult, tuple[tables.Job, int] | None]:
    """The chunk's transaction; with the job and its building count to announce."""
    with session_scope(factory) as session:
        job = session.get(tables.Job, job_id, with_for_update=True)
        if job is None or job.state in ("cancelled", "failed", "done"):
            return ChunkResult("stopped", timings=timings), None
        session.execute(
            delete(tables.Building).where(
                tables.Building.job_id == job_id, tables.Building.chunk_index == index
            )
        )
        if footprints:
            session.execute(
                insert(tables.Building),
                [
                    {
                        "job_id": job_id,
                        "chunk_index": index,
                        "geom": from_shape(f.geom, srid=4326),
                        "area_m2": f.area_m2,
                        "confidence": f.confidence,
                        "model_name": model,
                        "model_version": version,
                        "merged": False,
                    }
                    for f in footprints
                ],
            )
        timings["write"] = round(time.perf_counter() - started, 4)
        chunk = session.get(tables.JobChunk, (job_id, index), with_for_update=True)
        assert chunk is not None
        chunk.state = "done"
        chunk.attempts += 1
        chunk.error = None
        chunk.timings = timings
        chunk.finished_at = func.now()
        session.flush()
        done = session.scalar(
            select(func.count()).where(
                tables.JobChunk.job_id == job_id, tables.JobChunk.state == "done"
            )
        )
        job.chunks_done = done or 0
        merge = job.chunks_done >= job.chunks_total
        if merge:
            job.state = "merging"
        session.flush()
        result = ChunkResult("done", merge=merge, buildings=len(footprints), timings=timings)
        return result, (job, _buildings(session, job_id))


def fail_chunk(
    factory: sessionmaker[Session],
    job_id: uuid.UUID,
    index: int,
    reason: str,
    attempts: int,
    publish: events.Publisher | None = None,
) -> None:
    """A chunk that kept failing fails its job; chunks already written keep their rows."""
    with session_scope(factory) as session:
        job = session.get(tables.Job, job_id, with_for_update=True)
        chunk = session.get(tables.JobChunk, (job_id, index), with_for_update=True)
        if job is None or chunk is None or chunk.state == "done":
            return
        chunk.state = "failed"
        chunk.attempts = attempts
        chunk.error = reason
        if job.state in ("cancelled", "done", "failed"):
            return
        job.state = "failed"
        job.error = f"chunk {index} failed after {attempts} attempts: {reason}"
        job.finished_at = func.now()
        job.buildings_count = _buildings(session, job_id)
        # the chunks still queued will never run: stop counting them as queued work
        session.execute(
            update(tables.JobChunk)
            .where(tables.JobChunk.job_id == job_id, tables.JobChunk.state == "queued")
            .values(state="cancelled")
        )
    _announce(publish, job, job.buildings_count)


def finish_job(
    factory: sessionmaker[Session], job_id: uuid.UUID, publish: events.Publisher | None = None
) -> str:
    """Merge seam-cut buildings and mark the job done, in one transaction."""
    with session_scope(factory) as session:
        job = session.get(tables.Job, job_id, with_for_update=True)
        if job is None or job.state != "merging":
            return job.state if job else "missing"
        t0 = time.perf_counter()
        chunks = session.scalars(
            select(tables.JobChunk.tiles).where(tables.JobChunk.job_id == job_id)
        ).all()
        side = int((job.params or {}).get("side", 4))
        blocks = {(t[0][0] // side, t[0][1] // side) for t in chunks if t}
        merge_seams(
            session,
            job_id,
            blocks=blocks,
            side=side,
            zoom=job.zoom,
            model=job.model_name,
            version=job.model_version,
        )
        job.buildings_count = (
            session.scalar(select(func.count()).where(tables.Building.job_id == job_id)) or 0
        )
        job.timings = {**(job.timings or {}), "merge": round(time.perf_counter() - t0, 4)}
        job.state = "done"
        job.finished_at = func.now()
    _announce(publish, job, job.buildings_count)
    return "done"
