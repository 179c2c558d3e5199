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
import contextlib
import json
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mercantile
import shapely
from shapely.geometry import box
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from tilesight.db import session_scope
from tilesight.errors import Conflict, InvalidInput, NotFound, TilesightError, Unprocessable
from tilesight.geocheck import check_geojson
from tilesight.imagery.register import local_path
from tilesight.imagery.sources import get_source
from tilesight.keys import Principal, owner_filter
from tilesight.settings import Settings
from tilesight.tables import TrainingRun as RunRow
from tilesight.training_checks import (
    check_classes,
    check_model_predicts_the_same,
    check_raster_values,
)

log = logging.getLogger(__name__)

ACTIVE = ("queued", "running")
FINAL = ("done", "failed", "cancelled")


class Cancelled(Exception):
    """Raised from the progress callback to stop a run that was cancelled."""


@dataclass(frozen=True)
class RunRequest:
    """What a user asks for; field ranges are checked again by TrainConfig."""

    model: str
    source: str
    labels_path: str | None
    labels: dict[str, Any] | None
    epochs: int = 20
    batch_size: int = 8
    lr: float = 2e-3
    width: int = 8
    depth: int = 4
    zoom: int = 19
    buffer: int = 32
    border: bool = False
    init_from_version: int | None = None
    freeze_encoder_epochs: int = 0
    patience: int = 10
    max_steps_per_epoch: int | None = None
    # multi-class segmentation (land cover...): class names, background first; () = buildings
    classes: tuple[str, ...] = ()
    class_property: str = "class"  # the polygon property that names a polygon's class
    class_weights: tuple[float, ...] | None = None  # loss weight per class, against imbalance
    ignore_value: int | None = None  # the label raster's value for unlabelled pixels

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(n.strip() for n in self.classes or ()))
        if self.class_weights is not None:
            object.__setattr__(self, "class_weights", tuple(self.class_weights))


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
            _inline_labels_file(settings, run_id).unlink(missing_ok=True)
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
    from tilesight.model.labels import is_raster, load_labels
    from tilesight.model.train import TrainConfig

    source = get_source(session, req.source)
    if source.kind == "xyz":
        raise Unprocessable("training needs local imagery (a COG or chip folder), not an XYZ URL")
    if source.band_count not in (3, 4) or source.dtype != "uint8":
        raise Unprocessable(
            f"training needs 8-bit RGB imagery; source {source.id!r} has "
            f"{source.band_count} band(s) of {source.dtype}",
            band_count=source.band_count,
            dtype=source.dtype,
        )
    if req.depth < 1 or req.depth > 6 or req.width < 4 or req.width > 128:
        raise InvalidInput("width must be 4..128 and depth 1..6")
    if (256 + 2 * req.buffer) % (2**req.depth):
        raise InvalidInput(f"256 + 2*buffer must be a multiple of 2**depth ({2**req.depth})")
    if not 12 <= req.zoom <= 22:
        raise InvalidInput("zoom must be between 12 and 22")
    TrainConfig(epochs=req.epochs, batch_size=req.batch_size, lr=req.lr, patience=req.patience)
    check_classes(req)
    check_model_predicts_the_same(settings, req)
    if req.init_from_version is not None:
        version_dir = settings.model_repo / req.model / str(req.init_from_version)
        if not (version_dir / "metadata.json").exists():
            raise NotFound(f"model {req.model!r} has no version {req.init_from_version}")
        from tilesight.model.job import check_init_from

        check_init_from(version_dir, req.width, req.depth)  # 400 now, not a failed run later
    if req.labels is not None:
        check_geojson(req.labels, "labels", strict=True)  # before a file is written

    labels_file = _labels_file(settings, req, run_id)
    if is_raster(labels_file) and not req.classes:
        raise InvalidInput(
            "a label raster holds class values: name them in `classes`, background (value 0) "
            "first; building footprints come as GeoJSON or an OSM extract"
        )
    # InvalidInput when empty, not GeoJSON/OSM/a raster, or without a polygon of the classes
    try:
        labels = load_labels(labels_file, req.classes, req.class_property, req.ignore_value)
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
    row = RunRow(
        id=run_id,
        model_name=req.model,
        source_id=source.id,
        labels_path=str(labels_file),
        params={k: v for k, v in req.__dict__.items() if k not in ("labels", "labels_path")},
        state="queued",
        owner_key_id=owner_key_id,
    )
    session.add(row)
    session.flush()
    return row


def _inline_labels_file(settings: Settings, run_id: uuid.UUID) -> Path:
    return settings.home / "labels" / f"{run_id}.geojson"


