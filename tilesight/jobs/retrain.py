"""What a job's reviews teach: the reviewed area, its buildings as the reviewers left them,
a training run that fine-tunes the job's model version on them, and the object F1 of any
version on that area.

The reviewed area is the bounding box of every reviewed outline (correct, wrong, edited
and added). Inside it, the truth is the job's buildings as reviewed: edited outlines,
added buildings, wrong ones out, and a building the model found there that no one judged
taken as correct (the reviewer saw it and did not object). So review an area completely;
the viewer's `next` walks the buildings in order. The model's wrong buildings are
explicit background: they lie inside the area, where nothing else is labelled, and they
are written into the run's labels file as `building=no` features, so the run's record
says what they were (training reads `building=no` as "not a building").
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import shapely
from shapely.geometry import box, mapping
from sqlalchemy import text
from sqlalchemy.orm import Session

from tilesight import registry, tables
from tilesight.errors import Conflict, InvalidInput
from tilesight.jobs import export
from tilesight.jobs.evaluate import match
from tilesight.jobs.reviews import visible_job
from tilesight.keys import Principal, owner_filter
from tilesight.model.instances import border_channel
from tilesight.settings import Settings
from tilesight.training.service import create_run
from tilesight.training.spec import RunRequest

#: Reviewed buildings (any verdict) a retrain needs. Few, because a reviewer's first round
#: is small and a fine-tune keeps its base's weights when it cannot beat them; issue 15
#: measured adaptation on 30-150 buildings, which is what helps.
MIN_REVIEWED = 4

WRONG_SQL = """
    SELECT ST_AsBinary(b.geom) FROM building_reviews r JOIN buildings b ON b.id = r.building_id
    WHERE r.job_id = :job AND r.verdict = 'wrong'
"""
REVIEWED_GEOMS_SQL = """
    SELECT ST_AsBinary(coalesce(r.geom, b.geom)) FROM building_reviews r
    LEFT JOIN buildings b ON b.id = r.building_id
    WHERE r.job_id = :job AND NOT (r.building_id IS NULL AND r.verdict = 'wrong')
