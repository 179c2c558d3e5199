"""Training runs as a service: validated on submission, executed by a GPU worker.

Everything that can be wrong with a request (unknown source, labels that are not
GeoJSON or do not overlap the imagery, class names the labels do not hold, class
weights that do not match the classes, hyperparameters out of range) is checked in
`create_run`, before a task is queued and any GPU time is spent. `execute_run` is
idempotent: checkpoints live in a folder named after the run, so a re-delivered task
(a worker killed mid-training) resumes from the last finished epoch.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import mercantile
import shapely
from kombu.exceptions import KombuError
from shapely.geometry import box
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from tilesight import tasks
from tilesight.db import session_scope
from tilesight.errors import Conflict, InvalidInput, TilesightError, Unavailable, Unprocessable
from tilesight.geocheck import check_geojson
from tilesight.imagery.register import local_path
from tilesight.imagery.sources import SourceInfo, get_source
from tilesight.keys import Principal, owner_filter
from tilesight.model.repository import version_dir
from tilesight.settings import Settings
from tilesight.states import RunState
from tilesight.tables import TrainingRun as RunRow
from tilesight.training.checks import (
    check_classes,
    check_init_version,
    check_model_predicts_the_same,
    check_raster_values,
    in_users_terms,
    inline_labels_file,
    server_paths,
)
from tilesight.training.spec import RunRequest, TrainingSpec
from tilesight.training.transfer import check_architecture

log = logging.getLogger(__name__)


class Cancelled(Exception):
    """Raised from the progress callback to stop a run that was cancelled."""


class TaskSender(Protocol):
    def send_task(self, name: str, args: Any = None, **options: Any) -> Any: ...


def create_run(
    settings: Settings, session: Session, req: RunRequest, owner_key_id: int | None = None
) -> RunRow:
    """Validate a request and store the run; the caller queues the task after commit.

    A refused request leaves nothing behind (inline labels are written to check them,
    and removed again), and its error names the user's input, not the server's paths."""
    run_id = uuid.uuid4()
    try:
        return _create(settings, session, req, run_id, owner_key_id)
    except BaseException as exc:
        if req.labels is not None:
            inline_labels_file(settings, run_id).unlink(missing_ok=True)
        if isinstance(exc, TilesightError):
            in_users_terms(exc, server_paths(settings, req, run_id))
        raise


def _create(
    settings: Settings,
    session: Session,
    req: RunRequest,
    run_id: uuid.UUID,
    owner_key_id: int | None,
) -> RunRow:
    source = get_source(session, req.source)
    _check_source(source)
    if (256 + 2 * req.buffer) % (2**req.depth):
        raise InvalidInput(f"256 + 2*buffer must be a multiple of 2**depth ({2**req.depth})")
    check_classes(req)
    check_architecture(req.architecture)
    check_model_predicts_the_same(settings, req)
    if req.init_from_version is not None:  # 400 now, not a failed run later
        check_init_version(settings, req)
    if req.labels is not None:
        check_geojson(req.labels, "labels", strict=True)  # before a file is written
    labels_file = _labels_file(settings, req, run_id)
    _check_labels(labels_file, req, source)
    spec = req.spec()
    row = RunRow(
        id=run_id,
        model_name=req.model,
        source_id=source.id,
        labels_path=str(labels_file),
        params={**spec.model_dump(), "defaults_taken": req.defaults_taken()},
        state=RunState.QUEUED,
        owner_key_id=owner_key_id,
    )
    session.add(row)
    session.flush()
    return row


def _check_source(source: SourceInfo) -> None:
    if source.kind == "xyz":
        raise Unprocessable("training needs local imagery (a COG or chip folder), not an XYZ URL")
    if source.band_count not in (3, 4) or source.dtype != "uint8":
        raise Unprocessable(
            f"training needs 8-bit RGB imagery; source {source.id!r} has "
            f"{source.band_count} band(s) of {source.dtype}",
            band_count=source.band_count,
            dtype=source.dtype,
        )


def _check_labels(labels_file: Path, req: RunRequest, source: SourceInfo) -> None:
    """The labels read as they will be trained on, and over the imagery."""
    from tilesight.model.labels import is_raster, read_labels

    if is_raster(labels_file) and not req.classes:
        raise InvalidInput(
            "a label raster holds class values: name them in `classes`, background (value 0) "
            "first; building footprints come as GeoJSON or an OSM extract"
        )
    # InvalidInput when empty, not GeoJSON/OSM/a raster, or without a polygon of the classes
    try:
        labels = read_labels(labels_file, req.classes, req.class_property, req.ignore_value)
    except TilesightError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RuntimeError) as exc:
        # GDAL or shapely refusing what passed the checks above: the user's file, not a bug
        raise InvalidInput(
            f"the labels could not be read as GeoJSON, an OSM extract or a raster: {exc}"[:500]
        ) from exc
    if labels.raster is not None:
        check_raster_values(labels_file, len(req.classes), req.ignore_value)
    labels_4326 = _bounds_4326(labels.extent())
    if not box(*labels_4326).intersects(box(*source.bounds)):
        raise Unprocessable(
            "the labels do not overlap the imagery",
            labels_bounds=[round(v, 6) for v in labels_4326],
            source_bounds=list(source.bounds),
        )


def _labels_file(settings: Settings, req: RunRequest, run_id: uuid.UUID) -> Path:
    if (req.labels is None) == (req.labels_path is None):
        raise InvalidInput("give the footprints either inline as `labels` or as `labels_path`")
    if req.labels_path is not None:
        return local_path(settings, req.labels_path)
    path = inline_labels_file(settings, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        text = json.dumps(req.labels, allow_nan=False)
    except ValueError as exc:  # NaN or Infinity among the properties
        raise Unprocessable("labels must not hold NaN or Infinity", field="labels") from exc
    path.write_text(text)
    return path


def _bounds_4326(geoms_3857: list[shapely.Geometry]) -> tuple[float, float, float, float]:
    minx, miny, maxx, maxy = shapely.total_bounds(geoms_3857)
    west, south = mercantile.lnglat(minx, miny)
    east, north = mercantile.lnglat(maxx, maxy)
    return (west, south, east, north)


def enqueue_run(session: Session, sender: TaskSender, row: RunRow) -> None:
    """Queue the run's task after its row is committed. If the broker is down the run is
    marked failed (a row nobody will run must not read as queued) and the caller gets
    a 503 to retry."""
    try:
        sender.send_task(tasks.TRAINING_RUN, args=[str(row.id)], queue=tasks.Queue.GPU)
    except (OSError, KombuError) as exc:
        with session.begin():
            stored = get_run(session, row.id)
            stored.state, stored.error = RunState.FAILED, f"could not queue: {exc}"
            stored.finished_at = datetime.now(UTC)
        raise Unavailable(
            "the training queue is unreachable; try again shortly", retry_after=5
        ) from exc


def get_run(session: Session, run_id: uuid.UUID, viewer: Principal | None = None) -> RunRow:
    """Another key's run reads as missing (404), as jobs do, so ids cannot be probed."""
    from tilesight.errors import NotFound

    row = session.get(RunRow, run_id)
    owner = owner_filter(viewer)
    if row is None or (owner is not True and row.owner_key_id != owner):
        raise NotFound(f"no training run {run_id}")
    return row


