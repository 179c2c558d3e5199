"""Prediction tiles: imagery tile + context buffer -> Triton -> crop -> resample.

The model sees every tile with `context_px` pixels of real context on each side and only
the centre is kept, so neighbouring tiles agree along their shared edge (no seams).
Probabilities are computed at the model's native zoom only and cached there as
float16 in Redis, keyed by model version, source and tile but not by colouring, so a
new threshold or colormap never re-runs the model; other zooms are cut or assembled
from native tiles. Identical concurrent requests share one computation: an in-process
future map for one process, a short Redis lock between processes (API and workers).
"""

from __future__ import annotations

import asyncio
import logging
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
from tilesight.imagery.reader import read_tile
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
#: the response header that says from which zoom a model's prediction tiles exist
MINZOOM_HEADER = "X-Predictions-Minzoom"


@dataclass
class PredictContext:
    """What prediction needs from its process: settings, Triton, the cache, the flights."""

    settings: Settings
    triton: TritonClient
    redis: aioredis.Redis | None  # None: no cache (benchmarks, `cache=False`)
    inflight: dict[str, asyncio.Future[np.ndarray]] = field(default_factory=dict)
    reloads: dict[str, asyncio.Task[None]] = field(default_factory=dict)

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


async def _native(ctx: PredictContext, layer: Layer, x: int, y: int) -> np.ndarray:
    """One native-zoom tile: from the cache, from a flight already under way, or computed."""
    key = cache_key(layer.model, layer.version, layer.source, x, y, layer.zoom)
    key = f"{key}:c{context_px(ctx.settings, layer.meta)}"
    cached = await _cache_get(ctx, key, layer.shape)
    if cached is not None:
        CACHE.labels("hit").inc()
        return cached
    flight = ctx.inflight.get(key)
    if flight is None:
        # a task of its own: a client that hangs up does not cancel it for the others
        flight = asyncio.ensure_future(_compute_once(ctx, layer, key, x, y))
        ctx.inflight[key] = flight
        flight.add_done_callback(lambda _: ctx.inflight.pop(key, None))
    return await asyncio.shield(flight)


async def _compute_once(ctx: PredictContext, layer: Layer, key: str, x: int, y: int) -> np.ndarray:
    """Compute unless another process holds the tile's lock; then wait for its result."""
    lock = f"{key}:lock"
    if ctx.redis is not None and not await _try_lock(ctx, lock):
        deadline = asyncio.get_running_loop().time() + ctx.settings.triton_timeout_s
        while asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
            cached = await _cache_get(ctx, key, layer.shape)
            if cached is not None:
                CACHE.labels("hit").inc()
                return cached
        # the other process gave up or died: compute it here rather than fail
    CACHE.labels("miss" if ctx.redis is not None else "off").inc()
    try:
        probs = await _infer(ctx, layer, x, y)
        await _cache_set(ctx, key, probs)
    finally:
        if ctx.redis is not None:
            await _unlock(ctx, lock)
    return probs


async def _infer(ctx: PredictContext, layer: Layer, x: int, y: int) -> np.ndarray:
    model, version = layer.model, layer.version
    buffer = context_px(ctx.settings, layer.meta)
    tile = await asyncio.to_thread(
        read_tile, layer.source, x, y, layer.zoom, tilesize=TILE, buffer=buffer,
        settings=ctx.settings,
    )  # fmt: skip
    mask = tile.mask[buffer : buffer + TILE, buffer : buffer + TILE]
    if not mask.any():  # nothing to look at: no need to ask the model
        return np.zeros(layer.shape, dtype=np.float32)
    try:
        with TRITON_LATENCY.labels(model).time():
            probs = await ctx.triton.infer(model, tile.data[None], str(version))
    except NotFound as exc:
        # on disk and in the database but not served: a version exported since Triton
        # last loaded the model. Ask Triton to load it (once at a time) and say when.
        _reload_in_background(ctx, model)
        raise Unavailable(
            f"model {model} version {version} is being loaded by Triton", retry_after=5
        ) from exc
    out = probs[0, :, buffer : buffer + TILE, buffer : buffer + TILE]
    return np.where(mask[None], out, 0.0).astype(np.float32)


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
