"""Predicted buildings as Mapbox vector tiles, so the viewer draws them at any zoom."""

from __future__ import annotations

import hashlib
import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy import text

from api.access import principal_of
from api.conditional import not_modified
from api.deps import SessionDep
from tilesight.errors import NotFound
from tilesight.jobs.service import owner_filter

router = APIRouter(prefix="/buildings", tags=["buildings"])

MVT_MEDIA_TYPE = "application/vnd.mapbox-vector-tile"
MVT_SQL = """
    WITH bounds AS (SELECT ST_TileEnvelope(:z, :x, :y) AS merc),
    features AS (
        SELECT ST_AsMVTGeom(ST_Transform(b.geom, 3857), bounds.merc, 4096, 64, true) AS geom,
               b.id, b.area_m2, b.confidence, b.model_name AS model,
               b.model_version AS version, b.job_id::text AS job
        FROM buildings b, bounds
        WHERE b.geom && ST_Transform(bounds.merc, 4326) {job_filter}
    )
    SELECT ST_AsMVT(features.*, 'buildings', 4096, 'geom', 'id') FROM features
    WHERE features.geom IS NOT NULL
"""


@router.get(
    "/{z}/{x}/{y}.mvt",
    summary="Buildings in one XYZ tile as a Mapbox vector tile (layer 'buildings')",
    response_class=Response,
    responses={200: {"content": {MVT_MEDIA_TYPE: {}}}},
)
def building_tile(
    z: int,
    x: int,
    y: int,
    request: Request,
    session: SessionDep,
    job: Annotated[uuid.UUID | None, Query(description="only this job's buildings")] = None,
) -> Response:
    if not 0 <= z <= 24 or not (0 <= x < 2**z and 0 <= y < 2**z):
        raise NotFound(
            f"tile {z}/{x}/{y} does not exist; zoom is 0-24 and x, y are 0 to 2^zoom - 1"
        )
    filters, params = [], {"z": z, "x": x, "y": y}
    if job:
        filters.append("AND b.job_id = :job")
        params["job"] = job
    owner = owner_filter(principal_of(request))
    if owner is not True:  # a key sees only its own jobs' buildings
        filters.append("AND b.job_id IN (SELECT id FROM jobs WHERE owner_key_id = :owner)")
        params["owner"] = owner
    sql = MVT_SQL.format(job_filter=" ".join(filters))
    data = bytes(session.execute(text(sql), params).scalar() or b"")
    etag = '"' + hashlib.blake2b(data, digest_size=12).hexdigest() + '"'
    headers = {"ETag": etag, "Cache-Control": "public, max-age=10"}
    if not_modified(request, etag):
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=MVT_MEDIA_TYPE, headers=headers)
