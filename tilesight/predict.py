"""Prediction tiles: imagery tile + context buffer -> Triton -> crop -> resample.

The model sees every tile with `context_px` pixels of real context on each side and only
the centre is kept, so neighbouring tiles agree along their shared edge (no seams).
Probabilities are computed at the model's native zoom only and cached there as
float16 in Redis, keyed by model version, source and tile but not by colouring, so a
new threshold or colormap never re-runs the model; other zooms are cut or assembled
from native tiles. Identical concurrent requests share one computation: an in-process
future map for one process, a short Redis lock between processes (API and workers).

The model runs on blocks of `prediction_block` x `prediction_block` native tiles, one
window with the context around the whole block, and every tile of the block is kept:
the context is paid once per block instead of once per tile (a 2 x 2 block is 640 px
for four tiles against 4 x 384 px, 1.44x fewer pixels, and the CPU runtimes also run
larger windows faster per pixel; bench/predictions.py). The overlay and area jobs use
the same blocks, so a job's polygons still come from exactly the pixels the map shows.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis.asyncio as aioredis
import torch
from redis.exceptions import RedisError
from torch.nn import functional as F

from tilesight import registry
from tilesight.errors import NotFound, Unavailable
from tilesight.imagery.reader import check_tile, read_tile, tile_problem
from tilesight.imagery.sources import SourceInfo
from tilesight.settings import Settings
from tilesight.telemetry import CACHE, TRITON_LATENCY
from tilesight.triton import TritonClient

log = logging.getLogger(__name__)

TILE = 256
#: zooms below the model's native one that are still served, by assembling 4**d tiles
MAX_ZOOM_OUT = 2
#: zooms above native are cut from the native parent; beyond this a pixel is < 1 px
MAX_ZOOM_IN = 8
LOCK_TTL_MS = 15_000
#: a block's other tiles, kept in process until each is asked for once (a moment later:
#: the map's next tiles, the job's next ones); this is no cache, the oldest go first
SIBLINGS_KEPT = 64
#: the response header that says from which zoom a model's prediction tiles exist
MINZOOM_HEADER = "X-Predictions-Minzoom"


Cell = tuple[int, int]  # a native tile's x, y


@dataclass
class PredictContext:
    """What prediction needs from its process: settings, Triton, the cache, the flights."""

    settings: Settings
    triton: TritonClient
    redis: aioredis.Redis | None  # None: no cache (benchmarks, `cache=False`)
    inflight: dict[str, asyncio.Future[dict[Cell, np.ndarray]]] = field(default_factory=dict)
    reloads: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    siblings: OrderedDict[str, np.ndarray] = field(default_factory=OrderedDict)

    def keep_sibling(self, key: str, probs: np.ndarray) -> None:
        self.siblings[key] = probs
        while len(self.siblings) > SIBLINGS_KEPT:
            self.siblings.popitem(last=False)

    @classmethod
    def create(cls, settings: Settings, cache: bool = True) -> PredictContext:
        """A context of its own (Celery workers, the CLI, benchmarks): own clients."""
        redis = aioredis.Redis.from_url(settings.redis_url, socket_timeout=2) if cache else None
        return cls(settings, TritonClient(settings.triton_url, settings.triton_timeout_s), redis)

    async def close(self) -> None:
        await self.triton.close()
        if self.redis is not None:
            await self.redis.aclose()


@dataclass(frozen=True, eq=False)
class Layer:
    """One model version over one source: what every native tile of a request shares."""

    model: str
    version: int
    meta: dict[str, Any]
    source: SourceInfo
    pinned: bool = False  # the caller named the version, so its tiles never change

    @property
    def zoom(self) -> int:
        return int(self.meta["zoom"])

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.meta["classes"]), TILE, TILE)


def min_zoom(metadata: dict[str, Any]) -> int:
    """The lowest zoom prediction tiles exist at (header X-Predictions-Minzoom, TileJSON)."""
    return max(0, int(metadata["zoom"]) - MAX_ZOOM_OUT)


def check_zoom(model: str, metadata: dict[str, Any], z: int) -> None:
    """NotFound, saying where to zoom in to, for a zoom below the model's reach."""
    minzoom = min_zoom(metadata)
    if z < minzoom:
        raise NotFound(
            f"predictions of {model} exist from zoom {minzoom}; zoom in",
            headers={MINZOOM_HEADER: str(minzoom)},
            minzoom=minzoom,
            native_zoom=metadata["zoom"],
        )


