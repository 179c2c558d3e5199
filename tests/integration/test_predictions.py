"""Prediction tiles through the real stack: Triton on CPU with the demo model, real imagery.

Tolerances: Triton returns fp16, so a probability differs from the same weights run
in PyTorch by at most half an fp16 step (2.5e-4) plus the 8-bit grey rounding of the
PNG (0.5/255): pixels must agree within 2/255. Seams: the probabilities in the eight
columns either side of the edge two neighbouring tiles share must match one large
window around both within SEAM_TOL = 0.02, five grey levels (measured with 64 px of
context: 0.002 for buildings/2, 0.012 for buildings/3; with the model's own 32 px
buildings/2 was at 0.033, which this test rejects).
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import redis
import torch
from PIL import Image

from tilesight.db import make_engine, make_sessionmaker
from tilesight.imagery.reader import read_tile
from tilesight.imagery.sources import SourceInfo, get_source
from tilesight.model.export import load_model
from tilesight.overlay import foreground
from tilesight.predict import PredictContext, context_px, predict_tile
from tilesight.registry import model_metadata, resolve_version
from tilesight.settings import Settings
from tilesight.stack import Stack
from tilesight.triton import TritonClient

MODEL = "buildings"
SOURCE = "tanzania"
# a 3x3 block of z19 chips with imagery all round (data/demo/buildings/tanzania)
X, Y, Z = 319295, 270961, 19
PIXEL_TOL = 2 / 255
SEAM_TOL = 0.02


@pytest.fixture(scope="module")
def served(stack: Stack, settings: Settings) -> Iterator[tuple[SourceInfo, int, dict]]:
    engine = make_engine(settings)
    with make_sessionmaker(engine)() as session:
        source = get_source(session, SOURCE)
        version = resolve_version(session, MODEL, None)
    engine.dispose()
    yield source, version, model_metadata(settings, MODEL, version)


def grey(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    assert image.mode == "L"
    return np.asarray(image).astype(np.float32) / 255.0


def direct(settings: Settings, version: int, image: np.ndarray) -> np.ndarray:
    """The same weights run in this process, as the probability mode draws them: the
    highest drawn class's probability ([H, W]) of a uint8 window (a border model's border
    class is drawn beside its buildings)."""
    model, meta = load_model(settings.model_repo / MODEL / str(version))
    with torch.inference_mode():
        probs = model(torch.from_numpy(image[None]))[0].numpy()
    return drawn(probs, meta)


def drawn(probs: np.ndarray, meta: dict) -> np.ndarray:
    return probs[foreground(meta["classes"])].max(axis=0)


def forget(settings: Settings, x: int, y: int, z: int) -> None:
    """Drop a tile's cached probabilities (area jobs of other tests may have filled them)."""
    client = redis.Redis.from_url(settings.redis_url)
    try:
        keys = list(client.scan_iter(f"tilesight:pred:{MODEL}:*:{z}/{x}/{y}:*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def url(api_url: str, x: int, y: int, z: int, suffix: str = "") -> str:
    return f"{api_url}/predictions/{MODEL}/{SOURCE}/{z}/{x}/{y}{suffix}.png"


def test_tile_matches_pytorch_on_the_same_window(
    api_url: str, settings: Settings, served: tuple[SourceInfo, int, dict]
) -> None:
    source, version, meta = served
    buffer, n = context_px(settings, meta), settings.prediction_block
    # the model runs on the window of the tile's block, and the tile is cut where it lies
    window = read_tile(source, X, Y, Z, tilesize=256, buffer=buffer, block=n, settings=settings)
    top, left = buffer + (Y % n) * 256, buffer + (X % n) * 256
    expected = direct(settings, version, window.data)[top : top + 256, left : left + 256]
    got = grey(httpx.get(url(api_url, X, Y, Z), params={"mode": "probability"}, timeout=60))
    assert got.shape == (256, 256)
    assert np.abs(got - expected).max() <= PIXEL_TOL
    # the coloured overlay draws exactly the pixels at or above the model's threshold
    response = httpx.get(url(api_url, X, Y, Z), timeout=60)
    rgba = np.asarray(Image.open(io.BytesIO(response.content)))
    assert rgba.shape == (256, 256, 4)
    sure = np.abs(expected - meta["threshold"]) > PIXEL_TOL
    assert np.array_equal((rgba[..., 3] > 0)[sure], (expected >= meta["threshold"])[sure])
    assert response.headers["x-model-version"] == str(version)
    assert response.headers["etag"].startswith(f'"v{version}-')


def test_neighbours_agree_along_their_shared_edge(
    api_url: str, settings: Settings, served: tuple[SourceInfo, int, dict]
) -> None:
    source, version, meta = served
    left = grey(httpx.get(url(api_url, X, Y, Z), params={"mode": "probability"}, timeout=60))
    right = grey(httpx.get(url(api_url, X + 1, Y, Z), params={"mode": "probability"}, timeout=60))
    # one window spanning both tiles with the same context on its outer sides
    o = 256 + context_px(settings, meta)  # tile X starts here in the big window
    big = read_tile(source, X, Y, Z, tilesize=256, buffer=o, settings=settings)
    probs = direct(settings, version, big.data)
    # the eight columns each side of the shared edge, from the tiles and from the window
    ref_left, ref_right = (
        probs[o : o + 256, o + 248 : o + 256],
        probs[o : o + 256, o + 256 : o + 264],
    )
    seam = max(np.abs(left[:, 248:] - ref_left).max(), np.abs(right[:, :8] - ref_right).max())
    print(f"seam: max |tile edge - large window| = {seam:.4f}")
    assert seam <= SEAM_TOL
    # and the step across the edge is no larger than the same step in the large window
    step = np.abs(left[:, 255] - right[:, 0]).max()
    assert step <= np.abs(ref_left[:, -1] - ref_right[:, 0]).max() + 2 * SEAM_TOL


def test_zooms_tilejson_etag_and_2x(api_url: str, served: tuple[SourceInfo, int, dict]) -> None:
    _, version, meta = served
    native = meta["zoom"]
    out = httpx.get(url(api_url, X >> 1, Y >> 1, native - 1), params={"mode": "mask"}, timeout=60)
    assert out.status_code == 200 and Image.open(io.BytesIO(out.content)).size == (256, 256)
    zin = httpx.get(url(api_url, X * 2, Y * 2, native + 1), timeout=60)
    assert zin.status_code == 200 and Image.open(io.BytesIO(zin.content)).size == (256, 256)
    hi = httpx.get(url(api_url, X, Y, native, "@2x"), timeout=60)
    assert hi.status_code == 200 and Image.open(io.BytesIO(hi.content)).size == (512, 512)

    far = httpx.get(url(api_url, X >> 3, Y >> 3, native - 3))
    assert far.status_code == 404
    assert far.headers["x-predictions-minzoom"] == str(native - 2)
    assert far.json()["detail"]["minzoom"] == native - 2
    doc = httpx.get(f"{api_url}/predictions/{MODEL}/{SOURCE}/tilejson.json").json()
    assert doc["tilejson"] == "3.0.0" and doc["minzoom"] >= native - 2
    assert doc["tiles"][0].endswith("/{z}/{x}/{y}.png")

    first = httpx.get(url(api_url, X, Y, native), timeout=60)
    again = httpx.get(url(api_url, X, Y, native), headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304
    assert "max-age" in first.headers["cache-control"]
    outside = httpx.get(url(api_url, 0, 0, native))
    assert outside.status_code == 404 and "error" in outside.json()
    bad = httpx.get(url(api_url, X, Y, native), params={"threshold": 3})
    assert bad.status_code == 422 and "threshold" in bad.json()["error"]
    unknown = httpx.get(url(api_url, X, Y, native), params={"version": 999})
    assert unknown.status_code == 404 and version in unknown.json()["detail"]["versions"]


async def _triton_runs(settings: Settings, version: int) -> int:
    client = TritonClient(settings.triton_url)
    try:
        stats = await client.inference_statistics(MODEL, str(version))
    finally:
        await client.close()
    return sum(int(s["inference_stats"]["success"].get("count", 0)) for s in stats["model_stats"])


def test_concurrent_identical_requests_run_the_model_once(
    api_url: str, settings: Settings, served: tuple[SourceInfo, int, dict]
) -> None:
    _, version, _ = served
    tile = url(api_url, X - 1, Y + 1, Z)
    forget(settings, X - 1, Y + 1, Z)

    async def burst(params: dict) -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*(client.get(tile, params=params) for _ in range(8)))

    before = asyncio.run(_triton_runs(settings, version))
    responses = asyncio.run(burst({}))
    assert all(r.status_code == 200 for r in responses)
    assert len({r.content for r in responses}) == 1
    assert asyncio.run(_triton_runs(settings, version)) == before + 1
    # a new threshold and colormap are drawn from the cached probabilities
    restyled = asyncio.run(burst({"threshold": 0.2, "colormap": "viridis"}))
    assert all(r.status_code == 200 for r in restyled)
    assert asyncio.run(_triton_runs(settings, version)) == before + 1
    metrics = httpx.get(f"{api_url}/metrics").text
    assert 'tilesight_tile_cache_total{result="hit"}' in metrics
    assert 'tilesight_triton_seconds_count{model="buildings"}' in metrics


def test_triton_down_gives_503_then_recovers(
    stack: Stack, api_url: str, settings: Settings, served: tuple[SourceInfo, int, dict]
) -> None:
    cached = url(api_url, X, Y, Z)
    assert httpx.get(cached, timeout=60).status_code == 200
    fresh = url(api_url, X + 2, Y + 2, Z)
    forget(settings, X + 2, Y + 2, Z)
    stack.stop_component(stack.component("triton"))
    try:
        started = time.monotonic()
        down = httpx.get(fresh, timeout=10)
        took = time.monotonic() - started
        assert down.status_code == 503, down.text
        assert int(down.headers["retry-after"]) >= 1
        assert "error" in down.json()
        assert took < 2.0, f"503 took {took:.2f}s"
        assert httpx.get(f"{api_url}/tiles/{SOURCE}/{Z}/{X + 2}/{Y + 2}.png").status_code == 200
        assert httpx.get(cached).status_code == 200  # cached probabilities still draw
    finally:
        stack.start_component(stack.component("triton"))
    deadline = time.monotonic() + 60
    while (status := httpx.get(fresh, timeout=30).status_code) != 200:
        assert status == 503 and time.monotonic() < deadline
        time.sleep(0.5)


def test_single_flight_across_processes(
    api_url: str, settings: Settings, served: tuple[SourceInfo, int, dict]
) -> None:
    """A worker process (here: this test, with its own clients) and the API asking for the
    same tile at once share one model run through the Redis lock and cache."""
    source, version, _ = served
    x, y = X + 1, Y - 1
    forget(settings, x, y, Z)

    async def both() -> tuple[httpx.Response, np.ndarray]:
        ctx = PredictContext.create(settings)
        try:
            async with httpx.AsyncClient(timeout=60) as client:
                return await asyncio.gather(
                    client.get(url(api_url, x, y, Z), params={"mode": "probability"}),
                    predict_tile(ctx, MODEL, version, source, x, y, Z),
                )
        finally:
            await ctx.close()

    before = asyncio.run(_triton_runs(settings, version))
    response, probs = asyncio.run(both())
    assert asyncio.run(_triton_runs(settings, version)) == before + 1
    assert (
        np.abs(grey(response) - drawn(probs, model_metadata(settings, MODEL, version))).max()
        <= PIXEL_TOL
    )
