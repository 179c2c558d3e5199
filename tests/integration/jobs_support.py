"""Helpers and fixtures shared by the job tests: the demo AOI, a patient client, and one
undisturbed reference run (session-scoped) that fault tests compare against.

Loaded as a pytest plugin from tests/conftest.py, so its fixtures are everywhere.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import mercantile
import pytest
import shapely
from shapely.geometry import box, mapping, shape
from sqlalchemy import Engine, create_engine, text

from tilesight.jobs.merge import pixel_degrees
from tilesight.stack import Stack

Z = 19
TILES_X, TILES_Y = range(319294, 319298), range(270961, 270964)  # block edge at x = 319296
F1_FLOOR = 0.3  # see test_polygons_lie_on_buildings


def aoi_polygon() -> shapely.Polygon:
    west, north = mercantile.ul(TILES_X.start, TILES_Y.start, Z)
    east, south = mercantile.ul(TILES_X.stop, TILES_Y.stop, Z)
    inset = pixel_degrees(Z) / 4  # stay inside the 12 tiles
    return box(west + inset, south + inset, east - inset, north - inset)


class PatientTransport(httpx.HTTPTransport):
    """Waits out a 429 (the stack's rate limits are shared by every test) and retries."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for _ in range(20):
            response = super().handle_request(request)
            if response.status_code != 429:
                return response
            response.close()
            time.sleep(float(response.headers.get("retry-after", "1")))
        return response


@pytest.fixture(scope="session")
def client(api_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_url, timeout=60, transport=PatientTransport()) as c:
        yield c


@pytest.fixture(scope="session")
def db(stack: Stack) -> Iterator[Engine]:
    engine = create_engine(stack.settings.database_url, pool_pre_ping=True)
    yield engine
    engine.dispose()


def job_state(db: Engine, job_id: str) -> tuple[str, int, int]:
    with db.connect() as conn:
        row = conn.execute(
            text("SELECT state, chunks_done, chunks_total FROM jobs WHERE id = :id"), {"id": job_id}
        ).one()
    return row[0], row[1], row[2]


@pytest.fixture(scope="session")
def source(client: httpx.Client, stack: Stack) -> str:
    if not any(stack.settings.model_repo.glob("*/[0-9]*/model.pt")):
        pytest.skip("no model version in model_repo/ yet: the demo model has not been shipped")
    body = client.get("/sources").json()
    items = body["items"] if isinstance(body, dict) else body
    ids = [s["id"] for s in items if "tanzania" in (s["id"] + s.get("name", "")).lower()]
    assert ids, f"no demo Tanzania source among {[s['id'] for s in items]}"
    return ids[0]


def submit(client: httpx.Client, source: str, aoi: Any = None, **extra: Any) -> httpx.Response:
    body = {"source": source, "aoi": aoi or mapping(aoi_polygon()), **extra}
    return client.post("/jobs", json=body)


def wait(client: httpx.Client, db: Engine, job_id: str, timeout_s: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while job_state(db, job_id)[0] not in ("done", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"job {job_id} did not finish in {timeout_s}s"
        time.sleep(0.2)
    return client.get(f"/jobs/{job_id}").json()


def features(client: httpx.Client, job_id: str, **params: str) -> list[dict[str, Any]]:
    response = client.get(f"/jobs/{job_id}/buildings.geojson", params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/geo+json")
    return response.json()["features"]


def same_buildings(a: list[dict], b: list[dict]) -> bool:
    """Two runs agree when each building of one has a twin (IoU > 0.9) in the other: the
    same pixels, give or take a float rounding at the threshold from a different batching."""
    ga, gb = [shape(f["geometry"]) for f in a], [shape(f["geometry"]) for f in b]
    if len(ga) != len(gb):
        return False
    tree = shapely.STRtree(gb)
    for g in ga:
        twins = [gb[i] for i in tree.query(g, predicate="intersects")]
        if not any(g.intersection(t).area / g.union(t).area > 0.9 for t in twins):
            return False
    return True


@pytest.fixture(scope="session")
def done_job(client: httpx.Client, db: Engine, source: str) -> dict[str, Any]:
    response = submit(client, source)
    assert response.status_code == 202, response.text
    created = response.json()
    assert created["chunks_total"] == 2 and created["tiles"] == 12
    events = []
    with client.stream("GET", f"/jobs/{created['id']}/events", timeout=300) as stream:
        for line in stream.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    job = wait(client, db, created["id"])
    assert job["state"] == "done", job
    job["events"] = events
    return job