def context_px(settings: Settings, metadata: dict[str, Any]) -> int:
    """Context pixels read around each tile: at least the model's own buffer, and at least
    `prediction_context_px`, rounded up so the input stays a multiple of 2**depth.

    A buffer of 32 px (what the demo model trained with) left up to 0.05 of probability
    difference at tile edges against one large window; 64 px brought it to 0.002 and
    96 px to zero, so serving reads more context than training needed."""
    multiple = 2 ** int(metadata.get("architecture", {}).get("depth", 4))
    px = max(int(metadata.get("buffer", 0)), settings.prediction_context_px)
    return -(-px // (multiple // 2)) * (multiple // 2)


def cache_key(model: str, version: int, source: SourceInfo, x: int, y: int, z: int) -> str:
    return f"tilesight:pred:{model}:{version}:{source.id}:{source.version}:{z}/{x}/{y}"


async def predict_tile(
    ctx: PredictContext,
    model: str,
    version: int,
    source: SourceInfo,
    x: int,
    y: int,
    z: int,
) -> np.ndarray:
    """float32 [C, 256, 256] probabilities of tile z/x/y, made at the model's native zoom.

    NotFound when the tile has no imagery or lies more than MAX_ZOOM_OUT zooms below
    native; Unavailable (503) when Triton is down or the version is still loading."""
    meta = registry.model_metadata(ctx.settings, model, version)
    layer = Layer(model, version, meta, source)
    native = layer.zoom
    if z == native:
        return await _native(ctx, layer, x, y)
    if z > native:
        return await _zoomed_in(ctx, layer, x, y, z - native)
    check_zoom(model, meta, z)
    return await _zoomed_out(ctx, layer, x, y, native - z)


async def predict_tile_2x(
    ctx: PredictContext, model: str, version: int, source: SourceInfo, x: int, y: int, z: int
) -> np.ndarray:
    """[C, 512, 512] for a @2x tile: its four children, each at full resolution."""
    parts = await _gather_children(
        lambda cx, cy: predict_tile(ctx, model, version, source, cx, cy, z + 1), x, y, 1
    )
    return _mosaic(parts, 2)


async def _zoomed_in(ctx: PredictContext, layer: Layer, x: int, y: int, levels: int) -> np.ndarray:
    if levels > MAX_ZOOM_IN:
        raise NotFound(f"predictions of {layer.model} stop {MAX_ZOOM_IN} zooms above native")
    parent = await _native(ctx, layer, x >> levels, y >> levels)
    size = TILE >> levels
    ox, oy = (x - ((x >> levels) << levels)) * size, (y - ((y >> levels) << levels)) * size
    part = torch.from_numpy(np.ascontiguousarray(parent[:, oy : oy + size, ox : ox + size]))
    return F.interpolate(part[None], size=(TILE, TILE), mode="bilinear", align_corners=False)[
        0
    ].numpy()


async def _zoomed_out(ctx: PredictContext, layer: Layer, x: int, y: int, levels: int) -> np.ndarray:
    n = 2**levels
    parts = await _gather_children(lambda cx, cy: _native(ctx, layer, cx, cy), x, y, levels)
    mosaic = _mosaic(parts, n)
    c = mosaic.shape[0]
    # area average: a building covering a quarter of a pixel reads as 0.25, not as a hit
    return mosaic.reshape(c, TILE, n, TILE, n).mean(axis=(2, 4))


async def _gather_children(
    one: Callable[[int, int], Awaitable[np.ndarray]], x: int, y: int, levels: int
) -> dict[tuple[int, int], np.ndarray | None]:
    """Children of x/y `levels` zooms down, all in flight at once so Triton batches them;
    a child outside the imagery is None, and all of them outside is NotFound."""
    n = 2**levels
    cells = [(i, j) for j in range(n) for i in range(n)]

    async def run(i: int, j: int) -> np.ndarray | None:
        try:
            return await one(x * n + i, y * n + j)
        except NotFound:
            return None

    results = await asyncio.gather(*(run(i, j) for i, j in cells))
    if all(r is None for r in results):
        raise NotFound(f"no imagery under this tile (searched {n * n} tiles at the model's zoom)")
    return dict(zip(cells, results, strict=True))


def _mosaic(parts: dict[tuple[int, int], np.ndarray | None], n: int) -> np.ndarray:
    c = next(p for p in parts.values() if p is not None).shape[0]
    size = next(p for p in parts.values() if p is not None).shape[1]
    mosaic = np.zeros((c, size * n, size * n), dtype=np.float32)
    for (i, j), part in parts.items():
        if part is not None:
            mosaic[:, j * size : (j + 1) * size, i * size : (i + 1) * size] = part
    return mosaic


def _tile_key(ctx: PredictContext, layer: Layer, x: int, y: int) -> str:
    """The cache key of a native tile; probabilities differ (a little) with the context
    and the block they were computed in, so both are part of it."""
    key = cache_key(layer.model, layer.version, layer.source, x, y, layer.zoom)
    return f"{key}:c{context_px(ctx.settings, layer.meta)}:b{ctx.settings.prediction_block}"


async def _native(ctx: PredictContext, layer: Layer, x: int, y: int) -> np.ndarray:
    """One native-zoom tile: kept from its block's run, from the cache, from a flight of
    its block already under way, or computed with the rest of its block."""
    key = _tile_key(ctx, layer, x, y)
    sibling = ctx.siblings.pop(key, None)
    if sibling is not None:
        return sibling
    cached = await _cache_get(ctx, key, layer.shape)
    if cached is not None:
        CACHE.labels("hit").inc()
        return cached
    check_tile(layer.source, x, y, layer.zoom)  # before it joins a sibling's flight
    n = ctx.settings.prediction_block
    block = (x - x % n, y - y % n)
    block_key = f"{_tile_key(ctx, layer, *block)}:block"
    flight = ctx.inflight.get(block_key)
    if flight is None:
        # a task of its own: a client that hangs up does not cancel it for the others
        flight = asyncio.ensure_future(_compute_once(ctx, layer, block_key, x, y))
        ctx.inflight[block_key] = flight
        flight.add_done_callback(lambda _: ctx.inflight.pop(block_key, None))
    tiles = await asyncio.shield(flight)
    ctx.siblings.pop(key, None)  # it joined the flight: nobody else waits for it
    return tiles[(x, y)]


def _block_cells(layer: Layer, x: int, y: int, n: int) -> list[Cell]:
    """The tiles of x/y's n x n block that lie within the imagery's bounds."""
    x0, y0 = x - x % n, y - y % n
    cells = [(x0 + i, y0 + j) for j in range(n) for i in range(n)]
    return [c for c in cells if tile_problem(layer.source, c[0], c[1], layer.zoom) is None]


async def _compute_once(
    ctx: PredictContext, layer: Layer, block_key: str, x: int, y: int
) -> dict[Cell, np.ndarray]:
    """Compute tile x/y's block unless another process holds its lock; then wait for
    that process to cache every tile of the block."""
    lock = f"{block_key}:lock"
    if ctx.redis is not None and not await _try_lock(ctx, lock):
        cells = _block_cells(layer, x, y, ctx.settings.prediction_block)
        keys = [_tile_key(ctx, layer, *cell) for cell in cells]
        deadline = asyncio.get_running_loop().time() + ctx.settings.triton_timeout_s
        while asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
            cached = [await _cache_get(ctx, key, layer.shape) for key in keys]
            if all(c is not None for c in cached):
                CACHE.labels("hit").inc()
                return dict(zip(cells, cached, strict=True))  # type: ignore[arg-type]
        # the other process gave up or died: compute it here rather than fail
    CACHE.labels("miss" if ctx.redis is not None else "off").inc()
    try:
        tiles = await _infer(ctx, layer, x, y)
        for (tx, ty), probs in tiles.items():
            if (tx, ty) != (x, y):
                ctx.keep_sibling(_tile_key(ctx, layer, tx, ty), probs)
            await _cache_set(ctx, _tile_key(ctx, layer, tx, ty), probs)
    finally:
        if ctx.redis is not None:
            await _unlock(ctx, lock)
    return tiles


async def _infer(ctx: PredictContext, layer: Layer, x: int, y: int) -> dict[Cell, np.ndarray]:
    """Every tile of x/y's block that lies in the imagery's bounds, from one window."""
    model, version = layer.model, layer.version
    buffer, n = context_px(ctx.settings, layer.meta), ctx.settings.prediction_block
    window = await asyncio.to_thread(
        read_tile, layer.source, x, y, layer.zoom, tilesize=TILE, buffer=buffer,
        settings=ctx.settings, block=n,
    )  # fmt: skip
    x0, y0 = x - x % n, y - y % n
    cells = _block_cells(layer, x, y, n)
    inner = window.mask[buffer : buffer + n * TILE, buffer : buffer + n * TILE]
    if not inner.any():  # nothing to look at: no need to ask the model
        return {cell: np.zeros(layer.shape, dtype=np.float32) for cell in cells}
    try:
        with TRITON_LATENCY.labels(model).time():
            probs = await ctx.triton.infer(model, window.data[None], str(version))
    except NotFound as exc:
        # on disk and in the database but not served: a version exported since Triton
        # last loaded the model. Ask Triton to load it (once at a time) and say when.
        _reload_in_background(ctx, model)
        raise Unavailable(
            f"model {model} version {version} is being loaded by Triton", retry_after=5
        ) from exc
    tiles = {}
    for tx, ty in cells:
        rows = slice(buffer + (ty - y0) * TILE, buffer + (ty - y0 + 1) * TILE)
        cols = slice(buffer + (tx - x0) * TILE, buffer + (tx - x0 + 1) * TILE)
        out = np.where(window.mask[None, rows, cols], probs[0, :, rows, cols], 0.0)
        tiles[(tx, ty)] = out.astype(np.float32)
    return tiles


def _reload_in_background(ctx: PredictContext, model: str) -> None:
    running = ctx.reloads.get(model)
    if running is not None and not running.done():
        return

    async def reload() -> None:
        try:
            await registry.ensure_loaded(ctx.triton, model, ctx.settings)
        except (Unavailable, NotFound) as exc:
            log.warning("Triton could not load %s: %s", model, exc.message)

    ctx.reloads[model] = asyncio.ensure_future(reload())


async def _cache_get(
    ctx: PredictContext, key: str, shape: tuple[int, int, int]
) -> np.ndarray | None:
    if ctx.redis is None:
        return None
    try:
        blob = await ctx.redis.get(key)
    except RedisError as exc:  # a cache outage slows tiles down but must not break them
        log.warning("prediction cache read failed: %s", exc)
        return None
    if blob is None or len(blob) != int(np.prod(shape)) * 2:
        return None
    return np.frombuffer(blob, dtype=np.float16).reshape(shape).astype(np.float32)


async def _cache_set(ctx: PredictContext, key: str, probs: np.ndarray) -> None:
    if ctx.redis is None:
        return
    try:
        await ctx.redis.set(
            key, probs.astype(np.float16).tobytes(), ex=ctx.settings.tile_cache_ttl_s
        )
    except RedisError as exc:
        log.warning("prediction cache write failed: %s", exc)


async def _try_lock(ctx: PredictContext, lock: str) -> bool:
    assert ctx.redis is not None
    try:
        return bool(await ctx.redis.set(lock, b"1", nx=True, px=LOCK_TTL_MS))
    except RedisError:
        return True  # no Redis, no other process to agree with


async def _unlock(ctx: PredictContext, lock: str) -> None:
    assert ctx.redis is not None
    try:
        await ctx.redis.delete(lock)
    except RedisError as exc:
        log.warning("prediction lock release failed: %s", exc)
