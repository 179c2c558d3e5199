"""CORS as a page on another origin meets it: reads open to all, writes to listed origins."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.engine import Engine

from api.main import create_app
from tests.integration.jobs_support import aoi_polygon
from tilesight.stack import Stack

FOREIGN = "https://maps.elsewhere.example"
LISTED = "https://maps.example.org"


def preflight(client: httpx.Client | TestClient, path: str, method: str, origin: str):  # type: ignore[no-untyped-def]
    return client.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )


def jobs_count(db: Engine) -> int:
    with db.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM jobs")).scalar_one())


def test_reads_are_open_to_any_origin(client: httpx.Client, source: str) -> None:
    for path in [
        f"/tiles/{source}/tilejson.json",
        f"/predictions/buildings/{source}/tilejson.json",
        "/buildings/tilejson.json",
        "/buildings/0/0/0.mvt",
        "/sources",
        "/models",
    ]:
        answer = preflight(client, path, "GET", FOREIGN)
        assert answer.status_code == 204, (path, answer.text)
        assert answer.headers["access-control-allow-origin"] == "*"
        assert "Authorization" in answer.headers["access-control-allow-headers"]
        got = client.get(path, headers={"Origin": FOREIGN})
        assert got.status_code == 200, (path, got.text)
        assert got.headers["access-control-allow-origin"] == "*"
        assert "ETag" in got.headers["access-control-expose-headers"]


def test_writes_from_a_foreign_origin_are_refused_by_default(
    client: httpx.Client, source: str, db: Engine
) -> None:
    answer = preflight(client, "/jobs", "POST", FOREIGN)
    assert answer.status_code == 403
    assert "access-control-allow-origin" not in answer.headers
    assert "TILESIGHT_CORS_ORIGINS" in answer.json()["error"]
    assert preflight(client, "/sources/x", "DELETE", FOREIGN).status_code == 403
    # a "simple" POST needs no preflight: it is refused before anything is created
    before = jobs_count(db)
    body = {"source": source, "aoi": aoi_polygon().__geo_interface__}
    sent = client.post("/jobs", json=body, headers={"Origin": FOREIGN})
    assert sent.status_code == 403 and jobs_count(db) == before
    # reads of private resources get no CORS headers: the browser hides the answer
    listed = client.get("/jobs", headers={"Origin": FOREIGN})
    assert "access-control-allow-origin" not in listed.headers


@pytest.fixture(scope="module")
def open_to_one(stack: Stack) -> Iterator[TestClient]:
    settings = stack.settings.model_copy(update={"cors_origins": [LISTED]})
    with TestClient(create_app(settings)) as client:
        yield client


def test_listed_origin_may_write(open_to_one: TestClient) -> None:
    answer = preflight(open_to_one, "/jobs", "POST", LISTED)
    assert answer.status_code == 204
    assert answer.headers["access-control-allow-origin"] == LISTED
    assert "POST" in answer.headers["access-control-allow-methods"]
    assert "Origin" in answer.headers["vary"]
    refused = open_to_one.post("/jobs", json={}, headers={"Origin": LISTED})
    assert refused.status_code == 422  # reached the route: validation answers
    assert refused.headers["access-control-allow-origin"] == LISTED
    assert preflight(open_to_one, "/jobs", "POST", FOREIGN).status_code == 403


def test_the_viewer_itself_is_not_cross_origin(open_to_one: TestClient) -> None:
    """Browsers send Origin on same-origin POSTs too; the viewer's own must pass."""
    sent = open_to_one.post("/jobs", json={}, headers={"Origin": "http://testserver"})
    assert sent.status_code == 422
