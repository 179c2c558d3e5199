"""From a user's AOI to the tiles and chunks of an area job.

Everything a user can get wrong about an area is checked here, before anything is
written or queued, so a bad request costs nothing but a 4xx that says what to change.
Chunks are square blocks of the tile grid (`side` x `side` tiles, aligned to multiples
of `side`), so the seams between chunks are straight grid lines that the merge step
can find again from the chunk indices alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
from pyproj import Geod
from shapely.geometry import MultiPolygon, Polygon, shape
from shapely.validation import explain_validity

from tilesight.errors import TooLarge, Unprocessable
from tilesight.geocheck import check_geojson

GEOD = Geod(ellps="WGS84")
Tile = tuple[int, int, int]


@dataclass(frozen=True)
class Chunk:
    """One unit of work: neighbouring tiles inside one grid block."""

    index: int
    block: tuple[int, int]  # (bx, by): the block's position in the grid of `side`-tile blocks
    tiles: list[Tile]


@dataclass(frozen=True)
class Plan:
    aoi: MultiPolygon  # EPSG:4326, what the job covers (the user's AOI, cut to the source)
    zoom: int
    side: int
    tiles: list[Tile]
    chunks: list[Chunk]
    area_km2: float


def parse_aoi(aoi: dict[str, Any]) -> MultiPolygon:
    """A GeoJSON Polygon / MultiPolygon / Feature / FeatureCollection as a valid MultiPolygon.

    Invalid outlines are refused rather than repaired: a silently "fixed" bow-tie may
    cover a very different area from the one the user meant to draw."""
    check_geojson(aoi, "aoi")
    return _parse(aoi)


def _parse(aoi: Any) -> MultiPolygon:
    if not isinstance(aoi, dict) or "type" not in aoi:
        raise Unprocessable("aoi must be a GeoJSON Polygon, MultiPolygon or Feature object")
    kind = aoi["type"]
    if kind == "Feature":
        return _parse(aoi.get("geometry") or {})
    if kind == "FeatureCollection":
        features = aoi.get("features") or []
        if not features:
            raise Unprocessable("aoi FeatureCollection has no features; draw at least one polygon")
        parts = [_parse(f) for f in features]
        return _as_multipolygon(shapely.union_all(parts))
    if kind not in ("Polygon", "MultiPolygon"):
        raise Unprocessable(
            f"aoi must be a Polygon or MultiPolygon, not {kind}",
            allowed=["Polygon", "MultiPolygon"],
        )
    try:
        geom = shape(aoi)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise Unprocessable(f"aoi coordinates are malformed: {exc}") from exc
    if geom.is_empty:
        raise Unprocessable("aoi is empty; give at least one ring of 4 or more positions")
    if shapely.has_z(geom):
        geom = shapely.force_2d(geom)
    minx, miny, maxx, maxy = geom.bounds
    if not (-180 <= minx <= maxx <= 180 and -85.06 <= miny <= maxy <= 85.06):
        raise Unprocessable(
            "aoi coordinates must be longitude, latitude in degrees (EPSG:4326, lon first) "
            "within Web-Mercator's range",
            bounds=[minx, miny, maxx, maxy],
        )
    _refuse_wide_parts(geom)
    if not geom.is_valid:
        reason = explain_validity(geom)
        raise Unprocessable(
            f"aoi is not a valid polygon ({reason}); remove the self-intersection or "
            "repair it (e.g. QGIS 'Fix geometries') and submit again",
            reason=reason,
        )
    if geom.area == 0:
        raise Unprocessable("aoi has no area; its ring must enclose something")
    return _as_multipolygon(geom)


def _refuse_wide_parts(geom: Polygon | MultiPolygon) -> None:
    """A polygon wider than 180° of longitude is almost surely one that crosses the
    antimeridian drawn with its longitudes unwrapped (RFC 7946 asks for such a polygon
    to be split), or a band all around the globe, whose geodesic area reads as 0; either
    way its area and tiles would not be what the user meant."""
    parts = geom.geoms if isinstance(geom, MultiPolygon) else [geom]
    for part in parts:
        west, _, east, _ = part.bounds
        if east - west > 180:
            raise Unprocessable(
                f"aoi spans {east - west:g}° of longitude; a polygon may span at most 180°. "
                "If it crosses the antimeridian, split it there into a MultiPolygon with one "
                "part each side of ±180° (RFC 7946, 3.1.9)",
                span_degrees=round(east - west, 6),
                limit_degrees=180,
            )


def geodesic_area_km2(geom: Polygon | MultiPolygon) -> float:
    area, _ = GEOD.geometry_area_perimeter(geom)
    return abs(area) / 1e6


def tile_cover(aoi: MultiPolygon, zoom: int, limit: int | None = None) -> list[Tile]:
    """Every tile at `zoom` whose square overlaps the AOI, in row-major order.

    Found by descending the quadtree from zoom 0, keeping at each level the tiles that
    meet the AOI: a tile meets it only if its parent does, and a level never holds more
    tiles than the next, so once a level passes `limit` the answer does too and the
    descent stops (TooLarge). Checking a thin band around the world thus costs about
    `limit` tiles per level, not the millions of tiles in its bounding box."""
    shapely.prepare(aoi)
    west, south, east, north = aoi.bounds
    xs = np.zeros(1, dtype=np.int64)
    ys = np.zeros(1, dtype=np.int64)
    for z in range(1, zoom + 1):
        xs = np.repeat(xs * 2, 4) + np.tile(np.array([0, 1, 0, 1]), len(xs))
        ys = np.repeat(ys * 2, 4) + np.tile(np.array([0, 0, 1, 1]), len(ys))
        w, s, e, n = _tile_bounds(xs, ys, z)
        near = (w < east) & (e > west) & (s < north) & (n > south)  # cheap, before shapes
        xs, ys = xs[near], ys[near]
        boxes = shapely.box(w[near], s[near], e[near], n[near])
        meets = shapely.intersects(aoi, boxes)
        xs, ys, boxes = xs[meets], ys[meets], boxes[meets]
        if z == zoom or (limit is not None and len(xs) > limit):
            # Interiors must meet: a tile that only shares an edge with the AOI has no
            # work. Slower than `intersects`, so asked only where the count matters.
            inside = ~shapely.touches(aoi, boxes)
            xs, ys = xs[inside], ys[inside]
        if limit is not None and len(xs) > limit:
            raise TooLarge(
                f"aoi needs more than {limit} tiles at zoom {zoom} ({len(xs)} already at "
                f"zoom {z}), above the limit of {limit}; split it into smaller areas",
                tiles_at_least=len(xs),
                limit_tiles=limit,
            )
    order = np.lexsort((xs, ys))
    return [(int(xs[i]), int(ys[i]), zoom) for i in order]


def _tile_bounds(
    xs: np.ndarray, ys: np.ndarray, z: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """West, south, east, north of tiles, as mercantile.bounds computes them, all at once."""
    n = 2.0**z

    def lat(y: np.ndarray) -> np.ndarray:
        return np.degrees(np.arctan(np.sinh(np.pi * (1 - 2 * y / n))))

    return xs / n * 360.0 - 180.0, lat(ys + 1), (xs + 1) / n * 360.0 - 180.0, lat(ys)


def chunk_side(chunk_tiles: int) -> int:
    return max(1, int(math.isqrt(max(1, chunk_tiles))))


def make_chunks(tiles: list[Tile], side: int) -> list[Chunk]:
    blocks: dict[tuple[int, int], list[Tile]] = {}
    for t in tiles:
        blocks.setdefault((t[0] // side, t[1] // side), []).append(t)
    ordered = sorted(blocks, key=lambda b: (b[1], b[0]))
    return [
        Chunk(i, b, sorted(blocks[b], key=lambda t: (t[1], t[0]))) for i, b in enumerate(ordered)
    ]


def plan_job(
    aoi: dict[str, Any],
    *,
    zoom: int,
    source_id: str,
    source_footprint: Polygon | MultiPolygon,
    chunk_tiles: int,
    max_area_km2: float,
    max_tiles: int,
    max_vertices: int = 10_000,
) -> Plan:
    """Validate the AOI against the source and the limits, and cut it into chunks."""
    requested = parse_aoi(aoi)
    vertices = shapely.get_num_coordinates(requested)
    if vertices > max_vertices:  # clipping every polygon against such an AOI gets slow
        raise TooLarge(
            f"aoi has {vertices} vertices, above the limit of {max_vertices}; simplify it",
            limit_vertices=max_vertices,
            vertices=int(vertices),
        )
    area = geodesic_area_km2(requested)
    if area > max_area_km2:
        raise TooLarge(
            f"aoi covers {area:.3f} km², above the limit of {max_area_km2} km²; "
            "split it into smaller areas",
            area_km2=round(area, 4),
            limit_km2=max_area_km2,
        )
    covered = requested.intersection(source_footprint)
    if covered.is_empty or covered.area == 0:
        raise Unprocessable(
            f"aoi lies outside source {source_id!r}; draw it inside the imagery",
            source_bounds=list(source_footprint.bounds),
            aoi_bounds=list(requested.bounds),
        )
    covered = _as_multipolygon(covered)
    tiles = tile_cover(covered, zoom, limit=max_tiles)
    if not tiles:
        raise Unprocessable(f"aoi covers no tile of source {source_id!r} at zoom {zoom}")
    side = chunk_side(chunk_tiles)
    return Plan(covered, zoom, side, tiles, make_chunks(tiles, side), geodesic_area_km2(covered))


def _as_multipolygon(geom: shapely.Geometry) -> MultiPolygon:
    if isinstance(geom, MultiPolygon):
        return geom
    if isinstance(geom, Polygon):
        return MultiPolygon([geom])
    polys = [g for g in getattr(geom, "geoms", []) if isinstance(g, Polygon | MultiPolygon)]
    parts: list[Polygon] = []
    for g in polys:
        parts.extend(g.geoms if isinstance(g, MultiPolygon) else [g])
    return MultiPolygon(parts)
