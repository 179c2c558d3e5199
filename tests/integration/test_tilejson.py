"""Every TileJSON the API serves validates against the official 3.0.0 schema, opens on a
tile that has imagery, credits each party once, and is cacheable (ETag, 304, gzip)."""

from __future__ import annotations

import gzip
import io
import json
import re
from typing import Any

import httpx
import jsonschema
import mapbox_vector_tile
import mercantile
import numpy as np
import pytest
from PIL import Image

from api.main import create_app
from tilesight.settings import PROJECT_ROOT

SCHEMA = json.loads((PROJECT_ROOT / "tests/data/tilejson/schema-3.0.0.json").read_text())
SEMVER = re.compile(r"^\d+\.\d+\.\d+$")
MODEL = "buildings"


def validate(doc: dict[str, Any]) -> None:
    jsonschema.validate(doc, SCHEMA)
    assert SEMVER.match(doc["version"]), doc["version"]
    lon, lat, zoom = doc["center"]
    assert isinstance(zoom, int) and doc["minzoom"] <= zoom <= doc["maxzoom"], doc
    west, south, east, north = doc["bounds"]
    assert west <= lon <= east and south <= lat <= north, doc


@pytest.fixture(scope="module")
def demo_sources(client: httpx.Client, source: str) -> list[dict[str, Any]]:
    body = client.get("/sources").json()
    items = body["items"] if isinstance(body, dict) else body
    chips = [s for s in items if s["kind"] == "chips"]
    assert chips, f"no chip source among the demo sources: {[s['id'] for s in items]}"
    return items


def documents(client: httpx.Client, sources: list[dict], job_id: str) -> dict[str, dict]:
    """Every TileJSON route with its variants, by URL."""
    urls = ["/buildings/tilejson.json", f"/buildings/tilejson.json?job={job_id}"]
    for s in sources:
        urls += [
            f"/tiles/{s['id']}/tilejson.json",
            f"/tiles/{s['id']}/tilejson.json?tile_scale=2&tile_format=webp",
            f"/predictions/{MODEL}/{s['id']}/tilejson.json",
        ]
        promoted = client.get(f"/predictions/{MODEL}/{s['id']}/tilejson.json").json()
        version = promoted["version"].split(".")[0]
        urls.append(f"/predictions/{MODEL}/{s['id']}/tilejson.json?version={version}&tile_scale=2")
    docs = {}
    for url in urls:
        response = client.get(url)
        assert response.status_code == 200, (url, response.text)
        docs[url] = response.json()
    return docs


def test_every_tilejson_route_is_covered() -> None:
    """A TileJSON route added later must be added to `documents` too."""
    paths = [p for p in create_app().openapi()["paths"] if p.endswith("tilejson.json")]
    assert sorted(paths) == [
        "/buildings/tilejson.json",
        "/predictions/{model}/{source}/tilejson.json",
        "/tiles/{source_id}/tilejson.json",
    ]


def test_every_tilejson_validates(
    client: httpx.Client, demo_sources: list[dict], done_job: dict
) -> None:
    for url, doc in documents(client, demo_sources, done_job["id"]).items():
        try:
            validate(doc)
        except (AssertionError, jsonschema.ValidationError) as exc:
            raise AssertionError(f"{url}: {exc}") from exc


def test_centre_tile_has_imagery_and_overlay_shows_there(
    client: httpx.Client, demo_sources: list[dict]
) -> None:
    for s in demo_sources:
        if s["kind"] == "xyz":
            continue
        doc = client.get(f"/tiles/{s['id']}/tilejson.json").json()
        lon, lat, zoom = doc["center"]
        for z in (zoom, s["maxzoom"] - 2):  # the opening zoom and a close-up
            tile = mercantile.tile(lon, lat, z)
            response = client.get(f"/tiles/{s['id']}/{z}/{tile.x}/{tile.y}.png")
            assert response.status_code == 200, (s["id"], z, response.text)
            alpha = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGBA"))[..., 3]
            assert (alpha > 0).mean() > 0.05, f"{s['id']}: centre tile {z} is empty"
        overlay = client.get(f"/predictions/{MODEL}/{s['id']}/tilejson.json").json()
        lon, lat, zoom = overlay["center"]
        tile = mercantile.tile(lon, lat, zoom)
        response = client.get(f"/predictions/{MODEL}/{s['id']}/{zoom}/{tile.x}/{tile.y}.png")
        assert response.status_code == 200, (s["id"], response.text)


