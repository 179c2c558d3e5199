"""A job's buildings as files: RFC 7946 GeoJSON streamed, other formats through OGR.

The FeatureCollection is streamed from a server-side cursor, so a city-sized job never
sits in memory; PostGIS writes each geometry (exterior rings counter-clockwise, holes
clockwise, lon/lat, 7 decimals ~ 1 cm) and Python only joins the pieces.

The file formats (FlatGeobuf, GeoParquet, GeoPackage) are written by their reference
writers through GeoPandas (OGR via pyogrio, Arrow for Parquet), and OSM XML for JOSM by
`osm_xml`, into a file, so they are served with a length and byte ranges. FORMATS is the
one table: a format is one line there. Every format comes raw (the model's output) or
reviewed (`reviewed=True`: as the job's reviewers left it, see `reviews`).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import shapely
from sqlalchemy import text
from sqlalchemy.orm import Session

from tilesight.jobs.osm_xml import write_osm_xml

# One row per building a download holds; `{reviewed}` picks the raw model output or the
# output as the reviewers left it: edited outlines replace the model's, wrong buildings
# drop out, added buildings come in (with the negated id of their review row, so they can
# never clash with a predicted building's id).
RAW_SQL = """
    SELECT b.id, b.geom, b.area_m2, b.confidence, b.model_name, b.model_version,
           NULL::text AS review
    FROM buildings b WHERE b.job_id = :job
"""
REVIEWED_SQL = """
    SELECT b.id, coalesce(r.geom, b.geom) AS geom,
           CASE WHEN r.geom IS NULL THEN b.area_m2 ELSE ST_Area(r.geom::geography) END,
           b.confidence, b.model_name, b.model_version, r.verdict AS review
    FROM buildings b
    LEFT JOIN building_reviews r ON r.job_id = b.job_id AND r.building_id = b.id
    WHERE b.job_id = :job AND (r.verdict IS NULL OR r.verdict <> 'wrong')
    UNION ALL
    SELECT -r.id, r.geom, ST_Area(r.geom::geography), NULL, j.model_name, j.model_version,
           r.verdict
    FROM building_reviews r JOIN jobs j ON j.id = r.job_id
    WHERE r.job_id = :job AND r.building_id IS NULL AND r.verdict = 'added'
"""
FEATURES_SQL = """
    SELECT s.id, ST_AsGeoJSON(ST_ForcePolygonCCW(s.geom), 7) AS geometry,
           s.area_m2, s.confidence, s.model_name, s.model_version, s.review
    FROM ({rows}) AS s (id, geom, area_m2, confidence, model_name, model_version, review)
    WHERE TRUE {bbox}
    ORDER BY s.id
"""
BBOX_FILTER = "AND s.geom && ST_MakeEnvelope(:west, :south, :east, :north, 4326)"
Box = tuple[float, float, float, float]


def _query(select: str, bbox: Box | None, reviewed: bool) -> str:
    return select.format(
        rows=REVIEWED_SQL if reviewed else RAW_SQL, bbox=BBOX_FILTER if bbox else ""
    )


def _params(job_id: uuid.UUID, bbox: Box | None) -> dict[str, object]:
    params: dict[str, object] = {"job": job_id}
    if bbox is not None:
        params.update(zip(("west", "south", "east", "north"), bbox, strict=True))
    return params


BATCH = 1000


def feature_json(row: Sequence[Any], job_id: uuid.UUID, reviewed: bool = False) -> str:
    rid, geometry, area, confidence, model, version, review = row
    properties = {
        "id": rid,
        "area_m2": round(float(area), 2),
        "confidence": None if confidence is None else round(float(confidence), 4),
        "model": model,
        "version": version,
        "job": str(job_id),
    }
    if reviewed:
        properties["review"] = review
    return (
        f'{{"type":"Feature","id":{rid},"geometry":{geometry},'
        f'"properties":{json.dumps(properties, separators=(",", ":"))}}}'
    )


def geojson_chunks(
    session: Session, job_id: uuid.UUID, bbox: Box | None = None, reviewed: bool = False
) -> Iterator[bytes]:
    """Pieces of one FeatureCollection, a batch of features at a time. `reviewed` gives
    the buildings as reviewed, each with a `review` property (null where unreviewed)."""
    params = _params(job_id, bbox)
    sql = text(_query(FEATURES_SQL, bbox, reviewed))
    yield b'{"type":"FeatureCollection","features":['
    first = True
    result = session.connection().execution_options(stream_results=True, yield_per=BATCH)
    rows = result.execute(sql, params)
    for batch in rows.partitions(BATCH):
        parts = [feature_json(row, job_id, reviewed) for row in batch]
        prefix = "" if first else ","
        first = False
        yield (prefix + ",".join(parts)).encode()
    yield b"]}"


@dataclass(frozen=True)
class Format:
    """One download format: its media type and how a GeoDataFrame is written to a path."""

    media_type: str
    write: Callable[[gpd.GeoDataFrame, Path], None]


def _ogr(driver: str) -> Callable[[gpd.GeoDataFrame, Path], None]:
    def write(frame: gpd.GeoDataFrame, path: Path) -> None:
        frame.to_file(path, driver=driver, engine="pyogrio", layer="buildings")

    return write


def _geoparquet(frame: gpd.GeoDataFrame, path: Path) -> None:
    frame.to_parquet(path, index=False, compression="zstd", write_covering_bbox=True)


# file extension -> format; GeoJSON is streamed by `geojson_chunks` instead
FORMATS: dict[str, Format] = {
    "fgb": Format("application/flatgeobuf", _ogr("FlatGeobuf")),
    "parquet": Format("application/vnd.apache.parquet", _geoparquet),
    "gpkg": Format("application/geopackage+sqlite3", _ogr("GPKG")),
    "osm": Format("application/vnd.osm+xml", write_osm_xml),
}

ROWS_SQL = """
    SELECT s.id, ST_AsBinary(ST_ForcePolygonCCW(s.geom)) AS wkb,
           s.area_m2, s.confidence, s.model_name, s.model_version, s.review
    FROM ({rows}) AS s (id, geom, area_m2, confidence, model_name, model_version, review)
    WHERE TRUE {bbox}
    ORDER BY s.id
"""


def buildings_frame(
    session: Session, job_id: uuid.UUID, bbox: Box | None = None, reviewed: bool = False
) -> gpd.GeoDataFrame:
    """The job's buildings with the same properties as the GeoJSON, in EPSG:4326."""
    sql = text(_query(ROWS_SQL, bbox, reviewed))
    rows = session.execute(sql, _params(job_id, bbox)).all()
    geometry = shapely.from_wkb([bytes(r.wkb) for r in rows]) if rows else []
    columns: dict[str, list[Any]] = {
        "id": [r.id for r in rows],
        "area_m2": [round(float(r.area_m2), 2) for r in rows],
        "confidence": [
            None if r.confidence is None else round(float(r.confidence), 4) for r in rows
        ],
        "model": [r.model_name for r in rows],
        "version": [r.model_version for r in rows],
        "job": [str(job_id)] * len(rows),
    }
    if reviewed:
        columns["review"] = [r.review for r in rows]
    return gpd.GeoDataFrame(columns, geometry=geometry, crs="EPSG:4326")


def write_buildings(
    session: Session,
    job_id: uuid.UUID,
    extension: str,
    path: Path,
    bbox: Box | None = None,
    reviewed: bool = False,
) -> Format:
    """Write the job's buildings to `path` in the format of `extension` (a FORMATS key)."""
    fmt = FORMATS[extension]
    fmt.write(buildings_frame(session, job_id, bbox, reviewed), path)
    return fmt
