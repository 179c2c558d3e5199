"""Predicted buildings as Mapbox vector tiles, so the viewer draws them at any zoom, and
the TileJSON that tells MapLibre, OpenLayers or QGIS the layer and its fields."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from api.access import principal_of
from api.conditional import etag, json_with_etag, not_modified
from api.deps import SessionDep
from api.tilejson import TileJSON, VectorLayer, center
from tilesight.jobs import buildings
from tilesight.jobs.service import get_job
from tilesight.keys import owner_filter

router = APIRouter(prefix="/buildings", tags=["buildings"])

MVT_MEDIA_TYPE = "application/vnd.mapbox-vector-tile"
MINZOOM, MAXZOOM = 12, 22  # below 12 a city's buildings are specks; above 22, overzoom
WORLD = (-180.0, -85.0511287798, 180.0, 85.0511287798)
JobQuery = Annotated[uuid.UUID | None, Query(description="only this job's buildings")]


@router.get(
    "/tilejson.json",
    response_model=TileJSON,
    response_model_exclude_none=True,
    summary="TileJSON 3.0 for the buildings vector tiles (layer 'buildings' and its fields)",
)
def tilejson(
    request: Request,
    session: SessionDep,
    job: JobQuery = None,
) -> Response:
    viewer = principal_of(request)
    if job:
        get_job(session, job, viewer)  # 404 for a job the caller cannot see
    found = buildings.extent(session, job=job, owner=owner_filter(viewer))
    bounds = list(found.bounds or WORLD)
    lon, lat = found.point or (0.0, 0.0)
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
                id=buildings.LAYER,
                description="one polygon per building; the feature id is the building's id",
                fields=buildings.FIELDS,
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
    job: JobQuery = None,
) -> Response:
    owner = owner_filter(principal_of(request))
    data = buildings.vector_tile(session, z, x, y, job=job, owner=owner)
    tag = etag(data)
    headers = {"ETag": tag, "Cache-Control": "public, max-age=10"}
    if not_modified(request, tag):
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=MVT_MEDIA_TYPE, headers=headers)
