"""Opening user-supplied rasters safely, and the facts a source records about them.

GDAL can open dozens of formats, some of which reach the filesystem or the network
on their own (VRT, XML-based drivers, /vsicurl). User-supplied files are therefore
opened with an explicit driver allow-list, and GDAL is configured once per process
for tile serving (block cache, no directory listing on open).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import rasterio
from rasterio._err import CPLE_BaseError
from rasterio.crs import CRS
from rasterio.env import set_gdal_config
from rasterio.errors import RasterioError, RasterioIOError
from rasterio.warp import transform_bounds
from rio_tiler.io import Reader

from tilesight.errors import InvalidInput, TooLarge, Unprocessable

# GeoTIFF (and so COG) is the only georeferenced format accepted for user files.
ALLOWED_DRIVER = "GTiff"
# Zoom levels served above the native resolution (upsampled), so a model whose
# native zoom is a little finer than the imagery can still read it.
OVERZOOM = 2
# Zoom levels served below the one where the smallest overview fills a tile: reading
# them costs no more than that overview, and a map zoomed out should still show where
# the imagery is.
UNDERZOOM = 4

GDAL_CONFIG: dict[str, str | int] = {
    # bytes: rasterio passes this int to GDALSetCacheMax64, so 512 meant 512 *bytes* and a
    # buffered (unaligned) tile read re-decoded JPEG blocks for ~5 s (predictions engineer)
    "GDAL_CACHEMAX": 512 * 1024 * 1024,
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_BAND_BLOCK_CACHE": "HASHSET",
    "GDAL_HTTP_MAX_RETRY": 0,
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff",
    "VSI_CACHE": "TRUE",
    "GDAL_TIFF_INTERNAL_MASK": "YES",
    "GDAL_NUM_THREADS": "1",
}


# what GDAL raises on a file that opened but cannot be read (truncated, corrupt blocks)
READ_ERRORS: tuple[type[Exception], ...] = (RasterioError, CPLE_BaseError)


@cache
def configure_gdal() -> None:
    """Set GDAL's process-wide options once; measured to matter for small-tile reads."""
    for key, value in GDAL_CONFIG.items():
        set_gdal_config(key, value)


def open_geotiff(path: Path, label: str | None = None) -> rasterio.DatasetReader:
    """Open a user's file as a GeoTIFF only; anything else is a 400 saying so.

    Messages name `label` (what the user sent: a file name, a URL), never our path.
    """
    configure_gdal()
    label = label or path.name
    try:
        return rasterio.open(path, driver=ALLOWED_DRIVER)
    except RasterioIOError as exc:
        reason = str(exc).replace(str(path), label).split(":")[-1].strip()[:200]
        raise InvalidInput(
            f"{label} is not a GeoTIFF raster; send a GeoTIFF/COG, a folder or zip "
            "of XYZ chips, or an XYZ tile URL template",
            reason=reason,
        ) from exc


def check_pixels(width: int, height: int, max_pixels: int, label: str) -> None:
    """TooLarge (413, with the limit) before converting a raster over the pixel budget."""
    if width * height > max_pixels:
        raise TooLarge(
            f"{label} is {width}x{height} pixels; the limit is {max_pixels} pixels: send a "
            "Cloud-Optimized GeoTIFF (served as is) or a smaller raster",
            width=width,
            height=height,
            limit=max_pixels,
        )


@dataclass(frozen=True)
class RasterFacts:
    """What a source records about its raster, so tiles need no inspection later."""

    crs: str
    bounds: tuple[float, float, float, float]  # EPSG:4326
    resolution_m: float
    minzoom: int
    maxzoom: int  # native zoom + OVERZOOM
    native_zoom: int
    band_count: int
    dtype: str
    rescale: tuple[float, float] | None  # default stretch for non-8-bit data


def inspect(path: Path) -> RasterFacts:
    """Read a COG's georeferencing, zoom range and a default stretch for display."""
    with open_geotiff(path) as dataset:
        if dataset.crs is None:
            raise Unprocessable(f"{path.name} has no coordinate reference system")
        crs: CRS = dataset.crs
        bounds = transform_bounds(crs, "EPSG:4326", *dataset.bounds, densify_pts=21)
        with Reader(None, dataset=dataset) as reader:  # type: ignore[arg-type]
            minzoom, native = reader.minzoom, reader.maxzoom
        resolution_m = _resolution_m(dataset)
        rescale = _default_rescale(dataset) if dataset.dtypes[0] != "uint8" else None
        return RasterFacts(
            crs=crs.to_string(),
            bounds=tuple(round(b, 8) for b in bounds),  # type: ignore[arg-type]
            resolution_m=resolution_m,
            minzoom=max(0, minzoom - UNDERZOOM),
            maxzoom=native + OVERZOOM,
            native_zoom=native,
            band_count=dataset.count,
            dtype=dataset.dtypes[0],
            rescale=rescale,
        )


def _resolution_m(dataset: rasterio.DatasetReader) -> float:
    res = abs(dataset.transform.a)
    if dataset.crs.is_geographic:
        return res * 111_320.0
    if dataset.crs.to_epsg() == 3857:
        # Web-Mercator metres shrink with latitude; report ground metres at the centre.
        lat = transform_bounds(dataset.crs, "EPSG:4326", *dataset.bounds)[1::2]
        return res * math.cos(math.radians(sum(lat) / 2))
    return res * dataset.crs.linear_units_factor[1]


def _default_rescale(dataset: rasterio.DatasetReader) -> tuple[float, float]:
    """A 2-98 percentile stretch from a small read: 16-bit imagery looks black otherwise."""
    factor = max(1, max(dataset.width, dataset.height) // 1024)
    out_shape = (dataset.count, dataset.height // factor or 1, dataset.width // factor or 1)
    data = dataset.read(out_shape=out_shape, masked=True)
    valid = data.compressed()
    if valid.size == 0:
        return (0.0, 1.0)
    low, high = np.percentile(valid, [2, 98])
    return (float(low), float(high) if high > low else float(low) + 1.0)
