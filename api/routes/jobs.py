"""Area jobs: submit an AOI, follow its progress, cancel it, download its buildings."""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session
from starlette.background import BackgroundTask

from api.access import principal_of
from api.conditional import etag, not_modified
from api.deps import CeleryDep, RedisDep, SessionDep, SessionmakerDep, SettingsDep
from tilesight.errors import InvalidInput, NotFound
from tilesight.jobs import events as job_events
from tilesight.jobs import export, service
from tilesight.jobs.evaluate import evaluate_job
from tilesight.states import JobState

router = APIRouter(prefix="/jobs", tags=["jobs"])


class JobOptions(BaseModel):
    """How outlines are cleaned; every field is optional and defaults to the model's own."""

    model_config = ConfigDict(extra="forbid")

    threshold: float | None = Field(None, gt=0, lt=1, description="building probability cut")
    min_area_m2: float | None = Field(None, ge=0, le=10_000, description="drop smaller specks")
    max_hole_m2: float | None = Field(None, ge=0, le=10_000, description="fill smaller holes")
    simplify_px: float | None = Field(None, ge=0, le=10, description="simplify tolerance, px")
    square: bool | None = Field(None, description="square off near-rectangular outlines")
    square_min_fill: float | None = Field(None, gt=0, le=1, description="how near, 0-1")
    peak_depth: float | None = Field(
        None, ge=0, le=1, description="split touching roofs at probability dips this deep; 0: off"
    )


class JobCreate(BaseModel):
    source: str = Field(description="id of a registered imagery source")
    model: str | None = Field(None, description="model name; the default model when omitted")
    version: int | None = Field(None, description="model version; the promoted one when omitted")
    aoi: dict[str, Any] = Field(
        description="GeoJSON Polygon, MultiPolygon or Feature in EPSG:4326 (lon, lat)"
    )
    options: JobOptions = Field(default_factory=JobOptions)


class JobCreated(BaseModel):
    id: uuid.UUID
    url: str
    state: str
    chunks_total: int
    tiles: int
    area_km2: float


class JobPublic(BaseModel):
    id: uuid.UUID
    state: str = Field(description="queued, running, merging, done, failed or cancelled")
    source: str
    model: str
    version: int
    zoom: int
    progress: float = Field(description="percent of chunks done")
    chunks_done: int
    chunks_total: int
    tiles: int
    area_km2: float
    buildings: int
    timings: dict[str, float] = Field(description="seconds per stage, summed over chunks")
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    options: dict[str, Any]
    links: dict[str, str]


class JobPage(BaseModel):
    items: list[JobPublic]
    total: int
    limit: int
    offset: int


class ObjectScores(BaseModel):
    """Buildings matched one to one at IoU >= iou_threshold (tilesight.model.metrics)."""

    iou_threshold: float
    labels: int
    predictions: int
    true_positives: int
    precision: float
    recall: float
    f1: float


class Evaluation(ObjectScores):
    labels_source: str


def _public(job: service.JobStatus) -> JobPublic:
    base = f"/jobs/{job.id}"
    links = {
        "self": base,
        "events": f"{base}/events",
        "buildings": f"{base}/buildings.geojson",
        **{f"buildings_{ext}": f"{base}/buildings.{ext}" for ext in export.FORMATS},
        "tilejson": f"/buildings/tilejson.json?job={job.id}",
        "tiles": f"/buildings/{{z}}/{{x}}/{{y}}.mvt?job={job.id}",
    }
    return JobPublic(**job.__dict__, links=links)


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Submit an area job: find every building in an AOI",
)
def submit(
    body: JobCreate,
    request: Request,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    celery: CeleryDep,
) -> JobCreated:
    with session.begin():
        job = service.create_job(
            session,
            settings,
            source_id=body.source,
            model=body.model or settings.default_model,
            version=body.version,
            aoi=body.aoi,
            options=body.options.model_dump(exclude_none=True),
            owner_key_id=principal_of(request).key_id,
        )
    service.enqueue_job(session, celery, job)
    url = str(request.url_for("read_job", job_id=job.id))
    response.headers["Location"] = url
    return JobCreated(
        id=job.id,
        url=url,
        state=job.state,
        chunks_total=job.chunks_total,
        tiles=job.tiles_total,
        area_km2=round(job.area_km2, 6),
    )


