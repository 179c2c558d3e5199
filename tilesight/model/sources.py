"""Where training pixels and labels come from: imagery readers and footprint files.

Both are reduced to one pixel grid, the Web-Mercator tile at the model's zoom plus a
context margin, so chip folders, rasters in any CRS and labels in any CRS line up
without a separate alignment step.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import mercantile
import numpy as np
import pyproj
import shapely
from PIL import Image
from rasterio.features import rasterize
from rasterio.transform import from_bounds
from shapely.geometry import shape

from tilesight.errors import InvalidInput, Unprocessable
from tilesight.imagery.chips import parse_chip

Tile = tuple[int, int, int]  # x, y, z


class TileReader(Protocol):
    """Anything that reads an RGB tile with context: a chip folder or a raster."""

    name: str

    def tiles(self, zoom: int, bounds: tuple[float, float, float, float]) -> list[Tile]: ...

    def read(
        self, tile: Tile, context: int, exclude: frozenset[Tile] = frozenset()
    ) -> tuple[np.ndarray, np.ndarray]: ...


class ChipFolder:
    """A folder of 256 px XYZ chips (`OAM-{x}-{y}-{z}.png` or `{z}/{x}/{y}.png`).

    Context around a chip comes from its neighbours; where a neighbour is missing (a
    cluster edge, or a validation tile when reading for training) pixels are invalid.
    """

    def __init__(self, root: Path, tile_size: int = 256) -> None:
        self.root = Path(root)
        self.name = self.root.name
        self.tile_size = tile_size
        self.index: dict[Tile, Path] = {}
        for path in self.root.rglob("*"):
            tile = parse_chip(path.relative_to(self.root))  # the names imagery accepts
            if tile is not None:
                self.index[tile] = path
        if not self.index:
            raise InvalidInput(f"no XYZ chips found in {root}", path=str(root))

    @property
    def zooms(self) -> list[int]:
        return sorted({t[2] for t in self.index})

    def tiles(self, zoom: int, bounds: tuple[float, float, float, float]) -> list[Tile]:
        if zoom not in self.zooms:
            raise InvalidInput(
                f"{self.name} has no chips at zoom {zoom}; it has zooms {self.zooms}",
                zoom=zoom,
            )
        west, south, east, north = bounds
        found = [t for t in self.index if t[2] == zoom]
        return sorted(
            t
            for t in found
            if _overlaps(mercantile.bounds(t[0], t[1], zoom), (west, south, east, north))
        )

    def _chip(self, tile: Tile) -> np.ndarray:
        with Image.open(self.index[tile]) as im:
            if im.mode not in {"RGB", "RGBA", "P", "L"}:
                raise Unprocessable(f"chip {self.index[tile]} has mode {im.mode}; need RGB")
            arr = np.asarray(im.convert("RGB"))
        if arr.shape[:2] != (self.tile_size, self.tile_size):
            raise Unprocessable(f"chip {self.index[tile]} is {arr.shape[:2]}, not 256x256")
        return arr.transpose(2, 0, 1)

    def read(
        self, tile: Tile, context: int, exclude: frozenset[Tile] = frozenset()
    ) -> tuple[np.ndarray, np.ndarray]:
        s, (x, y, z) = self.tile_size, tile
        reach = -(-context // s)  # neighbours needed on each side
        n = 2 * reach + 1
        mosaic = np.zeros((3, n * s, n * s), np.uint8)
        valid = np.zeros((n * s, n * s), bool)
        for dy in range(-reach, reach + 1):
            for dx in range(-reach, reach + 1):
                key = (x + dx, y + dy, z)
                if key in self.index and key not in exclude:
                    r, c = (dy + reach) * s, (dx + reach) * s
                    mosaic[:, r : r + s, c : c + s] = self._chip(key)
                    valid[r : r + s, c : c + s] = True
        o = reach * s - context
        size = s + 2 * context
        return mosaic[:, o : o + size, o : o + size], valid[o : o + size, o : o + size]


class RasterImagery:
    """A GeoTIFF/COG in any CRS, read per Web-Mercator tile through rio-tiler."""

    def __init__(self, path: Path, tile_size: int = 256) -> None:
        from rio_tiler.io import Reader

        self.path = str(path)
        self.name = Path(path).stem
        self.tile_size = tile_size
        self._reader_cls = Reader
        with Reader(self.path) as src:
            count, dtype = src.dataset.count, src.dataset.dtypes[0]
            self.bounds = src.get_geographic_bounds("epsg:4326")
            if count not in (1, 3, 4):
                raise InvalidInput(
                    f"{path} has {count} bands; training needs RGB (3), RGBA (4) or 1 band",
                    bands=count,
                )
            self.indexes = (1, 1, 1) if count == 1 else (1, 2, 3)
            self.scale: tuple[float, float] | None = None
            if dtype != "uint8":  # stretch once per source so every tile shares a scale
                stats = src.statistics(indexes=self.indexes[:1] if count == 1 else None)
                lo = min(s.percentile_2 for s in stats.values())
                hi = max(s.percentile_98 for s in stats.values())
                self.scale = (lo, max(hi, lo + 1))

    def tiles(self, zoom: int, bounds: tuple[float, float, float, float]) -> list[Tile]:
        w = max(bounds[0], self.bounds[0])
        s = max(bounds[1], self.bounds[1])
        e = min(bounds[2], self.bounds[2])
        n = min(bounds[3], self.bounds[3])
        if w >= e or s >= n:
            return []
        return self._with_imagery(
            sorted((t.x, t.y, t.z) for t in mercantile.tiles(w, s, e, n, zoom))
        )

    def _with_imagery(self, tiles: list[Tile], per_tile: int = 8) -> list[Tile]:
        """The tiles with some imagery, from one coarse read of the mask over them all: a
        mosaic of chips has holes, and a tile of nodata can neither train nor validate
        (a small area's validation tile once fell in one, so no cut could be chosen)."""
        from rio_tiler.constants import WEB_MERCATOR_CRS

        x0, y0 = min(t[0] for t in tiles), min(t[1] for t in tiles)
        nx, ny = max(t[0] for t in tiles) - x0 + 1, max(t[1] for t in tiles) - y0 + 1
        k = max(1, min(per_tile, 2048 // max(nx, ny)))
        left, top = mercantile.xy(*mercantile.ul(x0, y0, tiles[0][2]))
        right, bottom = mercantile.xy(*mercantile.ul(x0 + nx, y0 + ny, tiles[0][2]))
        with self._reader_cls(self.path) as src:
            img = src.part(
                (left, bottom, right, top), dst_crs=WEB_MERCATOR_CRS, bounds_crs=WEB_MERCATOR_CRS,
                width=nx * k, height=ny * k, indexes=1,
            )  # fmt: skip
        seen = np.any((np.asarray(img.mask) > 0).reshape(ny, k, nx, k), axis=(1, 3))
        return [t for t in tiles if seen[t[1] - y0, t[0] - x0]]

    def read(
        self, tile: Tile, context: int, exclude: frozenset[Tile] = frozenset()
    ) -> tuple[np.ndarray, np.ndarray]:
        with self._reader_cls(self.path) as src:
            img = src.tile(*tile, tilesize=self.tile_size, indexes=self.indexes, buffer=context)
        data = img.data.astype(np.float32)
        if self.scale is not None:
            lo, hi = self.scale
            data = (data - lo) / (hi - lo) * 255.0
        valid = np.asarray(img.mask) > 0
        if exclude:
            valid &= ~_excluded_pixels(tile, context, self.tile_size, exclude)
        return np.clip(data, 0, 255).astype(np.uint8), valid


def open_imagery(path: str | Path) -> TileReader:
    """A chip folder or a raster file, decided by what the path is."""
    p = Path(path)
    if p.is_dir():
        return ChipFolder(p)
    if p.is_file():
        return RasterImagery(p)
    raise InvalidInput(f"imagery {path} is neither a chip folder nor a raster file")


OSM_SUFFIXES = (".osm.pbf", ".pbf", ".osm")


def read_features(path: str | Path) -> tuple[list[dict[str, Any]], str]:
    """GeoJSON-like features and the name of their CRS, from a GeoJSON file or an OSM
    extract (`.osm.pbf` / `.osm`, whose areas come back as polygons in EPSG:4326)."""
    if str(path).lower().endswith(OSM_SUFFIXES):
        from tilesight.model.osm import read_osm

        return read_osm(Path(path)), "EPSG:4326"
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"labels {path} are not readable GeoJSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise InvalidInput(f"labels {path} are not a GeoJSON object")
    feats = doc.get("features") if doc.get("type") == "FeatureCollection" else [doc]
    crs = ((doc.get("crs") or {}).get("properties") or {}).get("name", "EPSG:4326")
    return list(feats or []), crs


def load_footprints(path: str | Path) -> list[shapely.Geometry]:
    """Building polygons from GeoJSON in any CRS, returned in EPSG:3857 (tile pixel grid).

    A legacy `crs` member names the CRS (RFC 7946 files are EPSG:4326); features tagged
    `building=no` are dropped, invalid rings repaired rather than rejected.
    """
    geoms = [
        g for g, props in polygons_3857(path) if str(props.get("building", "yes")).lower() != "no"
    ]
    if not geoms:
        raise InvalidInput(f"labels {path} hold no building polygons")
    return geoms


def polygons_3857(path: str | Path) -> list[tuple[shapely.Polygon, dict[str, Any]]]:
    """Every polygon of a label file in EPSG:3857 with its feature's properties;
    multipolygons are split and invalid rings repaired rather than rejected."""
    feats, crs = read_features(path)
    to_3857 = pyproj.Transformer.from_crs(crs, "EPSG:3857", always_xy=True)
    out = []
    for feat in feats:
        geom, props = feat.get("geometry"), feat.get("properties") or {}
        if not geom:
            continue
        g = shapely.make_valid(shape(geom))
        g = shapely.transform(g, lambda c: np.column_stack(to_3857.transform(c[:, 0], c[:, 1])))
        out += [
            (p, props) for p in getattr(g, "geoms", [g]) if p.geom_type == "Polygon" and p.area > 0
        ]
    return out


def tile_transform(tile: Tile, tile_size: int, context: int):
    """Affine of the tile's pixel grid in EPSG:3857, grown by `context` pixels each side."""
    b = mercantile.xy_bounds(*tile)
    px = (b.right - b.left) / tile_size
    size = tile_size + 2 * context
    return from_bounds(
        b.left - context * px, b.bottom - context * px,
        b.right + context * px, b.top + context * px, size, size,
    )  # fmt: skip


def rasterize_instances(
    geoms: Sequence[shapely.Geometry], tile: Tile, tile_size: int, context: int
) -> np.ndarray:
    """int32 map: 0 background, k = the k-th footprint touching the tile (1-based)."""
    size = tile_size + 2 * context
    if not geoms:
        return np.zeros((size, size), np.int32)
    shapes = ((g, i + 1) for i, g in enumerate(geoms))
    return rasterize(
        shapes, out_shape=(size, size), transform=tile_transform(tile, tile_size, context),
        fill=0, dtype="int32",
    )  # fmt: skip


def _overlaps(a: mercantile.LngLatBbox, b: tuple[float, float, float, float]) -> bool:
    return a.west < b[2] and a.east > b[0] and a.south < b[3] and a.north > b[1]


def _excluded_pixels(tile: Tile, context: int, s: int, exclude: frozenset[Tile]) -> np.ndarray:
    size = s + 2 * context
    out = np.zeros((size, size), bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if (tile[0] + dx, tile[1] + dy, tile[2]) in exclude:
                r0, c0 = context + dy * s, context + dx * s
                out[max(r0, 0) : max(r0 + s, 0), max(c0, 0) : max(c0 + s, 0)] = True
    return out


def prepare_tiles(reader: TileReader, geoms: Sequence[shapely.Geometry], zoom: int) -> list[Tile]:
    """Tiles of the imagery at `zoom` within the labelled area (tiles outside it are
    unlabelled, not empty, so they must not teach the model 'no building here')."""
    w, s, e, n = shapely.total_bounds(geoms)
    to_ll = pyproj.Transformer.from_crs("EPSG:3857", "EPSG:4326", always_xy=True)
    (w, e), (s, n) = to_ll.transform([w, e], [s, n])
    tiles = reader.tiles(zoom, (w, s, e, n))
    if not tiles:
        raise InvalidInput(f"the labels do not overlap imagery {reader.name} at zoom {zoom}")
    return tiles
