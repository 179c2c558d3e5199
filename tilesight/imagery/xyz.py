"""Sources that are another server's XYZ tiles: fetched, and mosaicked when needed.

A tile read with a context buffer, or at 512 px, or above the upstream's maxzoom does
not map onto one upstream tile; the upstream tiles that cover the requested pixels
are fetched in parallel, pasted side by side and resampled to the requested grid.
Upstream 404s are holes (masked), not errors; other failures are 502s.
"""

from __future__ import annotations

import io
import math
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from threading import Lock

import numpy as np
from PIL import Image, UnidentifiedImageError

from tilesight.errors import UpstreamError
from tilesight.remote import RemoteClient
from tilesight.settings import Settings

UPSTREAM_TILE = 256
MAX_TILE_BYTES = 8 * 1024 * 1024
MISSING = (204, 404)


def is_template(uri: str) -> bool:
    return uri.startswith(("http://", "https://")) and all(
        key in uri for key in ("{z}", "{x}", "{y}")
    )


def tile_url(template: str, x: int, y: int, z: int) -> str:
    return template.replace("{z}", str(z)).replace("{x}", str(x)).replace("{y}", str(y))


def probe(settings: Settings, template: str, z: int) -> None:
    """Check that the upstream answers at all (a regional server may 404 this tile)."""
    fetcher = fetcher_for(tuple(settings.remote_allowlist), settings.request_timeout_s)
    fetcher.fetch(template, 0, 0, z)


class TileFetcher:
    """Fetches and decodes upstream tiles, with a small LRU of decoded RGBA arrays."""

    def __init__(self, allowlist: Sequence[str], timeout_s: float, cache_size: int = 512) -> None:
        self.client = RemoteClient(allowlist, timeout_s)
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="xyz")
        self.cache_size = cache_size
        self._cache: OrderedDict[str, np.ndarray | None] = OrderedDict()
        self._lock = Lock()

    def fetch(self, template: str, x: int, y: int, z: int) -> np.ndarray | None:
        """RGBA [256,256,4] of one upstream tile, or None where it has none."""
        if not 0 <= y < 2**z:
            return None
        url = tile_url(template, x % 2**z, y, z)
        with self._lock:
            if url in self._cache:
                self._cache.move_to_end(url)
                return self._cache[url]
        response = self.client.get(url, MAX_TILE_BYTES)
        if response.status in MISSING:
            rgba = None
        elif response.status != 200:
            raise UpstreamError(f"the tile server answered HTTP {response.status}", url=url)
        else:
            rgba = _decode(response.content, url)
        with self._lock:
            self._cache[url] = rgba
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return rgba

    def read(
        self,
        template: str,
        x: int,
        y: int,
        z: int,
        *,
        tilesize: int,
        buffer: int,
        maxzoom: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """RGB [3,N,N] and mask [N,N] (N = tilesize + 2*buffer) for tile x/y/z."""
        size = tilesize + 2 * buffer
        zs = min(maxzoom, z + max(0, math.ceil(math.log2(tilesize / UPSTREAM_TILE))))
        scale = (UPSTREAM_TILE * 2**zs) / (tilesize * 2**z)
        left, top = (x * tilesize - buffer) * scale, (y * tilesize - buffer) * scale
        right, bottom = left + size * scale, top + size * scale
        tx0, ty0 = math.floor(left / UPSTREAM_TILE), math.floor(top / UPSTREAM_TILE)
        tx1, ty1 = math.ceil(right / UPSTREAM_TILE), math.ceil(bottom / UPSTREAM_TILE)
        cells = [(tx, ty) for ty in range(ty0, ty1) for tx in range(tx0, tx1)]
        tiles = list(self.pool.map(lambda c: self.fetch(template, c[0], c[1], zs), cells))
        mosaic = np.zeros(((ty1 - ty0) * UPSTREAM_TILE, (tx1 - tx0) * UPSTREAM_TILE, 4), np.uint8)
        for (tx, ty), rgba in zip(cells, tiles, strict=True):
            if rgba is not None:
                r, c = (ty - ty0) * UPSTREAM_TILE, (tx - tx0) * UPSTREAM_TILE
                mosaic[r : r + UPSTREAM_TILE, c : c + UPSTREAM_TILE] = rgba
        ox, oy = left - tx0 * UPSTREAM_TILE, top - ty0 * UPSTREAM_TILE
        if scale == 1 and ox.is_integer() and oy.is_integer():
            out = mosaic[int(oy) : int(oy) + size, int(ox) : int(ox) + size]
        else:
            image = Image.fromarray(mosaic)
            box = (ox, oy, ox + size * scale, oy + size * scale)
            resample = Image.Resampling.BILINEAR if scale < 1 else Image.Resampling.BOX
            out = np.asarray(image.resize((size, size), resample, box=box))
        return np.ascontiguousarray(out[..., :3].transpose(2, 0, 1)), out[..., 3] > 127


def _decode(content: bytes, url: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(content)) as image:
            rgba = image.convert("RGBA")
    except (UnidentifiedImageError, OSError) as exc:
        raise UpstreamError("the tile server did not send an image", url=url) from exc
    if rgba.size != (UPSTREAM_TILE, UPSTREAM_TILE):
        rgba = rgba.resize((UPSTREAM_TILE, UPSTREAM_TILE), Image.Resampling.BILINEAR)
    return np.asarray(rgba)


@cache
def fetcher_for(allowlist: tuple[str, ...], timeout_s: float) -> TileFetcher:
    """One fetcher (connection pool, tile LRU) per process and configuration."""
    return TileFetcher(allowlist, timeout_s)
