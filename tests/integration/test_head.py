"""HEAD on every GET route, byte ranges for /vsicurl/, Allow on 405, Location on 202."""

from __future__ import annotations

import re
from typing import Any

import httpx
import mercantile

from api.main import create_app
from tests.integration.jobs_support import submit

SAME_HEADERS = ("content-type", "etag", "cache-control", "content-disposition")


def get_paths(source: str, job_id: str) -> list[str]:
    """Every GET route of the app with real values for its parameters."""
    tile = mercantile.tile(39.2431644, -6.0449258, 18)
    values = {
        "source_id": source,
        "source": source,
        "model": "buildings",
        "job_id": job_id,
        "z": str(tile.z),
        "x": str(tile.x),
        "y": str(tile.y),
        "fmt": "png",
        "extension": "fgb",
        "name": "buildings",
    }
    paths = []
    for path, item in create_app().openapi()["paths"].items():
        if "get" not in item:
            continue
        filled = re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), path)
        paths.append(filled)
    return paths


def test_head_answers_every_get_route_like_get(
    client: httpx.Client, source: str, done_job: dict[str, Any]
) -> None:
    checked = 0
    for path in get_paths(source, done_job["id"]):
        if "{" in path:  # a parameter this test has no value for
            continue
        got = client.get(path)
        head = client.head(path)
        assert head.status_code == got.status_code, (path, head.status_code, got.status_code)
        assert head.content == b"", path
        for name in SAME_HEADERS:
            if name != "etag" or "/mvt" not in path:
                assert head.headers.get(name) == got.headers.get(name), (path, name)
        streamed = got.headers.get("content-type", "").startswith("text/event-stream")
        if path != "/metrics" and not streamed and got.status_code == 200:
            assert int(head.headers["content-length"]) == len(got.content), path
        checked += 1
    assert checked > 20


def test_ranges_of_the_geojson(client: httpx.Client, done_job: dict[str, Any]) -> None:
    url = f"/jobs/{done_job['id']}/buildings.geojson"
    whole = client.get(url).content
    part = client.get(url, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes 100-199/{len(whole)}"
    assert part.content == whole[100:200]
    tail = client.get(url, headers={"Range": "bytes=-50"})
    assert tail.status_code == 206 and tail.content == whole[-50:]
    beyond = client.get(url, headers={"Range": f"bytes={len(whole) + 10}-"})
    assert beyond.status_code == 416 and "error" in beyond.json()


def test_405_says_what_is_allowed(client: httpx.Client, source: str) -> None:
    for method, path, allowed in [
        ("DELETE", "/jobs/limits", {"GET", "HEAD", "OPTIONS"}),
        ("PUT", "/jobs", {"GET", "HEAD", "OPTIONS", "POST"}),
        ("POST", f"/tiles/{source}/tilejson.json", {"GET", "HEAD", "OPTIONS"}),
    ]:
        answer = client.request(method, path)
        assert answer.status_code == 405, (method, path, answer.status_code)
        assert set(answer.headers["allow"].split(", ")) == allowed, (path, answer.headers)
        assert "error" in answer.json()


def test_202_has_location(client: httpx.Client, source: str) -> None:
    created = submit(client, source)
    assert created.status_code == 202, created.text
    assert created.headers["location"] == created.json()["url"]
    assert client.get(created.headers["location"]).status_code == 200
    client.post(f"/jobs/{created.json()['id']}/cancel")
