"""The reading primitive: the pixels of one Web-Mercator tile (plus context) of a source.

Tiles, predictions and area jobs all read through `read_tile`, so the overlay and the
polygons come from the same pixels. Opened datasets are kept per thread (a rasterio
dataset must not be shared between threads) and reused across requests: opening a COG
costs more than reading a tile from it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import mercantile
import numpy as np
from rasterio.errors import RasterioIOError
from rio_tiler.io import Reader

from tilesight.errors import InvalidInput, NotFound, Unavailable
from tilesight.imagery import xyz
from tilesight.imagery.rasters import configure_gdal
from tilesight.imagery.sources import SourceInfo
from tilesight.settings import Settings

READERS_PER_THREAD = 32
_local = threading.local()


@dataclass(frozen=True)
class TileArray:
    data: np.ndarray  # uint8 [3, H, W], RGB
    mask: np.ndarray  # bool [H, W], True where there is data

    @property
    def empty(self) -> bool:
        return not bool(self.mask.any())


def tile_problem(source: SourceInfo, x: int, y: int, z: int) -> str | None:
    """Why tile x/y/z cannot be read from `source`, or None when it can."""
    if not source.minzoom <= z <= source.maxzoom:
        return f"zoom {z} is outside {source.id}'s zoom range"
    if not (0 <= x < 2**z and 0 <= y < 2**z):
        return f"tile {z}/{x}/{y} does not exist: x and y go from 0 to {2**z - 1}"
    west, south, east, north = mercantile.bounds(x, y, z)
    sw, ss, se, sn = source.bounds
    if west >= se or east <= sw or south >= sn or north <= ss:
        return f"tile {z}/{x}/{y} is outside {source.id}'s bounds"
    return None


def check_tile(source: SourceInfo, x: int, y: int, z: int) -> None:
    """NotFound, with the valid zoom range, bounds and tile range, for an unreadable tile."""
    problem = tile_problem(source, x, y, z)
    if problem is not None:
        detail: dict[str, Any] = {
            "minzoom": source.minzoom,
            "maxzoom": source.maxzoom,
            "bounds": list(source.bounds),
        }
        if source.minzoom <= z <= source.maxzoom:
            detail["tiles"] = _tile_range(source, z)
        raise NotFound(problem, **detail)


def _tile_range(source: SourceInfo, z: int) -> dict[str, list[int]]:
    west, south, east, north = source.bounds
    ul = mercantile.tile(west, north, z)
    lr = mercantile.tile(min(east, 179.9999999), max(south, -85.05), z)
    return {"x": [ul.x, lr.x], "y": [ul.y, lr.y]}


def read_tile(
    source: SourceInfo,
    x: int,
    y: int,
    z: int,
    *,
    settings: Settings,
    tilesize: int = 256,
    buffer: int = 0,
    bidx: Sequence[int] | None = None,
    rescale: tuple[float, float] | None = None,
    block: int = 1,
) -> TileArray:
    """8-bit RGB of tile x/y/z with `buffer` context pixels each side, and its mask.

    `bidx` picks 1 or 3 bands (1-band imagery is shown as grey); `rescale` stretches
    non-8-bit values to 0-255 (default: the stretch measured at registration).
    `settings` is required: an XYZ source is fetched under its allow-list and timeout,
    which must be the app's own, not whatever the environment says.
    `block` (a power of two) reads the block x block tiles of zoom z that hold x/y/z,
    aligned on multiples of `block`, as one window at zoom z's resolution: it is the tile
    of zoom z - log2(block) above them at `block` times the size, so it covers the same
    ground at the same resolution as a read of each tile (within a grey level where the
    source is resampled), and only x/y/z itself must exist.
    """
    check_tile(source, x, y, z)
    if block < 1 or block & (block - 1):
        raise ValueError(f"block must be a power of two, not {block}")
    levels = block.bit_length() - 1
    x, y, z, tilesize = x >> levels, y >> levels, z - levels, tilesize * block
    if source.kind == "xyz":
        fetcher = xyz.fetcher_for(tuple(settings.remote_allowlist), settings.request_timeout_s)
        data, mask = fetcher.read(
            source.uri, x, y, z, tilesize=tilesize, buffer=buffer, maxzoom=source.native_zoom
        )
        return TileArray(data, mask)
    indexes = _indexes(source, bidx)
    reader = _reader(source)
    size = tilesize + 2 * buffer
    if not reader.tile_exists(x, y, z):
        # Inside the recorded (EPSG:4326) bounds but not the dataset's own: no pixels.
        return TileArray(np.zeros((3, size, size), np.uint8), np.zeros((size, size), bool))
    try:
        image = reader.tile(x, y, z, tilesize=tilesize, indexes=indexes, buffer=buffer or None)
    except RasterioIOError as exc:
        _forget(source)
        raise Unavailable(f"the imagery of {source.id} cannot be read right now") from exc
    values = image.array.data
    mask = np.asarray(~np.ma.getmaskarray(image.array).all(axis=0))
    data = _to_uint8(values, source, rescale)
    if data.shape[0] == 1:
        data = np.repeat(data, 3, axis=0)
    return TileArray(data, mask)


def _indexes(source: SourceInfo, bidx: Sequence[int] | None) -> tuple[int, ...]:
    if bidx is None:
        return (1, 2, 3) if source.band_count >= 3 else (1,)
    if len(bidx) not in (1, 3) or not all(1 <= b <= source.band_count for b in bidx):
        raise InvalidInput(
            f"bidx takes 1 or 3 band numbers between 1 and {source.band_count}",
            bidx=list(bidx),
            band_count=source.band_count,
        )
    return tuple(bidx)


def _to_uint8(
    values: np.ndarray, source: SourceInfo, rescale: tuple[float, float] | None
) -> np.ndarray:
    stretch = rescale or source.rescale
    if stretch is None:
        if values.dtype == np.uint8:
            return values
        info = np.iinfo(values.dtype) if values.dtype.kind in "iu" else None
        stretch = (float(info.min), float(info.max)) if info else (0.0, 1.0)
    low, high = stretch
    scaled = (values.astype(np.float32) - low) * (255.0 / max(high - low, 1e-12))
    return np.clip(scaled, 0, 255).astype(np.uint8)


def _reader(source: SourceInfo) -> Reader:
    readers: OrderedDict[tuple[str, str], Reader] | None = getattr(_local, "readers", None)
    if readers is None:
        configure_gdal()
        readers = _local.readers = OrderedDict()
    key = (source.uri, source.version)
    reader = readers.get(key)
    if reader is None:
        try:
            reader = Reader(source.uri)
        except RasterioIOError as exc:
            raise Unavailable(f"the imagery file of {source.id} is missing or unreadable") from exc
        readers[key] = reader
        if len(readers) > READERS_PER_THREAD:
            readers.popitem(last=False)[1].close()
    else:
        readers.move_to_end(key)
    return reader


def _forget(source: SourceInfo) -> None:
    readers = getattr(_local, "readers", None)
    if readers is not None:
        reader = readers.pop((source.uri, source.version), None)
        if reader is not None:
            reader.close()
