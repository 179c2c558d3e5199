"""The reading primitive on a real 16-bit UTM GeoTIFF made into a COG: shapes, masks,
context buffers that agree with the neighbours, and NotFound with the valid range."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tilesight.errors import InvalidInput, NotFound
from tilesight.imagery.cog import to_cog
from tilesight.imagery.rasters import inspect
from tilesight.imagery.reader import read_tile
from tilesight.imagery.render import encode
from tilesight.imagery.sources import SourceInfo
from tilesight.settings import Settings

ATLANTA = Path(__file__).resolve().parents[2] / "data" / "demo" / "atlanta-spacenet"
TILE = (69556, 105035, 18)
SETTINGS = Settings()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> SourceInfo:
    cog = to_cog(ATLANTA / "sample_geotiff.tif", tmp_path_factory.mktemp("cog") / "a.tif")
    f = inspect(cog)
    return SourceInfo(
        id="atl", name="atl", kind="cog", uri=str(cog), attribution="", crs=f.crs,
        bounds=f.bounds, minzoom=f.minzoom, maxzoom=f.maxzoom, native_zoom=f.native_zoom,
        resolution_m=f.resolution_m, band_count=f.band_count, dtype=f.dtype,
        rescale=f.rescale, version="1",
    )  # fmt: skip


def test_tile_is_8bit_rgb_with_mask(source: SourceInfo) -> None:
    tile = read_tile(source, *TILE, settings=SETTINGS)
    assert tile.data.shape == (3, 256, 256) and tile.data.dtype == np.uint8
    assert tile.mask.shape == (256, 256) and tile.mask.dtype == bool and tile.mask.any()
    assert (tile.data[0] == tile.data[2]).all()  # one band, grey
    assert 40 < tile.data[0][tile.mask].mean() < 215  # stretched, not black or white


def test_buffer_is_context_that_neighbours_agree_on(source: SourceInfo) -> None:
    x, y, z = TILE
    plain = read_tile(source, x, y, z, settings=SETTINGS)
    padded = read_tile(source, x, y, z, buffer=32, settings=SETTINGS)
    assert padded.data.shape == (3, 320, 320)
    inner = padded.data[:, 32:-32, 32:-32]
    assert np.abs(inner.astype(int) - plain.data).mean() < 1.0
    right = read_tile(source, x + 1, y, z, settings=SETTINGS)
    valid = right.mask[:, :32]
    edge = np.abs(padded.data[0, 32:-32, -32:].astype(int) - right.data[0, :, :32])
    assert edge[valid].mean() < 1.0


def test_outside_raises_not_found_with_range(source: SourceInfo) -> None:
    with pytest.raises(NotFound) as info:
        read_tile(source, 0, 0, 18, settings=SETTINGS)
    assert info.value.detail["minzoom"] == source.minzoom
    assert info.value.detail["tiles"]["x"][0] <= TILE[0] <= info.value.detail["tiles"]["x"][1]
    with pytest.raises(NotFound, match="zoom range"):
        read_tile(source, 0, 0, 2, settings=SETTINGS)


def test_bands_and_rescale(source: SourceInfo) -> None:
    dark = read_tile(source, *TILE, rescale=(0, 60000), settings=SETTINGS)
    bright = read_tile(source, *TILE, rescale=(0, 500), settings=SETTINGS)
    assert dark.data[0][dark.mask].mean() < bright.data[0][bright.mask].mean()
    with pytest.raises(InvalidInput, match="bidx"):
        read_tile(source, *TILE, bidx=[2], settings=SETTINGS)


def test_encode_keeps_transparency(source: SourceInfo) -> None:
    tile = read_tile(source, *TILE, settings=SETTINGS)
    tile.mask[:10] = False
    for fmt in ("png", "webp", "jpg"):
        assert len(encode(tile, fmt)) > 100


def test_block_is_one_window_over_its_tiles(source: SourceInfo) -> None:
    """A block read serves the block's four tiles from one window: each quarter holds
    the pixels of that tile read alone, and any of the four names the same block."""
    x, y, z = TILE
    x0, y0 = x & ~1, y & ~1
    block = read_tile(source, x0 + 1, y0, z, buffer=64, block=2, settings=SETTINGS)
    assert block.data.shape == (3, 640, 640) and block.mask.shape == (640, 640)
    same = read_tile(source, x0, y0 + 1, z, buffer=64, block=2, settings=SETTINGS)
    assert (same.data == block.data).all()
    for i, j in [(0, 0), (1, 0), (0, 1), (1, 1)]:
        alone = read_tile(source, x0 + i, y0 + j, z, settings=SETTINGS)
        part = block.data[:, 64 + 256 * j : 320 + 256 * j, 64 + 256 * i : 320 + 256 * i]
        valid = alone.mask & block.mask[64 + 256 * j : 320 + 256 * j, 64 + 256 * i : 320 + 256 * i]
        assert np.abs(part.astype(int) - alone.data)[:, valid].mean() < 1.0
    with pytest.raises(ValueError):
        read_tile(source, x, y, z, block=3, settings=SETTINGS)
