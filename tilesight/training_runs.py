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
import math
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mercantile
import numpy as np
import shapely
from shapely.geometry import box
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from tilesight.db import session_scope
from tilesight.errors import Conflict, InvalidInput, NotFound, Unprocessable
from tilesight.imagery.register import local_path
from tilesight.imagery.sources import get_source
from tilesight.settings import Settings
from tilesight.tables import TrainingRun as RunRow

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


def create_run(settings: Settings, session: Session, req: RunRequest) -> RunRow:
    """Validate a request and store the run; the caller queues the task after commit."""
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
    _check_classes(req)
    _check_model_predicts_the_same(settings, req)
    if req.init_from_version is not None:
        version_dir = settings.model_repo / req.model / str(req.init_from_version)
        if not (version_dir / "metadata.json").exists():
            raise NotFound(f"model {req.model!r} has no version {req.init_from_version}")
        from tilesight.model.job import check_init_from

        check_init_from(version_dir, req.width, req.depth)  # 400 now, not a failed run later

    run_id = uuid.uuid4()
    labels_file = _labels_file(settings, req, run_id)
    if is_raster(labels_file) and not req.classes:
        raise InvalidInput(
            "a label raster holds class values: name them in `classes`, background (value 0) "
            "first; building footprints come as GeoJSON or an OSM extract"
        )
    # InvalidInput when empty, not GeoJSON/OSM/a raster, or without a polygon of the classes
    labels = load_labels(labels_file, req.classes, req.class_property, req.ignore_value)
    if labels.raster is not None:
        _check_raster_values(labels_file, len(req.classes), req.ignore_value)
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
    )
    session.add(row)
    session.flush()
    return row


def _labels_file(settings: Settings, req: RunRequest, run_id: uuid.UUID) -> Path:
    if (req.labels is None) == (req.labels_path is None):
        raise InvalidInput("give the footprints either inline as `labels` or as `labels_path`")
    if req.labels_path is not None:
        return local_path(settings, req.labels_path)
    path = settings.home / "labels" / f"{run_id}.geojson"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(req.labels))
    return path


def _check_classes(req: RunRequest) -> None:
    """What the class fields must agree on, with each other and with `border`."""
    from tilesight.overlay import BACKGROUND_NAMES

    names = req.classes
    if not names:
        extra = [k for k in ("class_weights", "ignore_value") if getattr(req, k) is not None]
        if extra:
            raise InvalidInput(
                f"{' and '.join(extra)} belong to a multi-class run: give `classes` "
                "(background first) as well, or leave them out for a building model",
                fields=extra,
            )
        return
    if not 2 <= len(names) <= 32 or not all(names):
        raise InvalidInput("give 2 to 32 non-empty class names, background first")
    lower = [n.lower() for n in names]
    twice = sorted({n for n in lower if lower.count(n) > 1})
    if twice:
        raise InvalidInput(f"class names must differ (case aside): {twice} appear twice")
    if lower[0] not in BACKGROUND_NAMES:
        raise InvalidInput(
            f"the first class is the background (pixels no polygon covers, raster value 0), "
            f"which metrics and the overlay leave out: name it 'background', not {names[0]!r}",
            background_names=sorted(BACKGROUND_NAMES),
        )
    if req.border:
        raise InvalidInput(
            "the border class separates touching building footprints: leave out `border` "
            "for a multi-class run"
        )
    weights = req.class_weights
    if weights is not None:
        if len(weights) != len(names):
            raise InvalidInput(
                f"{len(weights)} class_weights for {len(names)} classes: give one weight per "
                "class, in the order of `classes`",
                classes=list(names),
            )
        if not all(0 <= w <= 1000 for w in weights) or not any(w > 0 for w in weights):
            raise InvalidInput("class_weights are 0..1000 and at least one is above 0")
    value = req.ignore_value
    if value is not None:
        if not 0 <= value <= 255:
            raise InvalidInput("ignore_value is a label raster value, 0..255")
        if value < len(names):
            raise InvalidInput(
                f"ignore_value {value} is the value of class {names[value]!r}: give the value "
                f"the raster uses for unlabelled pixels, one no class uses (e.g. 255)"
            )


def _check_model_predicts_the_same(settings: Settings, req: RunRequest) -> None:
    """A run adds a version to `req.model`, and a promoted version replaces the overlay
    and the area jobs' model: every version of one model predicts the same classes."""
    from tilesight.registry import model_metadata, version_dirs

    versions = version_dirs(settings, req.model)
    if not versions:
        return
    meta = model_metadata(settings, req.model, max(versions))
    multiclass = meta.get("architecture", {}).get("activation") == "softmax"
    have = [str(c.get("name")) for c in meta.get("classes", [])]
    if req.classes and (not multiclass or have != list(req.classes)):
        raise Conflict(
            f"model {req.model!r} predicts {have}; a run with classes {list(req.classes)} "
            "makes another model: give it a `model` name of its own",
            model=req.model,
            classes=have,
        )
    if not req.classes and multiclass:
        raise Conflict(
            f"model {req.model!r} predicts the classes {have}: give them as `classes` with "
            "its labels, or another `model` name for a building model",
            model=req.model,
            classes=have,
        )


def _check_raster_values(path: Path, classes: int, ignore_value: int | None) -> None:
    """Refuse a label raster with values beyond the named classes at submission, not
    after its chips are cut. Read decimated (nearest, at most 2048 px a side), so a rare
    stray value can still stop the run later, with the same message."""
    import rasterio
    from rasterio.enums import Resampling

    with rasterio.open(path) as src:
        scale = max(1.0, max(src.width, src.height) / 2048)
        shape = (math.ceil(src.height / scale), math.ceil(src.width / scale))
        band = src.read(1, out_shape=shape, resampling=Resampling.nearest, masked=True)
    values = np.unique(np.ma.compressed(band)).astype(np.int64)
    bad = [int(v) for v in values if v != ignore_value and not 0 <= v < classes]
    if bad:
        raise InvalidInput(
            f"label raster {path.name} holds class value(s) {bad[:10]} but {classes} classes "
            f"(0..{classes - 1}) were named: name every class in order, or give the value "
            "of unlabelled pixels as `ignore_value`",
            values=bad[:10],
        )


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


def get_run(session: Session, run_id: uuid.UUID) -> RunRow:
    row = session.get(RunRow, run_id)
    if row is None:
        raise NotFound(f"no training run {run_id}")
    return row


def list_runs(session: Session, limit: int = 50, offset: int = 0) -> list[RunRow]:
    query = select(RunRow).order_by(RunRow.created_at.desc()).limit(limit).offset(offset)
    return list(session.scalars(query))


def cancel_run(session: Session, run_id: uuid.UUID) -> RunRow:
    row = get_run(session, run_id)
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
