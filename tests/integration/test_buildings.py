"""/buildings (tilesight.jobs.buildings): a key sees only its own jobs' buildings in the
vector tiles and the TileJSON extent; an admin key sees every job's."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import mapbox_vector_tile
import mercantile
import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from tests.integration.jobs_support import TILES_X, TILES_Y, Z
from tilesight.db import make_engine, make_sessionmaker, session_scope
from tilesight.keys import create_key
from tilesight.stack import Stack

TILE = mercantile.parent(mercantile.Tile(TILES_X[0], TILES_Y[0], Z), zoom=16)
WORLD_WEST = -180.0


@pytest.fixture(scope="module")
def keyed(stack: Stack) -> Iterator[TestClient]:
    settings = stack.settings.model_copy(update={"auth_required": True})
    with TestClient(create_app(settings)) as client:
        yield client


def _headers(stack: Stack, scopes: list[str]) -> dict[str, str]:
    with session_scope(make_sessionmaker(make_engine(stack.settings))) as session:
        _, token = create_key(session, f"test-buildings-{'-'.join(scopes)}", scopes)
    return {"Authorization": f"Bearer {token}"}


def _job_ids(client: TestClient, headers: dict[str, str], **params: str) -> set[str]:
    response = client.get(
        f"/buildings/{TILE.z}/{TILE.x}/{TILE.y}.mvt", headers=headers, params=params
    )
    assert response.status_code == 200, response.text
    layer = mapbox_vector_tile.decode(response.content).get("buildings", {"features": []})
    return {f["properties"]["job"] for f in layer["features"]}


def test_a_key_sees_only_its_own_jobs_buildings(
    keyed: TestClient, stack: Stack, done_job: dict[str, Any]
) -> None:
    admin, reader = _headers(stack, ["admin"]), _headers(stack, ["read"])
    assert done_job["id"] in _job_ids(keyed, admin)
    assert done_job["id"] in _job_ids(keyed, admin, job=done_job["id"])
    assert _job_ids(keyed, reader) == set()  # the keyless job is not this key's

    mine = keyed.get("/buildings/tilejson.json", headers=reader).json()
    assert mine["bounds"][0] == WORLD_WEST  # nothing of its own to frame
    every = keyed.get("/buildings/tilejson.json", headers=admin).json()
    assert every["bounds"][0] > WORLD_WEST
    one = keyed.get("/buildings/tilejson.json", headers=admin, params={"job": done_job["id"]})
    assert one.status_code == 200 and one.json()["tiles"][0].endswith(f"?job={done_job['id']}")
    hidden = keyed.get("/buildings/tilejson.json", headers=reader, params={"job": done_job["id"]})
    assert hidden.status_code == 404
