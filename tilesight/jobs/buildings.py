"""A job's buildings as a map layer: one Mapbox vector tile, and the extent to frame.

The API's /buildings routes and any other caller read buildings through these, with
every value bound as a parameter; `owner` is what `keys.owner_filter` says the viewer may
see (True: every job's buildings; a key id: only that key's jobs).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from tilesight.errors import NotFound

LAYER = "buildings"
MAX_ZOOM = 24
# Both filters are always in the SQL and switched off by their parameters, so there is
# one statement to prepare and nothing is formatted into it.
_FILTERS = """
    AND (CAST(:job AS uuid) IS NULL OR b.job_id = CAST(:job AS uuid))
    AND (:everyone OR b.job_id IN (SELECT id FROM jobs WHERE owner_key_id = :owner))
"""
_TILE_SQL = f"""
    WITH bounds AS (SELECT ST_TileEnvelope(:z, :x, :y) AS merc),
    features AS (
        SELECT ST_AsMVTGeom(ST_Transform(b.geom, 3857), bounds.merc, 4096, 64, true) AS geom,
               b.id, b.area_m2, b.confidence, b.model_name AS model,
               b.model_version AS version, b.job_id::text AS job
        FROM buildings b, bounds
        WHERE b.geom && ST_Transform(bounds.merc, 4326) {_FILTERS}
    )
    SELECT ST_AsMVT(features.*, :layer, 4096, 'geom', 'id') FROM features
    WHERE features.geom IS NOT NULL
"""
_EXTENT_SQL = f"""
    SELECT ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e),
           ST_X(p), ST_Y(p)
    FROM (SELECT ST_Extent(b.geom) AS e,
                 (SELECT ST_PointOnSurface(geom) FROM buildings b
                  WHERE true {_FILTERS} ORDER BY b.id LIMIT 1) AS p
          FROM buildings b WHERE true {_FILTERS}) AS extent
"""
# The attributes a vector tile's features carry, as TileJSON `vector_layers` types them.
FIELDS = {
    "area_m2": "Number",
    "confidence": "Number",
    "model": "String",
    "version": "Number",
    "job": "String",
}


@dataclass(frozen=True)
class Extent:
    """Where the buildings are: their bounds and a point on one of them (None: none yet)."""

    bounds: tuple[float, float, float, float] | None
    point: tuple[float, float] | None


def _params(job: uuid.UUID | None, owner: int | None | bool) -> dict[str, Any]:
    everyone = owner is True
    return {"job": job, "everyone": everyone, "owner": None if everyone else owner}


def vector_tile(
    session: Session, z: int, x: int, y: int, *, job: uuid.UUID | None, owner: int | None | bool
) -> bytes:
    """The buildings in tile z/x/y as MVT bytes (empty when there are none)."""
    if not 0 <= z <= MAX_ZOOM or not (0 <= x < 2**z and 0 <= y < 2**z):
        raise NotFound(
            f"tile {z}/{x}/{y} does not exist; zoom is 0-{MAX_ZOOM} and x, y are 0 to 2^zoom - 1"
        )
    params = {"z": z, "x": x, "y": y, "layer": LAYER, **_params(job, owner)}
    return bytes(session.execute(text(_TILE_SQL), params).scalar() or b"")


def extent(session: Session, *, job: uuid.UUID | None, owner: int | None | bool) -> Extent:
    row = session.execute(text(_EXTENT_SQL), _params(job, owner)).one()
    if row[0] is None:
        return Extent(None, None)
    west, south, east, north, lon, lat = (float(v) for v in row)
    return Extent((west, south, east, north), (lon, lat))
