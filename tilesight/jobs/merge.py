"""Join the pieces of buildings that a chunk seam cut, so one building is one feature.

Chunks are aligned blocks of the tile grid, so the seams are known grid lines. Two
pieces are one building's when they come from different chunks and meet across a seam
along a stretch of it: pieces of the same chunk are separate objects (the border class
splits touching roofs within a chunk), and two roofs that meet only at a corner point on
the seam are two buildings. A building over the corner of four chunks is four pieces
that meet pairwise, so the groups are the connected components of those pairs. Each
group is replaced by its union in one transaction with the job's move to `done`; merged
rows are never candidates again, so a re-run of the merge finds nothing left to do.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

import mercantile
from shapely.geometry import LineString, MultiLineString
from sqlalchemy import BigInteger, Integer, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

EPS_PX = 1.5  # how far a piece's edge may lie from the seam and still be on it
# How much longer than a corner contact the shared stretch must be. A point where two
# pieces meet on the seam leaves 2 * EPS_PX of seam within EPS_PX of both.
MIN_SHARED_PX = 2.0

# Seams and pieces are measured in Web Mercator, where pixels are square. A piece's
# reach along a seam line is the part of the line within EPS_PX of it; two pieces of
# different chunks on the same line share the overlap of their reaches, and its longest
# run must beat a corner contact. Seam lines end where seams cross, so two pieces
# diagonal across the corner of four chunks reach only EPS_PX along each line.
PAIRS_SQL = text(
    """
    WITH seam AS (
        SELECT d.path[1] AS line, d.geom AS g, ST_Transform(d.geom, 3857) AS m
        FROM ST_Dump(ST_GeomFromText(:seams, 4326)) AS d
    ),
    near AS MATERIALIZED (
        SELECT s.line, b.id, b.chunk_index,
               ST_Intersection(s.m, ST_Buffer(ST_Transform(b.geom, 3857), :eps)) AS reach
        FROM seam s JOIN buildings b ON ST_DWithin(b.geom, s.g, :eps_deg)
        WHERE b.job_id = :job AND NOT b.merged
    )
    SELECT DISTINCT a.id, b.id
    FROM near a
    JOIN near b
      ON b.line = a.line AND b.id > a.id AND b.chunk_index <> a.chunk_index
     AND b.reach && a.reach
    CROSS JOIN LATERAL (
        SELECT max(ST_Length(r.geom)) AS run FROM ST_Dump(ST_Intersection(a.reach, b.reach)) AS r
    ) AS shared
    WHERE shared.run > :min_shared
    """
)

MERGE_SQL = text(
    """
    WITH member AS (
        SELECT m.gid, b.id, b.chunk_index, b.geom, b.confidence, b.area_m2
        FROM unnest(:gids, :ids) AS m(gid, id)
        JOIN buildings b ON b.id = m.id AND b.job_id = :job
    ),
    groups AS (
        SELECT gid,
               min(chunk_index) AS chunk_index,
               sum(confidence * area_m2) / nullif(sum(area_m2), 0) AS confidence,
               ST_Buffer(ST_Buffer(ST_Union(geom), :eps_deg, 'join=mitre'), -:eps_deg,
                         'join=mitre') AS geom
        FROM member
        GROUP BY gid
    ),
    parts AS (
        SELECT g.chunk_index, g.confidence, ST_ForcePolygonCCW((ST_Dump(g.geom)).geom) AS geom
        FROM groups g
    ),
    gone AS (  -- a data-modifying CTE runs once whether or not it is referenced
        DELETE FROM buildings WHERE id IN (SELECT id FROM member) RETURNING id
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
).bindparams(
    bindparam("gids", type_=ARRAY(Integer)),
    bindparam("ids", type_=ARRAY(BigInteger)),
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


def pixel_metres(zoom: int, tilesize: int = 256) -> float:
    """A pixel's side in Web-Mercator metres, the unit the pair query measures in."""
    return mercantile.CE / (tilesize * 2**zoom)


def components(pairs: Iterable[tuple[int, int]]) -> list[list[int]]:
    """The connected components of the pairs (union-find): each is one building."""
    parent: dict[int, int] = {}

    def root(i: int) -> int:
        parent.setdefault(i, i)
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        parent[root(a)] = root(b)
    groups: dict[int, list[int]] = {}
    for i in parent:
        groups.setdefault(root(i), []).append(i)
    return sorted(sorted(g) for g in groups.values())


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
    eps_deg = EPS_PX * pixel_degrees(zoom)
    pairs = session.execute(
        PAIRS_SQL,
        {
            "seams": seams.wkt,
            "job": job_id,
            "eps": EPS_PX * pixel_metres(zoom),
            "eps_deg": eps_deg,
            "min_shared": (2 * EPS_PX + MIN_SHARED_PX) * pixel_metres(zoom),
        },
    ).all()
    groups = components((a, b) for a, b in pairs)
    if not groups:
        return 0
    rows = session.execute(
        MERGE_SQL,
        {
            "gids": [gid for gid, group in enumerate(groups) for _ in group],
            "ids": [i for group in groups for i in group],
            "job": job_id,
            "eps_deg": eps_deg,
            "model": model,
            "version": version,
        },
    ).all()
    return len(rows)
