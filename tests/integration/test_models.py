"""Model versions through the real stack: listing, a new version going live in Triton,
and promotion switching the overlay without a restart.

The new version is exported into the test home's copy of model_repo/ (see conftest), so
the project's own repository is never touched.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time

import httpx
import numpy as np
import torch
from PIL import Image

from tilesight.db import make_engine, make_sessionmaker
from tilesight.model.export import export_model, load_model, read_metadata
from tilesight.registry import sync_models
from tilesight.settings import Settings
from tilesight.stack import settings_env

MODEL = "buildings"
TILE = "tanzania/19/319294/270962"


def probability(api_url: str, **params: object) -> tuple[np.ndarray, httpx.Response]:
    response = httpx.get(
        f"{api_url}/predictions/{MODEL}/{TILE}.png",
        params={"mode": "probability", **params},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content))).astype(float) / 255, response


def test_list_and_describe_models(api_url: str) -> None:
    models = httpx.get(f"{api_url}/models").json()
    entry = next(m for m in models if m["name"] == MODEL)
    assert entry["promoted_version"] in entry["versions"]
    detail = httpx.get(f"{api_url}/models/{MODEL}").json()
    promoted = next(v for v in detail["versions"] if v["promoted"])
    assert promoted["version"] == entry["promoted_version"]
    assert promoted["metadata"]["zoom"] and promoted["metadata"]["classes"]
    assert promoted["metrics"] == promoted["metadata"]["metrics"]

    missing = httpx.get(f"{api_url}/models/no-such-model")
    assert missing.status_code == 404 and MODEL in missing.json()["detail"]["models"]
    bad = httpx.post(f"{api_url}/models/{MODEL}/versions/999/promote")
    assert bad.status_code == 404
    assert entry["promoted_version"] in bad.json()["detail"]["versions"]


def test_new_version_goes_live_and_promotion_switches_the_overlay(
    api_url: str, settings: Settings
) -> None:
    before = httpx.get(f"{api_url}/models/{MODEL}").json()
    old = before["promoted_version"]
    old_probs, old_response = probability(api_url)
    assert old_response.headers["x-model-version"] == str(old)

    # a visibly different version: the same weights with the output pushed towards 1
    model, meta = load_model(settings.model_repo / MODEL / str(old))
    with torch.no_grad():
        model.net.head.bias += 6.0
    path = export_model(model, {**meta, "metrics": {"note": "test"}}, settings.model_repo, MODEL)
    new = int(path.name)
    assert read_metadata(path)["version"] == new

    # registered the way a training run does it: into the database, Triton not asked;
    # the first tile of the new version asks Triton to load it and answers 503 meanwhile
    engine = make_engine(settings)
    with make_sessionmaker(engine)() as session, session.begin():
        assert f"model {MODEL} version {new} registered" in sync_models(settings, session)
    engine.dispose()
    statuses = []
    deadline = time.monotonic() + 120
    while not statuses or statuses[-1] != 200:
        response = httpx.get(f"{api_url}/predictions/{MODEL}/{TILE}.png?version={new}", timeout=60)
        statuses.append(response.status_code)
        assert response.status_code in (200, 503), response.text
        assert time.monotonic() < deadline, statuses
        time.sleep(0.5)
    assert statuses[0] == 503  # not served until the first request asked Triton for it
    synced = httpx.post(f"{api_url}/models/{MODEL}/sync", timeout=300)
    assert synced.status_code == 200, synced.text
    assert synced.json()["model"]["promoted_version"] == old  # not promoted by itself

    pinned, pinned_response = probability(api_url, version=new)
    assert pinned_response.headers["x-model-version"] == str(new)
    assert pinned.mean() > old_probs.mean() + 0.2
    still_old, _ = probability(api_url)
    assert np.array_equal(still_old, old_probs)

    try:
        promoted = httpx.post(f"{api_url}/models/{MODEL}/versions/{new}/promote")
        assert promoted.status_code == 200 and promoted.json()["promoted_version"] == new
        switched, response = probability(api_url)
        assert response.headers["x-model-version"] == str(new)
        assert response.headers["etag"] != old_response.headers["etag"]
        assert np.array_equal(switched, pinned)
    finally:
        back = httpx.post(f"{api_url}/models/{MODEL}/versions/{old}/promote")
        assert back.status_code == 200
    again, response = probability(api_url)
    assert response.headers["x-model-version"] == str(old)
    assert np.array_equal(again, old_probs)


def test_cli_lists_and_shows_models(settings: Settings, api_url: str) -> None:
    env = {**os.environ, **settings_env(settings), "COLUMNS": "200"}
    listed = subprocess.run(
        [sys.executable, "-m", "tilesight.cli", "models", "list"],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert MODEL in listed.stdout and "*" in listed.stdout
    shown = subprocess.run(
        [sys.executable, "-m", "tilesight.cli", "models", "show", MODEL],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert json.loads(shown.stdout)["name"] == MODEL