def _labels_file(settings: Settings, req: RunRequest, run_id: uuid.UUID) -> Path:
    if (req.labels is None) == (req.labels_path is None):
        raise InvalidInput("give the footprints either inline as `labels` or as `labels_path`")
    if req.labels_path is not None:
        return local_path(settings, req.labels_path)
    path = _inline_labels_file(settings, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        text = json.dumps(req.labels, allow_nan=False)
    except ValueError as exc:  # NaN or Infinity among the properties
        raise Unprocessable("labels must not hold NaN or Infinity", field="labels") from exc
    path.write_text(text)
    return path


def server_paths(settings: Settings, req: RunRequest, run_id: uuid.UUID) -> dict[str, str]:
    """The server's own paths an error may hold, each with the words a user knows it by."""
    label = "the inline `labels`" if req.labels is not None else f"`{req.labels_path}`"
    paths = {str(_inline_labels_file(settings, run_id)): label}
    if req.labels_path is not None:
        with contextlib.suppress(OSError, ValueError):
            paths[str(local_path(settings, req.labels_path))] = label
    for root in settings.data_roots:
        paths[str(root)] = "<data root>"
        with contextlib.suppress(OSError, ValueError):
            paths[str(root.resolve())] = "<data root>"
    paths[str(settings.model_repo)] = "<model repository>"
    paths[str(settings.home)] = "<server home>"
    return paths


def in_users_terms(exc: TilesightError, paths: dict[str, str]) -> None:
    """Rewrite a refusal's message and details in place, longest path first (a labels
    file lies under the home folder), so no server path reaches the client."""
    ordered = sorted(paths.items(), key=lambda item: len(item[0]), reverse=True)

    def scrub(value: Any) -> Any:
        if isinstance(value, str):
            for path, words in ordered:
                value = value.replace(path, words)
            return value
        if isinstance(value, list | tuple):
            return [scrub(v) for v in value]
        if isinstance(value, dict):
            return {k: scrub(v) for k, v in value.items()}
        return value

    exc.message = scrub(exc.message)
    exc.detail = scrub(exc.detail)
    exc.args = (exc.message,)


def _bounds_4326(geoms_3857: list[shapely.Geometry]) -> tuple[float, float, float, float]:
    minx, miny, maxx, maxy = shapely.total_bounds(geoms_3857)
    west, south = mercantile.lnglat(minx, miny)
    east, north = mercantile.lnglat(maxx, maxy)
    return (west, south, east, north)


def _ask_triton_to_load(settings: Settings, model: str) -> None:
    """Triton (explicit mode) loads the new version beside the old, which keeps serving until
    the new one is ready. If Triton is down, it loads the version when it next starts."""
    from tilesight.errors import TilesightError
    from tilesight.registry import ensure_loaded
    from tilesight.triton import TritonClient

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


def get_run(session: Session, run_id: uuid.UUID, viewer: Principal | None = None) -> RunRow:
    """Another key's run reads as missing (404), as jobs do, so ids cannot be probed."""
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
    if row.state in FINAL:
        raise Conflict(f"training run {run_id} is already {row.state}")
    row.state = "cancelled"
    row.finished_at = datetime.now(UTC)
    return row


def execute_run(
    settings: Settings, sessions: sessionmaker[Session], run_id: uuid.UUID
) -> int | None:
    """Train, export and register one run; returns the new version (None if cancelled)."""
    from tilesight.model.data import ChipSpec
    from tilesight.model.job import TrainingRun, run_training
    from tilesight.model.train import Progress, TrainConfig

    with session_scope(sessions) as session:
        row = get_run(session, run_id)
        if row.state in FINAL:
            return row.result_version
        row.state = "running"
        row.started_at = row.started_at or datetime.now(UTC)
        params = dict(row.params)
        source_uri = get_source(session, row.source_id or "").uri
        labels = Path(row.labels_path)
        model_name = row.model_name

    init_from = None
    if params.get("init_from_version") is not None:
        init_from = settings.model_repo / model_name / str(params["init_from_version"])
    run = TrainingRun(
        sources=[(Path(source_uri), labels)],
        model_repo=settings.model_repo,
        model_name=model_name,
        chips=ChipSpec(
            zoom=params["zoom"],
            buffer=params["buffer"],
            border=params["border"],
            classes=tuple(params.get("classes") or ()),
            class_property=params.get("class_property", "class"),
            ignore_value=params.get("ignore_value"),
        ),
        width=params["width"],
        depth=params["depth"],
        cache_dir=settings.home / "chips",
        init_from=init_from,
        loop=TrainConfig(
            epochs=params["epochs"],
            batch_size=params["batch_size"],
            lr=params["lr"],
            patience=params["patience"],
            freeze_encoder_epochs=params["freeze_encoder_epochs"],
            max_steps_per_epoch=params.get("max_steps_per_epoch"),
            class_weights=tuple(weights) if (weights := params.get("class_weights")) else None,
            run_dir=settings.home / "training" / str(run_id),
            resume=True,
        ),
    )
    last_write = 0.0

    def on_progress(p: Progress) -> None:
        nonlocal last_write
        if p.phase != "epoch" and time.monotonic() - last_write < 1.0:
            return
        last_write = time.monotonic()
        with session_scope(sessions) as session:
            row = get_run(session, run_id)
            if row.state == "cancelled":
                raise Cancelled
            row.epoch = p.epoch
            row.progress = round(p.fraction * 100, 1)
            if p.phase == "epoch" and p.metrics:
                row.history = [*row.history, {"epoch": p.epoch, **p.metrics}]

    try:
        version_dir, meta = run_training(run, on_progress)
    except Cancelled:
        log.info("training run %s cancelled", run_id)
        return None
    except Exception as exc:
        with session_scope(sessions) as session:
            row = get_run(session, run_id)
            row.state, row.error = "failed", f"{type(exc).__name__}: {exc}"
            row.finished_at = datetime.now(UTC)
        raise
    assert version_dir is not None
    version = int(version_dir.name)
    from tilesight.registry import ensure_served, sync_models

    if ensure_served(settings, model_name):
        log.info("model %s is new: config.pbtxt and backend written", model_name)
    with session_scope(sessions) as session:
        sync_models(settings, session)  # links the backend into the new version folder
    _ask_triton_to_load(settings, model_name)
    with session_scope(sessions) as session:
        row = get_run(session, run_id)
        row.state, row.progress, row.result_version = "done", 100.0, version
        row.finished_at = datetime.now(UTC)
        row.history = meta["metrics"].get("history", row.history)
    return version
