"""Area jobs end to end on the real stack: the demo model over the demo Tanzania imagery.

The AOI is 4 x 3 tiles at the model's zoom, straddling a chunk-block edge, so the job
has two chunks and one seam (a few seconds of CPU inference per chunk). The same AOI
is run undisturbed, with its worker SIGKILLed mid-chunk, and cancelled.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from typing import Any

import httpx
import mapbox_vector_tile
import mercantile
import pyogrio
import pytest
import redis
from shapely.geometry import box, mapping, shape
from sqlalchemy import Engine

from tests.integration.jobs_support import (
    F1_FLOOR,
    TILES_X,
    TILES_Y,
    Z,
    aoi_polygon,
    features,
    job_state,
    same_buildings,
    submit,
    wait,
)
from tilesight.jobs.merge import EPS_PX, MIN_SHARED_PX, pixel_degrees, seam_lines
from tilesight.stack import Stack


def test_job_reports_progress_and_timings(done_job: dict[str, Any]) -> None:
    assert done_job["progress"] == 100 and done_job["chunks_done"] == 2
    assert done_job["buildings"] > 5
    assert set(done_job["timings"]) >= {"infer", "vectorize", "write", "merge"}
    progress = [e["progress"] for e in done_job["events"] if "progress" in e]
    assert progress == sorted(progress) and progress[-1] == 100
    assert done_job["events"][-1] == {"state": "done"}


def test_polygons_lie_on_buildings(client: httpx.Client, done_job: dict[str, Any]) -> None:
    # The demo model is small and trained on a few hundred buildings: over all 46 Tanzania
    # demo tiles its jobs score object F1 0.54 (bench/jobs.py), and on these 12 tiles even
    # an early 2-epoch version scored 0.35. The floor sits below both, so a regression in
    # stitching, vectorising or georeferencing (which sends F1 towards 0) fails while the
    # model's own noise does not.
    evaluation = client.get(f"/jobs/{done_job['id']}/evaluation").json()
    assert evaluation["labels"] > 10, evaluation
    assert evaluation["f1"] >= F1_FLOOR, evaluation


def test_no_building_is_split_along_the_chunk_seam(
    client: httpx.Client, done_job: dict[str, Any]
) -> None:
    seam = seam_lines({(319296 // 4 - 1, 270961 // 4), (319296 // 4, 270961 // 4)}, 4, Z)
    near = [
        shape(f["geometry"])
        for f in features(client, done_job["id"])
        if shape(f["geometry"]).distance(seam) < 2 * pixel_degrees(Z)
    ]
    assert near, "no building crosses the seam; the test area proves nothing"
    # Two roofs may touch (the watershed parts touching roofs within a chunk), but no two
    # buildings may meet along a stretch of the seam: that is a building the seam cut.
    # Stretch and reach are the merge's own (a corner contact is shorter than its bar).
    px = pixel_degrees(Z)
    reach = EPS_PX * px
    for i, a in enumerate(near):
        for b in near[i + 1 :]:
            along = seam.intersection(a.buffer(reach)).intersection(b.buffer(reach))
            assert along.length <= (2 * EPS_PX + MIN_SHARED_PX) * px, (
                "a building is still cut at the seam"
            )


def test_geojson_is_rfc7946_and_opens_with_pyogrio(
    client: httpx.Client, done_job: dict[str, Any], tmp_path
) -> None:
    response = client.get(f"/jobs/{done_job['id']}/buildings.geojson")
    body = response.json()
    assert "crs" not in body and body["type"] == "FeatureCollection"
    aoi = aoi_polygon().buffer(1e-6)
    for f in body["features"]:
        assert set(f["properties"]) == {"id", "area_m2", "confidence", "model", "version", "job"}
        geom = shape(f["geometry"])
        assert geom.is_valid and aoi.contains(geom)  # lon/lat order, inside the AOI
        for poly in getattr(geom, "geoms", [geom]):
            assert poly.exterior.is_ccw and not any(r.is_ccw for r in poly.interiors)
    path = tmp_path / "buildings.geojson"
    path.write_bytes(response.content)
    meta, _fids, geometries, fields = pyogrio.raw.read(path)
    assert len(geometries) == len(body["features"]) == done_job["buildings"]
    assert "area_m2" in list(meta["fields"])
    west, south, east, north = aoi_polygon().bounds
    half = features(client, done_job["id"], bbox=f"{west},{south},{(west + east) / 2},{north}")
    assert 0 < len(half) < len(body["features"])


def test_mvt_has_the_same_features(client: httpx.Client, done_job: dict[str, Any]) -> None:
    ids = {f["properties"]["id"] for f in features(client, done_job["id"])}
    tiles = {mercantile.parent(mercantile.Tile(x, y, Z), zoom=16) for x in TILES_X for y in TILES_Y}
    seen: set[int] = set()
    for t in tiles:
        response = client.get(f"/buildings/{t.z}/{t.x}/{t.y}.mvt", params={"job": done_job["id"]})
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/vnd.mapbox-vector-tile"
        layer = mapbox_vector_tile.decode(response.content).get("buildings", {"features": []})
        for f in layer["features"]:
            assert f["properties"]["job"] == done_job["id"]
            seen.add(f["id"])
    assert seen == ids
    assert client.get("/buildings/3/99/0.mvt").status_code == 404


def test_sigkilled_worker_ends_with_the_same_buildings(
    client: httpx.Client, db: Engine, source: str, stack: Stack, done_job: dict[str, Any]
) -> None:
    worker = stack.component("worker")
    original_env = dict(worker.env)
    job_id = submit(client, source).json()["id"]
    deadline = time.monotonic() + 120
    while job_state(db, job_id)[0] == "queued":  # running: the first chunk has started
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(stack.pid("worker"), signal.SIGKILL)
    try:
        _state, done, total = job_state(db, job_id)
        assert done < total, "the worker was killed too late to prove anything"
        # the restarted worker hands the killed chunk back after its visibility timeout
        worker.env = {**original_env, "TILESIGHT_CELERY_VISIBILITY_TIMEOUT_S": "2"}
        stack.start_component(worker)
        job = wait(client, db, job_id)
    finally:
        stack.stop_component(worker)
        worker.env = original_env
        stack.start_component(worker)
    assert job["state"] == "done", job
    assert same_buildings(features(client, job_id), features(client, done_job["id"]))


def test_cancel_stops_the_remaining_chunks(client: httpx.Client, db: Engine, source: str) -> None:
    job_id = submit(client, source).json()["id"]
    response = client.post(f"/jobs/{job_id}/cancel")
    assert response.status_code == 200 and response.json()["state"] == "cancelled"
    time.sleep(3)
    state, done, total = job_state(db, job_id)
    assert state == "cancelled" and done < total
    assert client.post(f"/jobs/{job_id}/cancel").status_code == 409
    listed = client.get("/jobs", params={"state": "cancelled"}).json()
    assert job_id in [j["id"] for j in listed["items"]]


def test_bad_inputs_are_4xx_and_queue_nothing(
    client: httpx.Client, source: str, stack: Stack
) -> None:
    broker = redis.Redis.from_url(stack.settings.celery_broker_url)
    before_total = client.get("/jobs").json()["total"]
    before_queue = broker.llen("gpu")
    bow_tie = {"type": "Polygon", "coordinates": [[[39, -6], [39.1, -6.1], [39.1, -6], [39, -6.1],
                                                    [39, -6]]]}  # fmt: skip
    far = mapping(box(10, 10, 10.001, 10.001))
    huge = mapping(box(39, -7, 40, -6))
    cases = [
        (submit(client, source, bow_tie), 422, "Self-intersection"),
        (submit(client, source, far), 422, "outside source"),
        (submit(client, source, huge), 413, "limit"),
        (submit(client, source, model="no-such-model"), 404, "no-such-model"),
        (submit(client, source, version=999), 404, "999"),
        (submit(client, "no-such-source"), 404, "no-such-source"),
        (submit(client, source, {"type": "Point", "coordinates": [39, -6]}), 422, "Polygon"),
        (submit(client, source, options={"colour": "red"}), 422, "colour"),
        (submit(client, source, options={"min_area_m2": "big"}), 422, "min_area_m2"),
    ]
    for response, status, needle in cases:
        assert response.status_code == status, response.text
        assert needle in json.dumps(response.json()), response.text
    assert client.get("/jobs").json()["total"] == before_total
    assert broker.llen("gpu") == before_queue
    assert client.get("/jobs/00000000-0000-0000-0000-000000000000").status_code == 404
    assert client.get("/jobs", params={"state": "nonsense"}).status_code == 422


def test_cli_status_and_export(api_url: str, done_job: dict[str, Any], tmp_path) -> None:
    from typer.testing import CliRunner

    from tilesight.cli import app

    runner = CliRunner()
    status = runner.invoke(app, ["jobs", "status", done_job["id"], "--api", api_url])
    assert status.exit_code == 0, status.output
    assert "done" in status.output
    out = tmp_path / "out.geojson"
    export = runner.invoke(app, ["jobs", "export", done_job["id"], str(out), "--api", api_url])
    assert export.exit_code == 0, export.output
    assert len(json.loads(out.read_text())["features"]) == done_job["buildings"]
    missing = runner.invoke(app, ["jobs", "status", str(uuid.uuid4()), "--api", api_url])
    assert missing.exit_code == 1 and "does not exist" in missing.output


def test_limits_are_published(client: httpx.Client, stack: Stack) -> None:
    limits = client.get("/jobs/limits").json()
    assert limits == {
        "max_area_km2": stack.settings.job_max_area_km2,
        "max_tiles": stack.settings.job_max_tiles,
        "max_active_jobs_per_key": stack.settings.max_active_jobs_per_key,
    }


RING = "[[39.24, -6.04], [39.25, -6.04], [39.25, -6.05], %s, [39.24, -6.04]]"


@pytest.mark.parametrize(
    ("position", "field"),
    [
        ("[NaN, -6.05]", "aoi.coordinates[0][3][0]"),
        ("[39.24, Infinity]", "aoi.coordinates[0][3][1]"),
        ("[39.24, -Infinity]", "aoi.coordinates[0][3][1]"),
        ("[1e400, -6.05]", "aoi.coordinates[0][3][0]"),
        ("[true, -6.05]", "aoi.coordinates[0][3][0]"),
    ],
)
def test_a_coordinate_that_is_no_number_is_a_422_naming_it(
    client: httpx.Client, source: str, position: str, field: str
) -> None:
    ring = RING % position
    body = f'{{"source": "{source}", "aoi": {{"type": "Polygon", "coordinates": [{ring}]}}}}'
    response = client.post("/jobs", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["detail"]["field"] == field
    assert client.get("/healthz").status_code == 200  # the connection survived


def test_a_ring_around_the_world_is_refused(client: httpx.Client, source: str) -> None:
    ring = [[-180, -6.05], [180, -6.05], [180, -6.04], [-180, -6.04], [-180, -6.05]]
    response = submit(client, source, {"type": "Polygon", "coordinates": [ring]})
    assert response.status_code == 422, response.text
    assert "antimeridian" in response.json()["error"]


@pytest.mark.parametrize("bbox", ["nan,0,1,1", "0,0,inf,1", "0,0,1e400,1", "-inf,0,1,1"])
def test_a_bbox_that_is_no_number_is_a_400(
    client: httpx.Client, done_job: dict[str, Any], bbox: str
) -> None:
    response = client.get(f"/jobs/{done_job['id']}/buildings.geojson", params={"bbox": bbox})
    assert response.status_code == 400, response.text
    assert response.json()["detail"]["bbox"] == bbox


@pytest.mark.parametrize("colormap", ["#-1-1-1", "#+1+1+1", "# 1 1 1", "#12345g", "#1_2_3_"])
def test_a_colormap_with_odd_digits_is_a_422(client: httpx.Client, colormap: str) -> None:
    response = client.get(
        "/predictions/buildings/nairobi/19/315878/264050.png", params={"colormap": colormap}
    )
    assert response.status_code == 422, response.text
    assert "colormap" in response.json()["error"]
