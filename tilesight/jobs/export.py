"""A job's buildings as RFC 7946 GeoJSON, written feature by feature.

The FeatureCollection is streamed from a server-side cursor, so a city-sized job never
sits in memory; PostGIS writes each geometry (exterior rings counter-clockwise, holes
clockwise, lon/lat, 7 decimals ~ 1 cm) and Python only joins the pieces.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

from sqlalchemy import text
from sqlalchemy.orm import Session

FEATURES_SQL = """
    SELECT b.id, ST_AsGeoJSON(ST_ForcePolygonCCW(b.geom), 7) AS geometry,
           b.area_m2, b.confidence, b.model_name, b.model_version
    FROM buildings b
    WHERE b.job_id = :job {bbox}
    ORDER BY b.id
"""
BBOX_FILTER = "AND b.geom && ST_MakeEnvelope(:west, :south, :east, :north, 4326)"
BATCH = 1000


def feature_json(row: object, job_id: uuid.UUID) -> str:
    rid, geometry, area, confidence, model, version = row  # type: ignore[misc]
    properties = {
        "id": rid,
        "area_m2": round(float(area), 2),
        "confidence": round(float(confidence), 4),
        "model": model,
        "version": version,
        "job": str(job_id),
    }
    return (
        f'{{"type":"Feature","id":{rid},"geometry":{geometry},'
        f'"properties":{json.dumps(properties, separators=(",", ":"))}}}'
    )


def geojson_chunks(
    session: Session, job_id: uuid.UUID, bbox: tuple[float, float, float, float] | None = None
) -> Iterator[bytes]:
    """Pieces of one FeatureCollection, a batch of features at a time."""
    params: dict[str, object] = {"job": job_id}
    if bbox is not None:
        params.update(zip(("west", "south", "east", "north"), bbox, strict=True))
    sql = text(FEATURES_SQL.format(bbox=BBOX_FILTER if bbox else ""))
    yield b'{"type":"FeatureCollection","features":['
    first = True
    result = session.connection().execution_options(stream_results=True, yield_per=BATCH)
    rows = result.execute(sql, params)
    for batch in rows.partitions(BATCH):
        parts = [feature_json(row, job_id) for row in batch]
        prefix = "" if first else ","
        first = False
        yield (prefix + ",".join(parts)).encode()
    yield b"]}"