def list_runs(
    session: Session, limit: int = 50, offset: int = 0, viewer: Principal | None = None
) -> list[RunRow]:
    query = select(RunRow).order_by(RunRow.created_at.desc(), RunRow.id)
    owner = owner_filter(viewer)
    if owner is not True:
        query = query.where(RunRow.owner_key_id == owner)
    return list(session.scalars(query.limit(limit).offset(offset)))


def cancel_run(session: Session, run_id: uuid.UUID, viewer: Principal | None = None) -> RunRow:
    row = get_run(session, run_id, viewer)
    if row.state in RunState.terminal():
        raise Conflict(f"training run {run_id} is already {row.state}")
    row.state = RunState.CANCELLED
    row.finished_at = datetime.now(UTC)
    return row


def execute_run(
    settings: Settings, sessions: sessionmaker[Session], run_id: uuid.UUID
) -> int | None:
    """Train, export and register one run; returns the new version (None if cancelled)."""
    from tilesight.training.pipeline import run_training

    with session_scope(sessions) as session:
        row = get_run(session, run_id)
        if row.state in RunState.terminal():
            return row.result_version
        row.state = RunState.RUNNING
        row.started_at = row.started_at or datetime.now(UTC)
        plan = _plan(settings, row, get_source(session, row.source_id or "").uri)
        model_name = row.model_name
    try:
        version_dir_, meta = run_training(plan, _progress_writer(sessions, run_id))
    except Cancelled:
        log.info("training run %s cancelled", run_id)
        return None
    except Exception as exc:
        with session_scope(sessions) as session:
            row = get_run(session, run_id)
            row.state, row.error = RunState.FAILED, f"{type(exc).__name__}: {exc}"
            row.finished_at = datetime.now(UTC)
        raise
    assert version_dir_ is not None
    _publish(settings, sessions, model_name)
    with session_scope(sessions) as session:
        row = get_run(session, run_id)
        row.state, row.progress = RunState.DONE, 100.0
        row.result_version = int(version_dir_.name)
        row.finished_at = datetime.now(UTC)
        row.history = meta["metrics"].get("history", row.history)
        row.params = {**row.params, "validation": meta["validation"]}
    return int(version_dir_.name)