def test_attribution_once(client: httpx.Client, demo_sources: list[dict]) -> None:
    for s in demo_sources:
        imagery = client.get(f"/tiles/{s['id']}/tilejson.json").json()
        overlay = client.get(f"/predictions/{MODEL}/{s['id']}/tilejson.json").json()
        credits = [imagery.get("attribution", ""), overlay.get("attribution", "")]
        if s["attribution"]:
            assert credits[0] == s["attribution"]
            assert s["attribution"] not in credits[1], overlay


def test_buildings_tilejson_describes_the_layer(client: httpx.Client, done_job: dict) -> None:
    doc = client.get(f"/buildings/tilejson.json?job={done_job['id']}").json()
    (layer,) = doc["vector_layers"]
    assert layer["id"] == "buildings"
    assert layer["fields"] == {
        "area_m2": "Number",
        "confidence": "Number",
        "model": "String",
        "version": "Number",
        "job": "String",
    }
    assert doc["tiles"][0].endswith(f"/buildings/{{z}}/{{x}}/{{y}}.mvt?job={done_job['id']}")
    # the centre lies on one of the job's buildings, so its tile has features
    lon, lat, zoom = doc["center"]
    tile = mercantile.tile(lon, lat, zoom)
    mvt = client.get(f"/buildings/{zoom}/{tile.x}/{tile.y}.mvt", params={"job": done_job["id"]})
    decoded = mapbox_vector_tile.decode(mvt.content)
    assert decoded["buildings"]["features"], "no building in the centre tile"
    names = set(decoded["buildings"]["features"][0]["properties"])
    assert names == set(layer["fields"])
    missing = client.get("/buildings/tilejson.json?job=00000000-0000-0000-0000-000000000000")
    assert missing.status_code == 404 and "error" in missing.json()


def test_etag_cache_control_and_gzip(
    client: httpx.Client, demo_sources: list[dict], done_job: dict
) -> None:
    url = f"/tiles/{demo_sources[0]['id']}/tilejson.json"
    first = client.get(url)
    assert first.headers["cache-control"].startswith("public, max-age=")
    etag = first.headers["etag"]
    again = client.get(url, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    # a finished job's GeoJSON: cacheable, and gzip on the wire decodes to the same bytes
    geojson = f"/jobs/{done_job['id']}/buildings.geojson"
    plain = client.get(geojson, headers={"Accept-Encoding": "identity"})
    assert plain.headers["cache-control"] == "private, max-age=3600"
    assert client.get(geojson, headers={"If-None-Match": plain.headers["etag"]}).status_code == 304
    with client.stream("GET", geojson, headers={"Accept-Encoding": "gzip"}) as raw:
        assert raw.headers.get("content-encoding") == "gzip"
        body = b"".join(raw.iter_raw())
    assert gzip.decompress(body) == plain.content
    assert len(body) < len(plain.content) / 2, (len(body), len(plain.content))
    # tiles are images, already compressed: never gzipped
    lon, lat, zoom = first.json()["center"]
    tile = mercantile.tile(lon, lat, zoom)
    png = client.get(
        f"/tiles/{demo_sources[0]['id']}/{zoom}/{tile.x}/{tile.y}.png",
        headers={"Accept-Encoding": "gzip"},
    )
    assert "content-encoding" not in png.headers
