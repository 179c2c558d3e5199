"""Prediction tiles without services: the crop, the zoom resampling and single flight.

Triton and the imagery reader are the faked boundaries: the fake reader paints each
pixel with a value that depends only on its position on Earth, and the fake model
returns that value as the probability, so every crop or resample can be checked
against the position the pixel should come from.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import mercantile
import numpy as np
import pytest
import torch
from torch.nn import functional as F

from tilesight import predict
from tilesight.errors import NotFound, Unavailable
from tilesight.imagery.reader import TileArray
from tilesight.imagery.sources import SourceInfo
from tilesight.settings import Settings

NATIVE = 19
X0, Y0 = 319291, 270961  # tiles west/north of this have no imagery (odd: see zoom out)


def painted(x: int, y: int, z: int, tilesize: int, buffer: int) -> np.ndarray:
    """Value of each pixel from its global row and column at zoom z (0..1)."""
    cols = np.arange(x * tilesize - buffer, (x + 1) * tilesize + buffer)
    rows = np.arange(y * tilesize - buffer, (y + 1) * tilesize + buffer)
    return (np.mod(rows[:, None] * 3 + cols[None, :] * 7, 251) / 250.0).astype(np.float32)


def fake_read_tile(source, x, y, z, *, tilesize=256, buffer=0, settings=None, block=1):
    """The window of x/y's block, with no pixels west of X0 or north of Y0."""
    if x < X0 or y < Y0:
        raise NotFound("outside")
    x0, y0 = x - x % block, y - y % block
    value = painted(x0 // block, y0 // block, z, tilesize * block, buffer)  # the same ground
    cols = np.arange(x0 * tilesize - buffer, (x0 + block) * tilesize + buffer)
    rows = np.arange(y0 * tilesize - buffer, (y0 + block) * tilesize + buffer)
    data = np.repeat((value * 250).round().astype(np.uint8)[None], 3, axis=0)
    mask = (rows[:, None] >= Y0 * tilesize) & (cols[None, :] >= X0 * tilesize)
    return TileArray(data, mask)


class FakeTriton:
    def __init__(self, fail: Exception | None = None) -> None:
        self.calls = 0
        self.fail = fail

    async def infer(self, model: str, image: np.ndarray, version: str = "") -> np.ndarray:
        self.calls += 1
        await asyncio.sleep(0.01)
        if self.fail:
            raise self.fail
        return (image[:, :1].astype(np.float32) / 250.0).astype(np.float16).astype(np.float32)

    async def load_model(self, model: str, config: str | None = None) -> None:
        self.fail = None

    async def close(self) -> None:
        pass


@pytest.fixture
def ctx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> predict.PredictContext:
    version = tmp_path / "buildings" / "1"
    version.mkdir(parents=True)
    meta = {"zoom": NATIVE, "buffer": 32, "classes": [{"name": "building"}], "threshold": 0.5,
            "architecture": {"depth": 4}}  # fmt: skip
    (version / "metadata.json").write_text(json.dumps(meta))
    monkeypatch.setattr(predict, "read_tile", fake_read_tile)
    settings = Settings(model_repo=tmp_path, home=tmp_path, prediction_context_px=64)
    return predict.PredictContext(settings, FakeTriton(), None)  # type: ignore[arg-type]


# the imagery starts at tile X0/Y0: tiles west or north of it are outside its bounds
_WEST, _NORTH = mercantile.bounds(X0, Y0, NATIVE).west, mercantile.bounds(X0, Y0, NATIVE).north
SOURCE = SourceInfo("s", "s", "cog", "/dev/null", "", "", (_WEST, -85, 180, _NORTH), 0, 24, 21,
                    None, 3, "uint8", None, "1")  # fmt: skip


def run(ctx: predict.PredictContext, x: int, y: int, z: int) -> np.ndarray:
    return asyncio.run(predict.predict_tile(ctx, "buildings", 1, SOURCE, x, y, z))


def test_native_tile_is_the_centre_of_the_window(ctx: predict.PredictContext) -> None:
    out = run(ctx, X0 + 1, Y0 + 1, NATIVE)
    assert out.shape == (1, 256, 256)
    assert np.abs(out[0] - painted(X0 + 1, Y0 + 1, NATIVE, 256, 0)).max() < 2e-3
    assert predict.context_px(ctx.settings, {"buffer": 32, "architecture": {"depth": 4}}) == 64
    assert predict.context_px(ctx.settings, {"buffer": 70, "architecture": {"depth": 4}}) == 72


def test_zoom_in_cuts_and_upsamples_the_parent(ctx: predict.PredictContext) -> None:
    x, y = (X0 + 1) * 2 + 1, (Y0 + 1) * 2  # the north-east quarter of a native tile
    out = run(ctx, x, y, NATIVE + 1)
    quarter = torch.from_numpy(painted(X0 + 1, Y0 + 1, NATIVE, 256, 0)[:128, 128:].copy())
    expected = F.interpolate(quarter[None, None], size=(256, 256), mode="bilinear")[0, 0]
    assert out.shape == (1, 256, 256)
    assert np.abs(out[0] - expected.numpy()).max() < 2e-3


def test_zoom_out_averages_children_and_leaves_missing_ones_empty(
    ctx: predict.PredictContext,
) -> None:
    px, py = X0 // 2, Y0 // 2  # of its four children only the south-east one has imagery
    out = run(ctx, px, py, NATIVE - 1)
    assert out.shape == (1, 256, 256)
    expected = painted(X0, Y0, NATIVE, 256, 0).reshape(128, 2, 128, 2).mean(axis=(1, 3))
    assert np.abs(out[0, 128:, 128:] - expected).max() < 2e-3
    assert (out[0, :128] == 0).all() and (out[0, :, :128] == 0).all()
    with pytest.raises(NotFound) as info:
        run(ctx, px, py, NATIVE - 3)
    assert info.value.detail["minzoom"] == NATIVE - 2
    with pytest.raises(NotFound):
        run(ctx, 0, 0, NATIVE - 1)  # no imagery under any child


def test_concurrent_identical_tiles_run_the_model_once(ctx: predict.PredictContext) -> None:
    async def burst() -> list[np.ndarray]:
        one = predict.predict_tile
        return await asyncio.gather(
            *(one(ctx, "buildings", 1, SOURCE, X0, Y0, NATIVE) for _ in range(8))
        )

    results = asyncio.run(burst())
    assert ctx.triton.calls == 1  # type: ignore[attr-defined]
    assert all(np.array_equal(r, results[0]) for r in results)


def test_version_not_served_asks_triton_to_load_it(ctx: predict.PredictContext) -> None:
    ctx.triton.fail = NotFound("unknown version")  # type: ignore[attr-defined]

    async def once() -> None:
        with pytest.raises(Unavailable) as info:
            await predict.predict_tile(ctx, "buildings", 1, SOURCE, X0, Y0, NATIVE)
        assert info.value.retry_after >= 1
        await asyncio.gather(*ctx.reloads.values())

    asyncio.run(once())
    assert ctx.triton.fail is None  # type: ignore[attr-defined]  # load_model was called


@pytest.mark.parametrize("block", [1, 2, 4])
def test_a_block_of_tiles_runs_the_model_once_and_crops_each_tile(
    ctx: predict.PredictContext, block: int
) -> None:
    """Every tile of a block comes from one window, cut where that tile lies, whatever the
    order the tiles are asked for in (a job without a cache asks one at a time)."""
    ctx.settings.prediction_block = block
    x0, y0 = -(-X0 // 8) * 8, -(-Y0 // 8) * 8  # a corner where blocks of 1, 2 and 4 start
    for j in reversed(range(block)):
        for i in range(block):
            out = run(ctx, x0 + i, y0 + j, NATIVE)
            assert np.abs(out[0] - painted(x0 + i, y0 + j, NATIVE, 256, 0)).max() < 2e-3
    assert ctx.triton.calls == 1  # type: ignore[attr-defined]
    run(ctx, x0, y0, NATIVE)  # each tile is handed over once: without a cache, it runs again
    assert ctx.triton.calls == 2  # type: ignore[attr-defined]


def test_a_block_half_outside_the_imagery_serves_the_inside_only(
    ctx: predict.PredictContext,
) -> None:
    out = run(ctx, X0, Y0, NATIVE)  # the south-east tile of its block of 2
    assert np.abs(out[0] - painted(X0, Y0, NATIVE, 256, 0)).max() < 2e-3
    for x, y in [(X0 - 1, Y0), (X0, Y0 - 1)]:
        with pytest.raises(NotFound):
            run(ctx, x, y, NATIVE)
    assert ctx.triton.calls == 1  # type: ignore[attr-defined]
