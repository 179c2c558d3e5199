"""What a model learns from: building footprints, class-tagged polygons, or a class raster.

Buildings are the default and keep instance ids (for object metrics and the border
class). Multi-class segmentation (land cover: water, trees, grass, impervious...) takes
either polygons whose property names their class, or a single-band raster of class
values in any CRS; both end as a uint8 class map on the tile's pixel grid, with IGNORE
where the label is missing so the loss and the metrics skip those pixels.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import mercantile
import numpy as np
import pyproj
import shapely
from rasterio.features import rasterize

from tilesight.errors import InvalidInput
from tilesight.model.sources import Tile, load_footprints, polygons_3857, tile_transform

IGNORE = 255
RASTER_SUFFIXES = (".tif", ".tiff")


def is_raster(path: str | Path) -> bool:
    return str(path).lower().endswith(RASTER_SUFFIXES)


class LabelRaster:
    """Class values from one band of a raster, resampled nearest (a class is never
    averaged) onto each tile's grid; nodata, `ignore_value` and pixels beyond the raster
    become IGNORE."""

    def __init__(self, path: Path, classes: int, ignore_value: int | None = None) -> None:
        from rio_tiler.io import Reader

        self.path, self.classes, self.ignore_value = str(path), classes, ignore_value
        self._reader = Reader
        try:
            with Reader(self.path) as src:
                count, dtype = src.dataset.count, src.dataset.dtypes[0]
                self.bounds = src.get_geographic_bounds("epsg:4326")
        except Exception as exc:  # rasterio raises several types for unreadable files
            raise InvalidInput(f"label raster {path} is not readable: {exc}") from exc
        if count != 1 or not np.issubdtype(np.dtype(dtype), np.integer):
            raise InvalidInput(
                f"label raster {path} has {count} band(s) of {dtype}; it needs one band of "
                "integer class values",
                bands=count,
                dtype=dtype,
            )

    def extent(self) -> list[shapely.Geometry]:
        """The raster's footprint in EPSG:3857, to choose the tiles to train on."""
        to_3857 = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True)
        w, s, e, n = self.bounds
        (x0, x1), (y0, y1) = to_3857.transform([w, e], [max(s, -85), min(n, 85)])
        return [shapely.box(x0, y0, x1, y1)]

    def read(self, tile: Tile, tile_size: int, context: int) -> np.ndarray:
        with self._reader(self.path) as src:
            img = src.tile(
                *tile, tilesize=tile_size, buffer=context, resampling_method="nearest",
                reproject_method="nearest",
            )  # fmt: skip
        values = np.asarray(img.data[0]).astype(np.int64)
        missing = np.asarray(img.mask) == 0
        if self.ignore_value is not None:
            missing |= values == self.ignore_value
        bad = np.unique(values[~missing & ((values < 0) | (values >= self.classes))])
        if bad.size:
            raise InvalidInput(
                f"label raster {self.path} holds class value(s) {bad[:10].tolist()} but only "
                f"{self.classes} classes (0..{self.classes - 1}) were named; name every "
                "class in order, or set the ignore value for unlabelled pixels",
                values=bad[:10].tolist(),
            )
        return np.where(missing, IGNORE, values).astype(np.uint8)

    def fingerprint(self) -> str:
        stat = Path(self.path).stat()
        return f"{self.path}:{stat.st_size}:{stat.st_mtime_ns}:{self.ignore_value}"


def load_class_polygons(
    path: str | Path, prop: str, names: Sequence[str]
) -> tuple[list[shapely.Geometry], list[int]]:
    """Polygons whose `prop` names one of `names` (case-insensitive), with that class
    index; features of other classes are skipped, and none at all is an error that lists
    the values the file does hold."""
    index = {n.lower(): i for i, n in enumerate(names)}
    geoms, classes, seen = [], [], set()
    for geom, props in polygons_3857(path):
        value = str(props.get(prop, "")).lower()
        seen.add(value)
        if value in index:
            geoms.append(geom)
            classes.append(index[value])
    if not geoms:
        raise InvalidInput(
            f"no polygon in {path} has a `{prop}` naming one of the classes {list(names)}; "
            f"values found: {sorted(v for v in seen if v)[:20]}",
            classes=list(names),
        )
    return geoms, classes


@dataclass
class LabelSet:
    """The labels of one source, ready to rasterise on any tile's grid."""

    geoms: list[shapely.Geometry] = field(default_factory=list)  # EPSG:3857
    classes: list[int] | None = None  # class index per polygon (multi-class polygons)
    raster: LabelRaster | None = None
    _tree: shapely.STRtree | None = field(default=None, init=False, repr=False)

    @property
    def multiclass(self) -> bool:
        return self.classes is not None or self.raster is not None

    def extent(self) -> list[shapely.Geometry]:
        return self.raster.extent() if self.raster is not None else self.geoms

    def fingerprint(self) -> str:
        if self.raster is not None:
            return self.raster.fingerprint()
        # The polygons' own bytes: the cache key must match in every process and rank.
        digest = hashlib.sha1()
        for wkb in shapely.to_wkb(self.geoms):
            digest.update(wkb)
        digest.update(repr(self.classes).encode())
        return f"{len(self.geoms)}:{digest.hexdigest()[:12]}"

    def near(self, tile: Tile, tile_size: int, context: int) -> list[int]:
        """Indices of polygons that reach into the tile or its context margin."""
        if self._tree is None:
            self._tree = shapely.STRtree(self.geoms)
        b = mercantile.xy_bounds(*tile)
        pad = (b.right - b.left) / tile_size * context
        box = shapely.box(b.left - pad, b.bottom - pad, b.right + pad, b.top + pad)
        return sorted(int(i) for i in self._tree.query(box, predicate="intersects"))

    def class_map(self, tile: Tile, tile_size: int, context: int) -> np.ndarray:
        """uint8 class index per pixel (multi-class only); smaller polygons are drawn last
        so a tree inside a park keeps its own class."""
        if self.raster is not None:
            return self.raster.read(tile, tile_size, context)
        size = tile_size + 2 * context
        assert self.classes is not None
        hits = sorted(self.near(tile, tile_size, context), key=lambda i: -self.geoms[i].area)
        if not hits:
            return np.zeros((size, size), np.uint8)
        return rasterize(
            ((self.geoms[i], self.classes[i]) for i in hits), out_shape=(size, size),
            transform=tile_transform(tile, tile_size, context), fill=0, dtype="uint8",
        )  # fmt: skip


def read_labels(
    path: str | Path,
    names: Sequence[str] = (),
    prop: str = "class",
    ignore_value: int | None = None,
) -> LabelSet:
    """Footprints when no class `names` are given; otherwise class polygons (GeoJSON or
    OSM, class in property `prop`) or, for a .tif, a raster of class values."""
    if not names:
        return LabelSet(load_footprints(path))
    if len(names) < 2:
        raise InvalidInput("multi-class labels need at least two classes, background first")
    if is_raster(path):
        return LabelSet(raster=LabelRaster(Path(path), len(names), ignore_value))
    geoms, classes = load_class_polygons(path, prop, names)
    return LabelSet(geoms, classes)
