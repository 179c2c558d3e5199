"""Reviewers' verdicts on a job's buildings: correct, wrong, edited (a new outline), or
added (a building the model missed).

Who may review: whoever may read the job (its owner's key, or an admin); another key's
job reads as missing. Reviews are written only once the job is done, so the buildings
they name no longer change.

Two reviewers on one job must not lose each other's work silently, so every write names
the version of the building's review it was based on (0: "not reviewed yet", as the
reviewer saw it). A batch holding one stale version is refused whole with a 409 that
lists the buildings, their current verdict and who wrote it; nothing is written.

What happens to reviews with their job: they belong to it, and go when it goes (a
deleted source deletes its jobs, ON DELETE CASCADE). A job is never re-run in place: a
new job over the same area is a new job, with new building ids, and starts unreviewed.

Functions flush and leave the commit to the caller.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import shapely
from geoalchemy2.shape import from_shape, to_shape
from pyproj import Geod
from shapely.geometry import MultiPolygon, Polygon, mapping, shape
from shapely.validation import explain_validity
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tilesight import tables
from tilesight.errors import Conflict, Unprocessable
from tilesight.geocheck import check_geojson
from tilesight.jobs import service
from tilesight.keys import Principal

VERDICTS = ("correct", "wrong", "edited", "added")
WITH_GEOMETRY = ("edited", "added")
MAX_VERTICES = 5_000  # one building outline; a drawn footprint has tens
MAX_AREA_M2 = 100_000.0  # the largest building footprints are ~ 10^5 m²
MIN_AREA_M2 = 1.0


@dataclass(frozen=True)
class ReviewInput:
    """One item of a batch: a predicted building (`building_id`), an added building
    already stored (`review_id`), or a new added building (neither)."""

    verdict: str
    building_id: int | None = None
    review_id: int | None = None
    geometry: dict[str, Any] | None = None
    version: int = 0


@dataclass(frozen=True)
class Review:
    id: int
    building_id: int | None
    verdict: str
    geometry: dict[str, Any] | None
    version: int
    by: str | None  # the prefix of the API key that wrote it; None with keys off
    updated_at: datetime


@dataclass
class ReviewSummary:
    reviews: list[Review]
    counts: dict[str, int] = field(default_factory=dict)


def visible_job(session: Session, job_id: uuid.UUID, viewer: Principal | None) -> tables.Job:
    service.get_job(session, job_id, viewer)  # 404 for a job this key may not see
    job = session.get(tables.Job, job_id)
    assert job is not None
    return job


def outline(obj: Any, where: str, job: tables.Job) -> Polygon | MultiPolygon:
    """A building outline from GeoJSON, refused (422) unless it is a valid polygon of a
    building's size that touches the job's area."""
    check_geojson(obj, where, strict=True)
    if not isinstance(obj, dict) or obj.get("type") not in ("Polygon", "MultiPolygon"):
        raise Unprocessable(f"{where} must be a GeoJSON Polygon or MultiPolygon", field=where)
    try:
        geom = shape(obj)
    except (ValueError, TypeError, AttributeError, IndexError) as exc:
        raise Unprocessable(f"{where} is not a readable polygon: {exc}", field=where) from exc
    if geom.is_empty:
        raise Unprocessable(f"{where} is empty", field=where)
    if shapely.get_num_coordinates(geom) > MAX_VERTICES:
        raise Unprocessable(f"{where} has more than {MAX_VERTICES} vertices", field=where)
    if not geom.is_valid:
        raise Unprocessable(
            f"{where} is not a valid polygon ({explain_validity(geom)}); redraw it without "
            "crossing edges",
            field=where,
        )
    area = _area_m2(geom)
    if not MIN_AREA_M2 <= area <= MAX_AREA_M2:
        raise Unprocessable(
            f"{where} covers {area:.1f} m²; a building outline covers "
            f"{MIN_AREA_M2:g} to {MAX_AREA_M2:g} m² (are the coordinates lon, lat?)",
            field=where,
        )
    if not to_shape(job.aoi).intersects(geom):
        raise Unprocessable(f"{where} lies outside the job's area", field=where)
    return geom


def _area_m2(geom: Polygon | MultiPolygon) -> float:
    return abs(Geod(ellps="WGS84").geometry_area_perimeter(geom)[0])


def _check_items(items: list[ReviewInput]) -> None:
    """The shape of each item, before the database is asked anything."""
    seen: set[tuple[str, int]] = set()
    for i, item in enumerate(items):
        where = f"reviews[{i}]"
        if item.verdict not in VERDICTS:
            raise Unprocessable(f"{where}.verdict must be one of {list(VERDICTS)}", field=where)
        if item.building_id is not None and item.review_id is not None:
            raise Unprocessable(f"{where}: give building_id or review_id, not both", field=where)
        if item.building_id is not None and item.verdict == "added":
            raise Unprocessable(
                f"{where}: `added` is for a building the model missed; a found building is "
                "correct, wrong or edited",
                field=where,
            )
        if item.building_id is None and item.review_id is None and item.verdict != "added":
            raise Unprocessable(
                f"{where}: name the building (building_id) this {item.verdict!r} is about",
                field=where,
            )
        if item.review_id is not None and item.verdict not in ("added", "wrong"):
            raise Unprocessable(
                f"{where}: an added building (review_id) can be redrawn (added) or withdrawn "
                "(wrong)",
                field=where,
            )
        if item.verdict in WITH_GEOMETRY and item.geometry is None:
            raise Unprocessable(
                f"{where}: a {item.verdict!r} review needs its geometry", field=where
            )
        if item.verdict not in WITH_GEOMETRY and item.geometry is not None:
            raise Unprocessable(
                f"{where}: geometry is only for edited or added buildings", field=where
            )
        key = ("b", item.building_id) if item.building_id is not None else ("r", item.review_id)
        if key[1] is not None:
            if key in seen:
                raise Unprocessable(f"{where} names the same building as an earlier item")
            seen.add(key)  # type: ignore[arg-type]


def _current(
    session: Session, job_id: uuid.UUID, items: list[ReviewInput]
) -> tuple[dict[int, tables.BuildingReview], dict[int, tables.BuildingReview]]:
    """The stored reviews the batch names, locked until the caller commits."""
    building_ids = [i.building_id for i in items if i.building_id is not None]
    review_ids = [i.review_id for i in items if i.review_id is not None]
    by_building: dict[int, tables.BuildingReview] = {}
    by_id: dict[int, tables.BuildingReview] = {}
    if building_ids:
        rows = session.scalars(
            select(tables.BuildingReview)
            .where(
                tables.BuildingReview.job_id == job_id,
                tables.BuildingReview.building_id.in_(building_ids),
            )
            .with_for_update()
        ).all()
        by_building = {r.building_id: r for r in rows if r.building_id is not None}
    if review_ids:
        rows = session.scalars(
            select(tables.BuildingReview)
            .where(
                tables.BuildingReview.job_id == job_id,
                tables.BuildingReview.id.in_(review_ids),
                tables.BuildingReview.building_id.is_(None),
            )
            .with_for_update()
        ).all()
        by_id = {r.id: r for r in rows}
    return by_building, by_id


def _check_known(
    session: Session,
    job_id: uuid.UUID,
    items: list[ReviewInput],
    by_id: dict[int, tables.BuildingReview],
) -> None:
    """Every building and added review the batch names belongs to this job (422 naming
    the ones that do not)."""
    wanted = {i.building_id for i in items if i.building_id is not None}
    found = set(
        session.scalars(
            select(tables.Building.id).where(
                tables.Building.job_id == job_id, tables.Building.id.in_(wanted)
            )
        ).all()
    )
    missing = sorted(wanted - found)
    if missing:
        raise Unprocessable(
            f"buildings {missing} are not in job {job_id}; review the ids of its buildings.geojson",
            missing_building_ids=missing,
        )
    unknown = sorted({i.review_id for i in items if i.review_id is not None} - set(by_id))
    if unknown:
        raise Unprocessable(
            f"reviews {unknown} are not added buildings of job {job_id}",
            missing_review_ids=unknown,
        )


def apply_reviews(
    session: Session,
    job_id: uuid.UUID,
    items: list[ReviewInput],
    viewer: Principal | None = None,
) -> ReviewSummary:
    """Write a batch of reviews atomically; see the module docstring for the rules."""
    job = visible_job(session, job_id, viewer)
    if job.state != "done":
        raise Conflict(
            f"job {job_id} is {job.state}; its buildings can be reviewed once it is done",
            state=job.state,
        )
    if not items:
        raise Unprocessable("send at least one review", field="reviews")
    _check_items(items)
    geoms = [
        outline(i.geometry, f"reviews[{n}].geometry", job) if i.geometry is not None else None
        for n, i in enumerate(items)
    ]
    by_building, by_id = _current(session, job_id, items)
    _check_known(session, job_id, items, by_id)
    stale = []
    for item in items:
        row = by_building.get(item.building_id or -1) or by_id.get(item.review_id or -1)
        current = row.version if row is not None else 0
        if item.version != current:
            stale.append(_stale(item, row, current))
    if stale:
        raise Conflict(
            f"{len(stale)} of these buildings were reviewed by someone else since you loaded "
            f"them, so nothing was saved; reload GET /jobs/{job_id}/reviews, look at these "
            "buildings again and send their current version",
            stale=stale,
        )
    key_id = viewer.key_id if viewer is not None else None
    now = func.now()
    for item, geom in zip(items, geoms, strict=True):
        row = by_building.get(item.building_id or -1) or by_id.get(item.review_id or -1)
        if row is None:
            row = tables.BuildingReview(
                job_id=job_id, building_id=item.building_id, version=0, created_at=now
            )
            session.add(row)
        row.verdict = item.verdict
        if geom is not None:
            row.geom = from_shape(geom, srid=4326)
        elif item.building_id is not None:
            row.geom = None  # correct or wrong judge the model's own outline
        row.version = row.version + 1
        row.key_id = key_id
        row.updated_at = now
    try:
        session.flush()
    except IntegrityError as exc:  # two first reviews of one building at the same instant
        raise Conflict(
            "another reviewer saved one of these buildings at the same moment; nothing was "
            f"saved: reload GET /jobs/{job_id}/reviews and try again"
        ) from exc
    return summary(session, job_id)


def _stale(item: ReviewInput, row: tables.BuildingReview | None, current: int) -> dict[str, Any]:
    return {
        "building_id": item.building_id,
        "review_id": item.review_id,
        "sent_version": item.version,
        "current_version": current,
        "current_verdict": row.verdict if row is not None else None,
        "updated_at": row.updated_at.isoformat() if row is not None else None,
    }


def list_reviews(
    session: Session, job_id: uuid.UUID, viewer: Principal | None = None
) -> ReviewSummary:
    visible_job(session, job_id, viewer)
    return summary(session, job_id)


def summary(session: Session, job_id: uuid.UUID) -> ReviewSummary:
    """Every review of the job, oldest first, and the counts the viewer's panel shows."""
    rows = session.execute(
        select(tables.BuildingReview, tables.ApiKey.prefix)
        .outerjoin(tables.ApiKey, tables.ApiKey.id == tables.BuildingReview.key_id)
        .where(tables.BuildingReview.job_id == job_id)
        .order_by(tables.BuildingReview.id)
    ).all()
    reviews = [
        Review(
            id=r.id,
            building_id=r.building_id,
            verdict=r.verdict,
            geometry=mapping(to_shape(r.geom)) if r.geom is not None else None,
            version=r.version,
            by=prefix,
            updated_at=r.updated_at,
        )
        for r, prefix in rows
    ]
    counts = Counter(
        r.verdict for r in reviews if not (r.building_id is None and r.verdict == "wrong")
    )
    total = session.scalar(select(func.count()).where(tables.Building.job_id == job_id)) or 0
    reviewed = sum(1 for r in reviews if r.building_id is not None)
    return ReviewSummary(
        reviews,
        {
            **{v: counts.get(v, 0) for v in VERDICTS},
            "buildings": total,
            "reviewed": reviewed,
            "unreviewed": total - reviewed,
        },
    )
