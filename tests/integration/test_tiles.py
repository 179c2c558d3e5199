"""Imagery tiles and TileJSON through the real API: pixels, formats, caching headers, errors."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.integration.imagery_support import (
    ATLANTA,
    CHIP_X,
    CHIP_Y,
    chip_names,
    chip_rgb,
    open_png,
    warped_tile,
)
from tilesight.settings import Settings

ATL_TILE = (18, 69556, 105035)


@pytest.fixture(scope="module")
def sources(api_url: str, settings: Settings) -> dict[str, dict]:
    root = settings.home / "data" / "tiles-inputs"
    (root / "chips").mkdir(parents=True, exist_ok=True)
    shutil.copy(ATLANTA, root / "atlanta.tif")
    for _, _, path in chip_names():
        shutil.copy(path, root / "chips" / path.name)
    made = {}
    for sid, uri in [("t-atl", root / "atlanta.tif"), ("t-chips", root / "chips")]:
        response = httpx.post(
            f"{api_url}/sources",
            json={"uri": str(uri), "name": sid, "id": sid, "attribution": f"© {sid}"},
            timeout=120,
        )
        assert response.status_code == 201, response.text
        made[sid] = response.json()
    return made


def url(api_url: str, sid: str, z: int, x: int, y: int, ext: str = "png") -> str:
    return f"{api_url}/tiles/{sid}/{z}/{x}/{y}.{ext}"


def test_native_tile_is_the_chip_in_each_format(api_url: str, sources: dict) -> None:
    original = chip_rgb(chip_names()[0][2]).astype(int)
    for ext, tolerance in [("png", 2.0), ("webp", 8.0), ("jpg", 8.0)]:
        response = httpx.get(url(api_url, "t-chips", 21, CHIP_X, CHIP_Y, ext))
        assert response.headers["content-type"] == f"image/{'jpeg' if ext == 'jpg' else ext}"
        pixels = open_png(response)[..., :3].astype(int)
        assert pixels.shape == (256, 256, 3)
        assert np.abs(pixels - original).mean() < tolerance, ext


def test_retina_tile_is_512_and_gaps_are_transparent(api_url: str, sources: dict) -> None:
    # z20 @2x over the chips' block: the left half has data, outside the chips is see-through.
    tile = open_png(httpx.get(f"{api_url}/tiles/t-chips/20/{CHIP_X // 2}/{CHIP_Y // 2}@2x.png"))
    assert tile.shape == (512, 512, 4) or tile.shape == (512, 512, 3)
    # A z19 tile over the 2x4 chip block covers 4x4 z21 chips; half of it is a gap.
    tile = open_png(httpx.get(url(api_url, "t-chips", 19, CHIP_X // 4, CHIP_Y // 4)))
    assert tile.shape == (256, 256, 4)
    alpha = tile[..., 3]
    assert (alpha[:, :128] == 255).all() and (alpha[:, 128:] == 0).all()


def test_16bit_utm_tile_matches_a_direct_read(api_url: str, sources: dict) -> None:
    z, x, y = ATL_TILE
    direct = warped_tile(ATLANTA, x, y, z)[0].astype(np.float32)
    valid = direct > 0
    for query, (low, high) in [("", sources["t-atl"]["rescale"]), ("?rescale=0,2000", (0, 2000))]:
        tile = open_png(httpx.get(url(api_url, "t-atl", z, x, y) + query))
        expected = np.clip((direct - low) * 255 / (high - low), 0, 255)
        assert np.abs(tile[..., 0][valid] - expected[valid]).mean() < 1.5
        assert (tile[..., 0] == tile[..., 1]).all()  # one band shown as grey
    # Band selection: the same single band thrice is the same picture.
    same = open_png(httpx.get(url(api_url, "t-atl", z, x, y) + "?bidx=1&bidx=1&bidx=1"))
    assert same.shape[2] in (3, 4)


def test_etag_and_304(api_url: str, sources: dict) -> None:
    first = httpx.get(url(api_url, "t-chips", 21, CHIP_X, CHIP_Y))
    etag = first.headers["etag"]
    assert "max-age" in first.headers["cache-control"]
    again = httpx.get(url(api_url, "t-chips", 21, CHIP_X, CHIP_Y), headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.headers["etag"] == etag and not again.content
    other = httpx.get(url(api_url, "t-chips", 21, CHIP_X, CHIP_Y, "webp"))
    assert other.headers["etag"] != etag


def test_tilejson(api_url: str, sources: dict) -> None:
    doc = httpx.get(f"{api_url}/tiles/t-atl/tilejson.json").json()
    assert doc["tilejson"] == "3.0.0" and doc["attribution"] == "© t-atl"
    assert doc["bounds"] == sources["t-atl"]["bounds"]
    assert doc["minzoom"] <= doc["center"][2] <= doc["maxzoom"]
    z, x, y = ATL_TILE
    tile_url = doc["tiles"][0].replace("{z}", str(z)).replace("{x}", str(x)).replace("{y}", str(y))
    assert httpx.get(tile_url).status_code == 200
    retina = httpx.get(f"{api_url}/tiles/t-atl/tilejson.json?tile_scale=2&tile_format=webp")
    assert retina.json()["tiles"][0].endswith("{y}@2x.webp")


@pytest.mark.parametrize(
    ("path", "status", "says"),
    [
        ("/tiles/nope/18/0/0.png", 404, "no imagery source"),
        ("/tiles/nope/tilejson.json", 404, "no imagery source"),
        ("/tiles/t-atl/3/1/1.png", 404, "zoom range"),
        ("/tiles/t-atl/25/1/1.png", 404, "zoom range"),
        ("/tiles/t-atl/18/300000/105035.png", 404, "does not exist"),
        ("/tiles/t-atl/18/-1/105035.png", 404, "does not exist"),
        ("/tiles/t-atl/18/1000/1000.png", 404, "outside t-atl's bounds"),
        ("/tiles/t-atl/18/69556/105035.gif", 400, "unsupported tile format"),
        ("/tiles/t-atl/18/69556/105035.png?rescale=5", 400, "rescale"),
        ("/tiles/t-atl/18/69556/105035.png?rescale=9,1", 400, "rescale"),
        ("/tiles/t-atl/18/69556/105035.png?bidx=2", 400, "bidx"),
        ("/tiles/t-atl/18/69556/105035.png?bidx=1&bidx=1", 400, "bidx"),
        ("/tiles/t-atl/tilejson.json?tile_format=bmp", 400, "unsupported tile format"),
    ],
)
def test_bad_tile_requests(api_url: str, sources: dict, path: str, status: int, says: str) -> None:
    response = httpx.get(api_url + path)
    assert response.status_code == status, response.text
    assert says in response.json()["error"]


def test_out_of_bounds_says_the_valid_range_or_is_transparent(api_url: str, sources: dict) -> None:
    body = httpx.get(f"{api_url}/tiles/t-atl/18/1000/1000.png").json()
    assert body["detail"]["minzoom"] == sources["t-atl"]["minzoom"]
    assert body["detail"]["maxzoom"] == sources["t-atl"]["maxzoom"]
    assert body["detail"]["tiles"]["x"][0] <= ATL_TILE[1] <= body["detail"]["tiles"]["x"][1]
    response = httpx.get(f"{api_url}/tiles/t-atl/18/1000/1000.png?empty=transparent")
    with Image.open(io.BytesIO(response.content)) as image:
        assert image.mode == "RGBA" and image.getextrema()[3] == (0, 0)


def test_deleted_source_stops_serving(api_url: str, sources: dict, settings: Settings) -> None:
    root: Path = settings.home / "data" / "tiles-inputs"
    body = {"uri": str(root / "atlanta.tif"), "name": "short-lived", "id": "t-gone"}
    assert httpx.post(f"{api_url}/sources", json=body, timeout=60).status_code == 201
    z, x, y = ATL_TILE
    assert httpx.get(url(api_url, "t-gone", z, x, y)).status_code == 200
    assert httpx.delete(f"{api_url}/sources/t-gone").status_code == 204
    assert httpx.get(url(api_url, "t-gone", z, x, y)).status_code == 404
