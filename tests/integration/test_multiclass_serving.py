"""A multi-class model served by the real stack beside the building model: Triton answers
one probability channel per class, and the overlay paints each class in the colour its
metadata gives, the background clear.

The model ("landcover": background, building, yard) is a random U-Net whose head is
scaled so that every class wins somewhere on the test tile with a clear margin; what is
tested is the contract, not the model's skill. It is exported into the test home's copy
of model_repo/ (see conftest) with the config and backend a training run would give a
new model (`ensure_served`), registered through the API's sync, and loaded by Triton.

Tolerances: Triton returns fp16 probabilities (half a step near 1 is 2.5e-4), so a pixel
is only judged where its winning class leads by more than MARGIN.
"""

from __future__ import annotations

import asyncio
import io
import time

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from tilesight.db import make_engine, make_sessionmaker
from tilesight.imagery.reader import read_tile
from tilesight.imagery.sources import SourceInfo, get_source
from tilesight.model.export import export_model, load_model, read_metadata
from tilesight.model.unet import SegmentationModel, UNetConfig
from tilesight.overlay import class_entries, hex_rgb
from tilesight.predict import context_px
from tilesight.registry import ensure_served
from tilesight.settings import Settings
from tilesight.stack import Stack
from tilesight.triton import TritonClient

MODEL = "landcover"
NAMES = ("background", "building", "yard")
SOURCE = "tanzania"
X, Y, Z = 319295, 270961, 19  # imagery all round (data/demo/buildings/tanzania)
MARGIN = 0.01


def confident_random_model(window: np.ndarray) -> SegmentationModel:
    """A random 3-class U-Net whose logits on `window` are rescaled to a spread of 3 and
    centred per class, so that each class wins a share of the pixels, most of them with
    a probability well above 0.5."""
    torch.manual_seed(0)
    model = SegmentationModel(UNetConfig(classes=3, width=4, depth=4, activation="softmax"))
    model.eval()
    with torch.no_grad():
        logits = model.logits(torch.from_numpy(window[None]))[0]
        mean = logits.mean(dim=(1, 2))
        scale = 3.0 / float((logits - mean[:, None, None]).std())
        model.net.head.weight *= scale
        model.net.head.bias.copy_((model.net.head.bias - mean) * scale)
    return model


@pytest.fixture(scope="module")
def served(stack: Stack, settings: Settings, api_url: str) -> tuple[SourceInfo, int, dict]:
    engine = make_engine(settings)
    with make_sessionmaker(engine)() as session:
        source = get_source(session, SOURCE)
    engine.dispose()
    buffer = context_px(settings, {"buffer": 32, "architecture": {"depth": 4}})
    window = read_tile(source, X, Y, Z, tilesize=256, buffer=buffer, settings=settings).data
    model = confident_random_model(window)
    metadata = {
        "classes": class_entries(NAMES),
        "zoom": Z,
        "tile_size": 256,
        "buffer": 32,
        "threshold": 0.5,
        "metrics": {"note": "random weights: a serving test"},
        "training_data": [],
        "split": {},
    }
    assert ensure_served(settings, MODEL)  # a new model: its config and backend written
    assert not ensure_served(settings, MODEL)
    path = export_model(model, metadata, settings.model_repo, MODEL)
    synced = httpx.post(f"{api_url}/models/{MODEL}/sync", timeout=300)
    assert synced.status_code == 200, synced.text
    assert synced.json()["model"]["promoted_version"] == int(path.name)
    return source, int(path.name), read_metadata(path)


def direct(settings: Settings, version: int, window: np.ndarray) -> np.ndarray:
    model, _ = load_model(settings.model_repo / MODEL / str(version))
    with torch.inference_mode():
        return model(torch.from_numpy(window[None]))[0].numpy()


def get_tile(api_url: str, **params: object) -> httpx.Response:
    """The overlay tile, waiting while Triton still loads the model (503)."""
    deadline = time.monotonic() + 120
    while True:
        response = httpx.get(
            f"{api_url}/predictions/{MODEL}/{SOURCE}/{Z}/{X}/{Y}.png", params=params, timeout=60
        )
        if response.status_code != 503 or time.monotonic() > deadline:
            assert response.status_code == 200, response.text
            return response
        time.sleep(0.5)


def test_triton_returns_one_channel_per_class(
    settings: Settings, served: tuple[SourceInfo, int, dict]
) -> None:
    source, version, meta = served
    buffer = context_px(settings, meta)
    window = read_tile(source, X, Y, Z, tilesize=256, buffer=buffer, settings=settings).data

    async def infer() -> np.ndarray:
        client = TritonClient(settings.triton_url, 60)
        try:
            return await client.infer(MODEL, window[None], str(version))
        finally:
            await client.close()

    probs = asyncio.run(infer())
    size = 256 + 2 * buffer
    assert probs.shape == (1, len(NAMES), size, size)
    assert np.abs(probs.sum(axis=1) - 1).max() < 2e-3  # a distribution over the classes
    assert np.abs(probs[0] - direct(settings, version, window)).max() < 1e-3


def test_overlay_paints_each_class_in_its_metadata_colour(
    api_url: str, settings: Settings, served: tuple[SourceInfo, int, dict]
) -> None:
    source, version, meta = served
    colours = {c["name"]: hex_rgb(c["color"]) for c in meta["classes"]}
    assert [c["name"] for c in meta["classes"]] == list(NAMES)
    assert len(set(colours.values())) == 3

    response = get_tile(api_url)
    assert response.headers["x-model-version"] == str(version)
    rgba = np.asarray(Image.open(io.BytesIO(response.content)))
    assert rgba.shape == (256, 256, 4)
    drawn = rgba[..., 3] > 0
    painted = {tuple(int(v) for v in px) for px in rgba[drawn][:, :3]}
    assert painted == {colours["building"], colours["yard"]}

    # pixel by pixel against the same weights run here, where the winner is clear
    buffer = context_px(settings, meta)
    window = read_tile(source, X, Y, Z, tilesize=256, buffer=buffer, settings=settings).data
    probs = direct(settings, version, window)[:, buffer:-buffer, buffer:-buffer]
    top2 = np.sort(probs, axis=0)[-2:]
    clear = (top2[1] - top2[0] > MARGIN) & (np.abs(top2[1] - meta["threshold"]) > MARGIN)
    winner = probs.argmax(axis=0)
    assert not drawn[clear & (winner == 0)].any()  # background stays transparent
    for index, name in enumerate(NAMES[1:], start=1):
        sure = clear & (winner == index) & (top2[1] > meta["threshold"])
        assert sure.sum() > 1000, name
        assert drawn[sure].all()
        assert (rgba[sure][:, :3] == colours[name]).all(), name


def test_model_is_listed_beside_the_building_model(
    api_url: str, served: tuple[SourceInfo, int, dict]
) -> None:
    _, version, _ = served
    names = {m["name"] for m in httpx.get(f"{api_url}/models").json()}
    assert {MODEL, "buildings"} <= names
    detail = httpx.get(f"{api_url}/models/{MODEL}").json()
    (entry,) = [v for v in detail["versions"] if v["version"] == version]
    assert [c["name"] for c in entry["metadata"]["classes"]] == list(NAMES)
    assert entry["metadata"]["architecture"]["activation"] == "softmax"