def _plan(settings: Settings, row: RunRow, source_uri: str) -> Any:
    """The worker's plan for a stored run: its spec (stored resolved) on this machine."""
    from tilesight.training.pipeline import TrainingPlan

    params = dict(row.params)
    spec = TrainingSpec.from_stored(params)
    init_from = None
    if spec.init_from_version is not None:
        init_from = version_dir(settings.model_repo, row.model_name, spec.init_from_version)
    return TrainingPlan.from_spec(
        spec,
        sources=[(Path(source_uri), Path(row.labels_path))],
        model_repo=settings.model_repo,
        model_name=row.model_name,
        run_dir=settings.home / "training" / str(row.id),
        cache_dir=settings.home / "chips",
        init_from=init_from,
        resume=True,
    )


def _progress_writer(sessions: sessionmaker[Session], run_id: uuid.UUID) -> Any:
    """A progress callback that writes the run's epoch, percent and history at most once
    a second (every epoch's end is written), and stops a cancelled run."""
    last_write = 0.0

    def on_progress(p: Any) -> None:
        nonlocal last_write
        if p.phase != "epoch" and time.monotonic() - last_write < 1.0:
            return
        last_write = time.monotonic()
        with session_scope(sessions) as session:
            row = get_run(session, run_id)
            if row.state == RunState.CANCELLED:
                raise Cancelled
            row.epoch = p.epoch
            row.progress = round(p.fraction * 100, 1)
            if p.phase == "epoch" and p.metrics:
                row.history = [*row.history, {"epoch": p.epoch, **p.metrics}]

    return on_progress


def _publish(settings: Settings, sessions: sessionmaker[Session], model: str) -> None:
    """Make the new version servable: the model's Triton files, its database rows, and a
    load request. Triton (explicit mode) loads the new version beside the old, which
    keeps serving until the new one is ready; if Triton is down, it loads the version
    when it next starts."""
    from tilesight.registry import ensure_loaded, ensure_served, sync_models
    from tilesight.triton import TritonClient

    if ensure_served(settings, model):
        log.info("model %s is new: config.pbtxt and backend written", model)
    with session_scope(sessions) as session:
        sync_models(settings, session)  # links the backend into the new version folder

    async def load() -> None:
        client = TritonClient(settings.triton_url, settings.triton_timeout_s)
        try:
            await ensure_loaded(client, model, settings)
        finally:
            await client.close()

    try:
        asyncio.run(load())
    except TilesightError as exc:
        log.warning("Triton did not load %s: %s", model, exc.message)
