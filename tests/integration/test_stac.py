"""Sources from STAC Items made by rio-stac: by path and by URL, with the Item's facts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest
from rio_stac import create_stac_item

from tests.integration.imagery_support import ATLANTA, http_server, open_png
from tilesight.settings import Settings

ATTRIBUTION = "© SpaceNet partners (CC BY-SA 4.0)"
WHEN = "2018-05-01T16:00:00+00:00"


def write_item(folder: Path, asset_href: str, raster: Path = ATLANTA) -> Path:
    from datetime import datetime

    item = create_stac_item(
        str(raster),
        input_datetime=datetime.fromisoformat(WHEN),
        asset_name="visual",
        asset_href=asset_href,
        asset_media_type="image/tiff; application=geotiff; profile=cloud-optimized",
        properties={"attribution": ATTRIBUTION},
        with_proj=True,
        id="atlanta-scene",
    )
    path = folder / "item.json"
    path.write_text(json.dumps(item.to_dict()))
    return path


@pytest.fixture(scope="module")
def stac_dir(settings: Settings) -> Path:
    folder = settings.home / "data" / "stac"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(ATLANTA, folder / "scene.tif")
    write_item(folder, "./scene.tif")
    return folder


def register(client: httpx.Client, uri: str, sid: str) -> httpx.Response:
    return client.post("/sources", json={"uri": uri, "name": sid, "id": sid}, timeout=120)


def test_item_by_local_path(client: httpx.Client, stac_dir: Path) -> None:
    made = register(client, str(stac_dir / "item.json"), "stac-local")
    assert made.status_code == 201, made.text
    body = made.json()
    assert body["attribution"] == ATTRIBUTION and body["acquired"] == WHEN
    item = json.loads((stac_dir / "item.json").read_text())
    assert body["bounds"] == pytest.approx(item["bbox"], abs=1e-4)
    doc = client.get("/tiles/stac-local/tilejson.json").json()
    assert doc["attribution"] == ATTRIBUTION
    import mercantile

    lon, lat, zoom = doc["center"]
    tile = mercantile.tile(lon, lat, zoom)
    pixels = open_png(client.get(f"/tiles/stac-local/{zoom}/{tile.x}/{tile.y}.png"))
    assert (pixels[..., 3] > 0).mean() > 0.05


def test_item_by_url_with_a_relative_asset(client: httpx.Client, stac_dir: Path) -> None:
    with http_server(stac_dir) as base:
        made = register(client, f"{base}/item.json", "stac-remote")
        assert made.status_code == 201, made.text
        assert made.json()["attribution"] == ATTRIBUTION


def test_refused_items(client: httpx.Client, stac_dir: Path, settings: Settings) -> None:
    # a remote Item naming a server file (a bare absolute path would resolve against the
    # Item's own URL, which is an http read of that host, not of our disk)
    bad = stac_dir / "remote-names-a-file"
    bad.mkdir(exist_ok=True)
    write_item(bad, (stac_dir / "scene.tif").as_uri())
    with http_server(bad) as base:
        refused = register(client, f"{base}/item.json", "stac-file")
    assert refused.status_code == 400 and "http(s) assets" in refused.json()["error"], refused.text
    # no GeoTIFF asset
    plain = json.loads((stac_dir / "item.json").read_text())
    plain["assets"]["visual"]["type"] = "image/png"
    (stac_dir / "png.json").write_text(json.dumps(plain))
    none = register(client, str(stac_dir / "png.json"), "stac-png")
    assert none.status_code == 400 and "GeoTIFF/COG asset" in none.json()["error"]
    # not a STAC Item, and an Item outside the data roots
    (stac_dir / "fc.json").write_text('{"type": "FeatureCollection", "features": []}')
    assert register(client, str(stac_dir / "fc.json"), "stac-fc").status_code == 400
    outside = register(client, "/etc/item.json", "stac-outside")
    assert outside.status_code == 400
    assert client.get("/tiles/stac-png/tilejson.json").status_code == 404


def test_internal_item_url_is_refused(client: httpx.Client) -> None:
    internal = register(client, "http://10.11.12.13/item.json", "stac-internal")
    assert internal.status_code == 400, internal.text
