"""Predicted buildings as Mapbox vector tiles, so the viewer draws them at any zoom, and
the TileJSON that tells MapLibre, OpenLayers or QGIS the layer and its fields."""

from __future__ import annotations

import hashlib
import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy import text

from api.access import principal_of
from api.conditional import json_with_etag, not_modified
from api.deps import SessionDep
from api.tilejson import TileJSON, VectorLayer, center
from tilesight.errors import NotFound
from tilesight.jobs.service import get_job, owner_filter

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
    SELECT ST_AsMVT(features.*, '{layer}', 4096, 'geom', 'id') FROM features
    WHERE features.geom IS NOT NULL
"""
LAYER = "buildings"
# The attributes MVT_SQL writes, as TileJSON `vector_layers` types them.
FIELDS = {
    "area_m2": "Number",
    "confidence": "Number",
    "model": "String",
    "version": "Number",
    "job": "String",
}
MINZOOM, MAXZOOM = 12, 22  # below 12 a city's buildings are specks; above 22, overzoom
EXTENT_SQL = """
    SELECT ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e),
           ST_X(p), ST_Y(p)
    FROM (SELECT ST_Extent(b.geom) AS e,
                 (SELECT ST_PointOnSurface(geom) FROM buildings b
                  WHERE true {job_filter} ORDER BY b.id LIMIT 1) AS p
          FROM buildings b WHERE true {job_filter}) AS extent
"""
WORLD = [-180.0, -85.0511287798, 180.0, 85.0511287798]


def _filters(request: Request, job: uuid.UUID | None, params: dict[str, object]) -> str:
    """The SQL that limits buildings to one job, and to the caller's own jobs."""
    filters = []
    if job:
        filters.append("AND b.job_id = :job")
        params["job"] = job
    owner = owner_filter(principal_of(request))
    if owner is not True:  # a key sees only its own jobs' buildings
        filters.append("AND b.job_id IN (SELECT id FROM jobs WHERE owner_key_id = :owner)")
        params["owner"] = owner
    return " ".join(filters)


@router.get(
    "/tilejson.json",
    response_model=TileJSON,
    response_model_exclude_none=True,
    summary="TileJSON 3.0 for the buildings vector tiles (layer 'buildings' and its fields)",
)
def tilejson(
    request: Request,
    session: SessionDep,
    job: Annotated[uuid.UUID | None, Query(description="only this job's buildings")] = None,
) -> Response:
    if job:
        get_job(session, job, principal_of(request))  # 404 for a job the caller cannot see
    params: dict[str, object] = {}
    where = _filters(request, job, params)
    row = session.execute(text(EXTENT_SQL.format(job_filter=where)), params).one()
    bounds = [float(v) for v in row[:4]] if row[0] is not None else WORLD
    lon, lat = (float(row[4]), float(row[5])) if row[4] is not None else (0.0, 0.0)
    url = f"{str(request.base_url).rstrip('/')}/buildings/{{z}}/{{x}}/{{y}}.mvt"
    if job:
        url += f"?job={job}"
    document = TileJSON(
        name=f"buildings of job {job}" if job else "buildings",
        description="building footprints found by area jobs, as Mapbox vector tiles",
        tiles=[url],
        minzoom=MINZOOM,
        maxzoom=MAXZOOM,
        bounds=bounds,
        center=center(lon, lat, 17, MINZOOM, MAXZOOM),
        vector_layers=[
            VectorLayer(
                id=LAYER,
                description="one polygon per building; the feature id is the building's id",
                fields=FIELDS,
                minzoom=MINZOOM,
                maxzoom=MAXZOOM,
            )
        ],
    )
    # buildings arrive while a job runs: clients should ask again soon
    return json_with_etag(request, document, "public, max-age=10")


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
    params: dict[str, object] = {"z": z, "x": x, "y": y}
    sql = MVT_SQL.format(layer=LAYER, job_filter=_filters(request, job, params))
    data = bytes(session.execute(text(sql), params).scalar() or b"")
    etag = '"' + hashlib.blake2b(data, digest_size=12).hexdigest() + '"'
    headers = {"ETag": etag, "Cache-Control": "public, max-age=10"}
    if not_modified(request, etag):
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=MVT_MEDIA_TYPE, headers=headers)
