"""Join the halves of buildings that a chunk seam cut in two, so one building is one feature.

Chunks are aligned blocks of the tile grid, so the seams are known grid lines. Only
polygons within a pixel or two of a seam are candidates; those that cluster together
across two or more chunks are replaced by their union, in one transaction with the
job's move to `done`, so a re-run of the merge finds nothing left to do.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

import mercantile
from shapely.geometry import LineString, MultiLineString
from sqlalchemy import text
from sqlalchemy.orm import Session

MERGE_SQL = text(
    """
    WITH seams AS (SELECT ST_GeomFromText(:seams, 4326) AS g),
    cand AS (
        SELECT b.id, b.chunk_index, b.geom, b.confidence, b.area_m2
        FROM buildings b, seams s
        WHERE b.job_id = :job AND ST_DWithin(b.geom, s.g, :eps)
    ),
    clustered AS (
        SELECT cand.*, ST_ClusterDBSCAN(geom, eps := :eps, minpoints := 1) OVER () AS cid
        FROM cand
    ),
    groups AS (
        SELECT cid,
               array_agg(id) AS ids,
               min(chunk_index) AS chunk_index,
               sum(confidence * area_m2) / nullif(sum(area_m2), 0) AS confidence,
               ST_Buffer(ST_Buffer(ST_Union(geom), :eps, 'join=mitre'), -:eps, 'join=mitre')
                   AS geom
        FROM clustered
        GROUP BY cid
        HAVING count(DISTINCT chunk_index) > 1
    ),
    parts AS (
        SELECT g.chunk_index, g.confidence, ST_ForcePolygonCCW((ST_Dump(g.geom)).geom) AS geom
        FROM groups g
    ),
    gone AS (  -- a data-modifying CTE runs once whether or not it is referenced
        DELETE FROM buildings WHERE id IN (SELECT unnest(ids) FROM groups) RETURNING id
    )
    INSERT INTO buildings
        (job_id, chunk_index, geom, area_m2, confidence, model_name, model_version, merged,
         created_at)
    SELECT :job, p.chunk_index, p.geom, ST_Area(p.geom::geography), coalesce(p.confidence, 0),
           :model, :version, true, now()
    FROM parts p
    WHERE NOT ST_IsEmpty(p.geom)
    RETURNING id
    """
)


def seam_lines(blocks: Iterable[tuple[int, int]], side: int, zoom: int) -> MultiLineString:
    """The grid lines (EPSG:4326) shared by two neighbouring chunk blocks."""
    present = set(blocks)
    lines: list[LineString] = []
    for bx, by in present:
        if (bx + 1, by) in present:  # vertical seam on the block's east edge
            x = (bx + 1) * side
            top, bottom = mercantile.ul(x, by * side, zoom), mercantile.ul(x, (by + 1) * side, zoom)
            lines.append(LineString([(top.lng, top.lat), (bottom.lng, bottom.lat)]))
        if (bx, by + 1) in present:  # horizontal seam on the block's south edge
            y = (by + 1) * side
            west, east = mercantile.ul(bx * side, y, zoom), mercantile.ul((bx + 1) * side, y, zoom)
            lines.append(LineString([(west.lng, west.lat), (east.lng, east.lat)]))
    return MultiLineString(lines)


def pixel_degrees(zoom: int, tilesize: int = 256) -> float:
    return 360.0 / (tilesize * 2**zoom)


def merge_seams(
    session: Session,
    job_id: uuid.UUID,
    *,
    blocks: Iterable[tuple[int, int]],
    side: int,
    zoom: int,
    model: str,
    version: int,
) -> int:
    """Merge seam-cut buildings of one job inside the caller's transaction; returns
    how many merged polygons were written."""
    seams = seam_lines(blocks, side, zoom)
    if seams.is_empty:
        return 0
    rows = session.execute(
        MERGE_SQL,
        {
            "seams": seams.wkt,
            "job": job_id,
            "eps": 1.5 * pixel_degrees(zoom),
            "model": model,
            "version": version,
        },
    ).all()
    return len(rows)
