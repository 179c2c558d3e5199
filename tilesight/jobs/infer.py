"""Inference for area jobs through the same `tilesight.predict` path as the overlay.

Jobs call `predict_tile` for every tile, so a job's polygons come from exactly the
pixels the overlay shows (each tile read with its context buffer and cropped). Two
things differ from the overlay: a job does not fill the Redis tile cache (a city-sized
job would evict every overlay tile for tiles nobody will look at again), and a job
records where its time went, so the Triton client it uses keeps a wall clock of the
time at least one inference request was in flight.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from tilesight.imagery.sources import SourceInfo
from tilesight.jobs.chunk import predict_tiles
from tilesight.jobs.plan import Tile
from tilesight.predict import PredictContext, predict_tile
from tilesight.settings import Settings
from tilesight.triton import TritonClient

ChunkPredictor = Callable[[list[Tile]], tuple[dict[Tile, np.ndarray], dict[str, float]]]


class TimedTriton(TritonClient):
    """A Triton client that measures the wall time during which any request is in flight
    (concurrent requests overlap, so this is not the sum of their durations)."""

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        super().__init__(url, timeout_s)
        self.busy_s = 0.0
        self._active = 0
        self._since = 0.0

    async def infer(self, *args: Any, **kwargs: Any) -> np.ndarray:
        if self._active == 0:
            self._since = time.perf_counter()
        self._active += 1
        try:
            return await super().infer(*args, **kwargs)
        finally:
            self._active -= 1
            if self._active == 0:
                self.busy_s += time.perf_counter() - self._since


# A map tile must answer in seconds or not at all; a job's request may wait behind the
# requests of every other chunk in flight (4 CPU workers x 8 tiles each queued for one
# Triton instance outran the tile timeout in bench/jobs.py), and only throughput matters.
JOB_TRITON_TIMEOUT_S = 120.0


def job_context(settings: Settings) -> PredictContext:
    """A prediction context for a worker process: its own Triton client with a batch
    deadline, and no tile cache."""
    timeout = max(settings.triton_timeout_s, JOB_TRITON_TIMEOUT_S)
    triton = TimedTriton(settings.triton_url, timeout)
    return PredictContext(settings, triton, None)


def chunk_predictor(
    ctx: PredictContext,
    loop: asyncio.AbstractEventLoop,
    model: str,
    version: int,
    source: SourceInfo,
    concurrency: int = 8,
) -> ChunkPredictor:
    """tiles -> (probabilities per tile with imagery, {"read": s, "infer": s}).

    "infer" is the wall time with a Triton request in flight; "read" is the rest of
    the prediction step (imagery reads, buffer and crop) that did not overlap it."""
    triton = ctx.triton

    async def one(tile: Tile) -> np.ndarray:
        x, y, z = tile
        return await predict_tile(ctx, model, version, source, x, y, z)

    def run(tiles: list[Tile]) -> tuple[dict[Tile, np.ndarray], dict[str, float]]:
        busy0 = triton.busy_s if isinstance(triton, TimedTriton) else 0.0
        t0 = time.perf_counter()
        probs = loop.run_until_complete(predict_tiles(one, tiles, concurrency))
        wall = time.perf_counter() - t0
        if not isinstance(triton, TimedTriton):
            return probs, {"infer": round(wall, 4)}
        infer = triton.busy_s - busy0
        return probs, {"read": round(max(wall - infer, 0.0), 4), "infer": round(infer, 4)}

    return run
