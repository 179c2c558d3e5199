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

import mercantile
import shapely
from pyproj import Geod
from shapely.geometry import MultiPolygon, Polygon, box, mapping, shape
from shapely.validation import explain_validity
from supermercado import burntiles

from tilesight.errors import TooLarge, Unprocessable

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
    if not isinstance(aoi, dict) or "type" not in aoi:
        raise Unprocessable("aoi must be a GeoJSON Polygon, MultiPolygon or Feature object")
    kind = aoi["type"]
    if kind == "Feature":
        return parse_aoi(aoi.get("geometry") or {})
    if kind == "FeatureCollection":
        features = aoi.get("features") or []
        if not features:
            raise Unprocessable("aoi FeatureCollection has no features; draw at least one polygon")
        parts = [parse_aoi(f) for f in features]
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


def geodesic_area_km2(geom: Polygon | MultiPolygon) -> float:
    area, _ = GEOD.geometry_area_perimeter(geom)
    return abs(area) / 1e6


def tile_cover(aoi: MultiPolygon, zoom: int) -> list[Tile]:
    """Every tile at `zoom` that the AOI touches, in row-major order."""
    # supermercado burns Polygon features only, so each part goes in as its own feature
    features = [{"type": "Feature", "properties": {}, "geometry": mapping(p)} for p in aoi.geoms]
    tiles = {(int(x), int(y), int(z)) for x, y, z in burntiles.burn(features, zoom)}
    # burn() rasterises with all_touched, which may add a tile the AOI only grazes at a
    # corner; keep the tiles whose square really meets the AOI.
    return sorted(
        (t for t in tiles if aoi.intersects(box(*mercantile.bounds(*t)))),
        key=lambda t: (t[1], t[0]),
    )


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
    tiles = tile_cover(covered, zoom)
    if len(tiles) > max_tiles:
        raise TooLarge(
            f"aoi needs {len(tiles)} tiles at zoom {zoom}, above the limit of {max_tiles}; "
            "split it into smaller areas",
            tiles=len(tiles),
            limit_tiles=max_tiles,
        )
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