"""


@dataclass(frozen=True)
class Truth:
    area: tuple[float, float, float, float]  # west, south, east, north
    buildings: list[shapely.Geometry]  # as reviewed, EPSG:4326
    wrong: list[shapely.Geometry]  # the model's false positives
    reviewed: int


def _wkbs(session: Session, sql: str, job_id: uuid.UUID) -> list[shapely.Geometry]:
    return [shapely.from_wkb(bytes(r[0])) for r in session.execute(text(sql), {"job": job_id})]


def _inside(geoms: list[shapely.Geometry], area: shapely.Geometry) -> list[shapely.Geometry]:
    return [g for g in geoms if area.contains(g.representative_point())]


def truth(session: Session, job_id: uuid.UUID) -> Truth:
    """The reviewed area and its buildings; a job with no reviews has no area (409)."""
    reviewed = _wkbs(session, REVIEWED_GEOMS_SQL, job_id)
    if not reviewed:
        raise Conflict(
            f"job {job_id} has no reviews yet; mark some buildings correct or wrong first",
            reviewed=0,
            needed=MIN_REVIEWED,
        )
    area = shapely.total_bounds(reviewed)
    west, south, east, north = (float(v) for v in area)
    frame = export.buildings_frame(session, job_id, reviewed=True)
    region = box(west, south, east, north)
    return Truth(
        area=(west, south, east, north),
        buildings=_inside(list(frame.geometry), region),
        wrong=_wkbs(session, WRONG_SQL, job_id),
        reviewed=len(reviewed),
    )


def score(
    session: Session, job_id: uuid.UUID, version: int, viewer: Principal | None = None
) -> dict[str, Any]:
    """Object F1 (IoU >= 0.5) of `version` on the reviewed area, against its truth.

    The job's own version is scored from the job's raw buildings; another version from
    the newest finished job of the same source and model whose area covers the reviewed
    one (409 naming the AOI to submit, when there is none)."""
    job = visible_job(session, job_id, viewer)
    found = truth(session, job_id)
    region = box(*found.area)
    other = job if version == job.model_version else _covering_job(session, job, version, viewer)
    if other is None:
        raise Conflict(
            f"no finished job of {job.model_name} version {version} covers the reviewed area; "
            "submit one with this AOI and version, then ask again",
            aoi=mapping(region),
            source=job.source_id,
            version=version,
        )
    predictions = _inside(list(export.buildings_frame(session, other.id).geometry), region)
    result = match(predictions, found.buildings)
    return {**result, "version": version, "job": str(other.id), "area": list(found.area)}


def _covering_job(
    session: Session, job: tables.Job, version: int, viewer: Principal | None
) -> tables.Job | None:
    west, south, east, north = truth(session, job.id).area
    owner = owner_filter(viewer)
    sql = """
        SELECT id FROM jobs
        WHERE source_id = :source AND model_name = :model AND model_version = :version
          AND state = 'done'
          AND ST_Covers(aoi, ST_MakeEnvelope(:west, :south, :east, :north, 4326))
          {owner}
        ORDER BY finished_at DESC LIMIT 1
    """
    params: dict[str, Any] = {
        "source": job.source_id,
        "model": job.model_name,
        "version": version,
        "west": west,
        "south": south,
        "east": east,
        "north": north,
    }
    clause = ""
    if owner is not True:
        clause = "AND owner_key_id IS NOT DISTINCT FROM :owner"
        params["owner"] = owner
    found = session.execute(text(sql.format(owner=clause)), params).scalar()
    return session.get(tables.Job, found) if found is not None else None


def labels_geojson(found: Truth) -> dict[str, Any]:
    """The run's labels: the truth as buildings, the model's wrong ones as building=no."""
    features = [
        {"type": "Feature", "properties": {"building": "yes"}, "geometry": mapping(g)}
        for g in found.buildings
    ] + [
        {
            "type": "Feature",
            "properties": {"building": "no", "review": "wrong"},
            "geometry": mapping(g),
        }
        for g in found.wrong
    ]
    return {"type": "FeatureCollection", "features": features}


def _shape_of(settings: Settings, job: tables.Job) -> dict[str, Any]:
    """The network, shape, zoom and context of the job's version: a fine-tune keeps them."""
    return shape_of(registry.model_metadata(settings, job.model_name, job.model_version))


def shape_of(meta: dict[str, Any]) -> dict[str, Any]:
    """The spec fields a version's metadata fixes for a run that starts from it."""
    arch = meta.get("architecture", {})
    classes = [c for c in meta.get("classes", []) if isinstance(c, dict)]
    shape = {
        "architecture": arch.get("name"),  # absent in versions from before names: unet
        "width": arch.get("width"),
        "depth": arch.get("depth"),
        "zoom": meta.get("zoom"),
        "buffer": meta.get("buffer"),
        "border": border_channel(classes, len(classes)) is not None or None,
    }
    return {k: v for k, v in shape.items() if v is not None}


def create_retrain(
    session: Session,
    settings: Settings,
    job_id: uuid.UUID,
    viewer: Principal | None = None,
    **hyperparameters: Any,
) -> tables.TrainingRun:
    """A fine-tune of the job's model version on its reviewed area (not committed, not
    queued: the caller does both). The new version is not promoted."""
    job = visible_job(session, job_id, viewer)
    found = truth(session, job_id)
    if found.reviewed < MIN_REVIEWED:
        more = MIN_REVIEWED - found.reviewed
        raise InvalidInput(
            f"{found.reviewed} buildings are reviewed; review {more} more (at least "
            f"{MIN_REVIEWED}) before retraining",
            reviewed=found.reviewed,
            needed=MIN_REVIEWED,
            more=more,
        )
    if not found.buildings:
        raise InvalidInput(
            "the reviewed area holds no building: mark at least one correct, or draw one"
        )
    request = RunRequest(
        model=job.model_name,
        source=job.source_id,
        labels=labels_geojson(found),
        init_from_version=job.model_version,
        **_shape_of(settings, job),
        **{k: v for k, v in hyperparameters.items() if v is not None},
    )
    owner = viewer.key_id if viewer is not None else None
    return create_run(settings, session, request, owner_key_id=owner)
