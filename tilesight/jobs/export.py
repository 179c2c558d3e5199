"""A job's buildings as files: RFC 7946 GeoJSON streamed, other formats through OGR.

The FeatureCollection is streamed from a server-side cursor, so a city-sized job never
sits in memory; PostGIS writes each geometry (exterior rings counter-clockwise, holes
clockwise, lon/lat, 7 decimals ~ 1 cm) and Python only joins the pieces.

The binary formats (FlatGeobuf, GeoParquet) are written by their reference writers
through GeoPandas (OGR via pyogrio, Arrow for Parquet) into a file, so they are served
with a length and byte ranges. FORMATS is the one table: a format is one line there.
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

FEATURES_SQL = """
    SELECT b.id, ST_AsGeoJSON(ST_ForcePolygonCCW(b.geom), 7) AS geometry,
           b.area_m2, b.confidence, b.model_name, b.model_version
    FROM buildings b
    WHERE b.job_id = :job {bbox}
    ORDER BY b.id
"""
BBOX_FILTER = "AND b.geom && ST_MakeEnvelope(:west, :south, :east, :north, 4326)"
BATCH = 1000


def feature_json(row: Sequence[Any], job_id: uuid.UUID) -> str:
    rid, geometry, area, confidence, model, version = row
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
}

ROWS_SQL = """
    SELECT b.id, ST_AsBinary(ST_ForcePolygonCCW(b.geom)) AS wkb,
           b.area_m2, b.confidence, b.model_name, b.model_version
    FROM buildings b
    WHERE b.job_id = :job {bbox}
    ORDER BY b.id
"""


def buildings_frame(
    session: Session, job_id: uuid.UUID, bbox: tuple[float, float, float, float] | None = None
) -> gpd.GeoDataFrame:
    """The job's buildings with the same properties as the GeoJSON, in EPSG:4326."""
    params: dict[str, object] = {"job": job_id}
    if bbox is not None:
        params.update(zip(("west", "south", "east", "north"), bbox, strict=True))
    rows = session.execute(text(ROWS_SQL.format(bbox=BBOX_FILTER if bbox else "")), params).all()
    geometry = shapely.from_wkb([bytes(r.wkb) for r in rows]) if rows else []
    return gpd.GeoDataFrame(
        {
            "id": [r.id for r in rows],
            "area_m2": [round(float(r.area_m2), 2) for r in rows],
            "confidence": [round(float(r.confidence), 4) for r in rows],
            "model": [r.model_name for r in rows],
            "version": [r.model_version for r in rows],
            "job": [str(job_id)] * len(rows),
        },
        geometry=geometry,
        crs="EPSG:4326",
    )


def write_buildings(
    session: Session,
    job_id: uuid.UUID,
    extension: str,
    path: Path,
    bbox: tuple[float, float, float, float] | None = None,
) -> Format:
    """Write the job's buildings to `path` in the format of `extension` (a FORMATS key)."""
    fmt = FORMATS[extension]
    fmt.write(buildings_frame(session, job_id, bbox), path)
    return fmt