@router.get("", summary="List jobs, newest first")
def list_jobs(
    request: Request,
    session: SessionDep,
    state: Annotated[str | None, Query(description="only jobs in this state")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> JobPage:
    jobs, total = service.list_jobs(
        session, state=state, limit=limit, offset=offset, viewer=principal_of(request)
    )
    return JobPage(items=[_public(j) for j in jobs], total=total, limit=limit, offset=offset)


class JobLimits(BaseModel):
    max_area_km2: float = Field(description="largest AOI one job may cover")
    max_tiles: int = Field(description="most tiles one job may plan at the model's zoom")
    max_active_jobs_per_key: int = Field(description="queued or running jobs per API key")


@router.get("/limits", summary="The limits an AOI must respect, so clients can say so up front")
def limits(settings: SettingsDep) -> JobLimits:
    return JobLimits(
        max_area_km2=settings.job_max_area_km2,
        max_tiles=settings.job_max_tiles,
        max_active_jobs_per_key=settings.max_active_jobs_per_key,
    )


@router.get("/{job_id}", summary="A job's state, progress, timings and error")
def read_job(job_id: uuid.UUID, request: Request, session: SessionDep) -> JobPublic:
    return _public(service.get_job(session, job_id, principal_of(request)))


@router.post("/{job_id}/cancel", summary="Cancel a job: its remaining chunks do nothing")
def cancel(
    job_id: uuid.UUID, request: Request, session: SessionDep, settings: SettingsDep
) -> JobPublic:
    with session.begin():
        job = service.cancel_job(session, job_id, principal_of(request))
    job_events.publisher(settings.redis_url).job_changed(
        job.id,
        state=job.state,
        chunks_done=job.chunks_done,
        chunks_total=job.chunks_total,
        buildings=job.buildings,
    )
    return _public(job)


@router.get(
    "/{job_id}/events",
    summary="Server-sent events with the job's progress until it ends",
    response_class=StreamingResponse,
)
async def events(
    job_id: uuid.UUID, request: Request, redis: RedisDep, factory: SessionmakerDep
) -> StreamingResponse:
    """Pushed from Redis pub/sub (tilesight.jobs.events); the database is read at the
    start, at the end, when the channel is silent for a while and while Redis is down."""
    viewer = principal_of(request)
    exclude = {"options", "links"}

    def snapshot() -> dict[str, Any]:
        with factory() as session:
            return _public(service.get_job(session, job_id, viewer)).model_dump(
                mode="json", exclude=exclude
            )

    first = await run_in_threadpool(snapshot)  # a 404 before the stream starts

    async def read() -> dict[str, Any]:
        return await run_in_threadpool(snapshot)

    async def stream() -> AsyncIterator[str]:
        last, state, sent = "", first["state"], time.monotonic()
        async for current in job_events.follow(redis, job_id, read):
            payload, state = json.dumps(current), current["state"]
            if payload != last:
                yield f"event: progress\ndata: {payload}\n\n"
                last, sent = payload, time.monotonic()
            elif time.monotonic() - sent >= 15:
                yield ": keep-alive\n\n"
                sent = time.monotonic()
            if await request.is_disconnected():
                return
        yield f"event: end\ndata: {json.dumps({'state': state})}\n\n"

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


BboxQuery = Annotated[
    str | None, Query(description="west,south,east,north in degrees: only these buildings")
]
ReviewedQuery = Annotated[
    bool,
    Query(description="as reviewed: edited outlines, added buildings in, wrong ones out"),
]


@router.get(
    "/{job_id}/buildings.geojson",
    summary="The job's buildings as an RFC 7946 FeatureCollection, streamed",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/geo+json": {}}}},
)
def buildings_geojson(
    job_id: uuid.UUID,
    request: Request,
    session: SessionDep,
    factory: SessionmakerDep,
    bbox: BboxQuery = None,
    reviewed: ReviewedQuery = False,
) -> Response:
    box = parse_bbox(bbox)
    job = service.get_job(session, job_id, principal_of(request))  # 404 before the stream
    headers = _download_headers(job, "geojson", bbox, reviewed)
    if "ETag" in headers and not_modified(request, headers["ETag"]):
        return Response(status_code=304, headers=headers)

    def stream() -> Iterator[bytes]:
        with factory() as own:
            assert isinstance(own, Session)
            yield from export.geojson_chunks(own, job_id, box, reviewed)

    return StreamingResponse(stream(), media_type="application/geo+json", headers=headers)


@router.get(
    "/{job_id}/buildings.{extension}",
    summary="The job's buildings as FlatGeobuf, GeoParquet, GeoPackage or OSM XML for JOSM",
    response_class=FileResponse,
    responses={200: {"content": {f.media_type: {} for f in export.FORMATS.values()}}},
)
def buildings_file(
    job_id: uuid.UUID,
    extension: str,
    request: Request,
    session: SessionDep,
    bbox: BboxQuery = None,
    reviewed: ReviewedQuery = False,
) -> Response:
    if extension not in export.FORMATS:
        raise NotFound(
            f"no export format .{extension}",
            formats=["geojson", *export.FORMATS],
        )
    box = parse_bbox(bbox)
    job = service.get_job(session, job_id, principal_of(request))
    headers = _download_headers(job, extension, bbox, reviewed)
    if "ETag" in headers and not_modified(request, headers["ETag"]):
        return Response(status_code=304, headers=headers)
    folder = Path(tempfile.mkdtemp(prefix="tilesight-export-"))
    path = folder / f"buildings-{job_id}.{extension}"
    try:
        fmt = export.write_buildings(session, job_id, extension, path, box, reviewed)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return FileResponse(
        path,
        media_type=fmt.media_type,
        headers=headers,
        background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True),
    )


def _download_headers(
    job: service.JobStatus, extension: str, bbox: str | None, reviewed: bool = False
) -> dict[str, str]:
    """A finished job's buildings never change, so they get an ETag and may be cached;
    its reviewed buildings change with every review, so they are never cached."""
    name = f"buildings-{job.id}{'-reviewed' if reviewed else ''}.{extension}"
    headers = {
        "Content-Disposition": f'attachment; filename="{name}"',
        "Cache-Control": "no-cache",
    }
    if JobState(job.state).is_terminal and job.finished_at is not None and not reviewed:
        key = f"{job.id}|{job.finished_at.isoformat()}|{extension}|{bbox}"
        headers["ETag"] = etag(key)
        headers["Cache-Control"] = "private, max-age=3600"
    return headers


@router.get(
    "/{job_id}/evaluation",
    summary="Object precision, recall and F1 (IoU >= 0.5) against labels covering the AOI",
)
def evaluation(
    job_id: uuid.UUID, request: Request, session: SessionDep, settings: SettingsDep
) -> Evaluation:
    service.get_job(session, job_id, principal_of(request))
    return Evaluation(**evaluate_job(session, settings, job_id))


def parse_bbox(bbox: str | None) -> tuple[float, float, float, float] | None:
    if bbox is None:
        return None
    try:
        west, south, east, north = (float(v) for v in bbox.split(","))
    except ValueError as exc:
        raise InvalidInput(
            "bbox must be four numbers: west,south,east,north", bbox=bbox[:100]
        ) from exc
    if not all(math.isfinite(v) for v in (west, south, east, north)):
        raise InvalidInput(
            "bbox values must be finite numbers (not NaN or Infinity)", bbox=bbox[:100]
        )
    if not (-180 <= west < east <= 180 and -90 <= south < north <= 90):
        raise InvalidInput(
            "bbox must be west,south,east,north in degrees with west < east and south < north",
            bbox=[west, south, east, north],
        )
    return west, south, east, north
