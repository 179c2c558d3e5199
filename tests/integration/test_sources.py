"""Registering every kind of imagery source through the real API, and every bad input."""

from __future__ import annotations

import io
import shutil
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.integration.imagery_support import (
    ATLANTA,
    CHIP_X,
    CHIP_Y,
    chip_names,
    chip_rgb,
    http_server,
    open_png,
    warped_tile,
)
from tilesight.imagery.cog import to_cog
from tilesight.settings import Settings
from tilesight.stack import free_port


@pytest.fixture(scope="module")
def inputs(settings: Settings) -> Path:
    """Files under a data root of the running API, as a user would place them."""
    root = settings.home / "data" / "inputs"
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(ATLANTA, root / "atlanta.tif")
    to_cog(ATLANTA, root / "atlanta-cog.tif")
    chips = root / "chips"
    chips.mkdir(exist_ok=True)
    for _, _, path in chip_names():
        shutil.copy(path, chips / path.name)
    (root / "notes.txt").write_text("not a raster\n")
    shutil.copy(chip_names()[0][2], root / "picture.png")  # a JPEG, not a GeoTIFF
    vrt = (
        '<VRTDataset rasterXSize="1" rasterYSize="1"><VRTRasterBand dataType="Byte" band="1">'
        f"<SimpleSource><SourceFilename>{ATLANTA}</SourceFilename></SimpleSource>"
        "</VRTRasterBand></VRTDataset>"
    )
    (root / "evil.tif").write_text(vrt)
    (root / "evil.vrt").write_text(vrt)
    return root


@pytest.fixture(scope="module")
def remote(inputs: Path, settings: Settings) -> Iterator[str]:
    """A local server standing in for a remote host: a GeoTIFF and an XYZ tile tree."""
    www = settings.home / "www"
    (www / "files").mkdir(parents=True, exist_ok=True)
    shutil.copy(ATLANTA, www / "files" / "atlanta.tif")
    for x, y, path in chip_names():
        (www / "xyz" / "21" / str(x)).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, www / "xyz" / "21" / str(x) / f"{y}.png")
    with http_server(www) as base:
        yield base


def register(api_url: str, **body: object) -> httpx.Response:
    return httpx.post(f"{api_url}/sources", json=body, timeout=120)


def source_ids(api_url: str) -> set[str]:
    return {s["id"] for s in httpx.get(f"{api_url}/sources").json()}


def assert_matches_chip(api_url: str, source_id: str) -> None:
    """The tile at the chips' native zoom is the original chip, up to JPEG in the COG."""
    tile = open_png(httpx.get(f"{api_url}/tiles/{source_id}/21/{CHIP_X}/{CHIP_Y}.png"))
    original = chip_rgb(chip_names()[0][2])
    assert np.abs(tile[..., :3].astype(int) - original).mean() < 2.0


def test_cog_in_place_and_plain_geotiff_converted(api_url: str, inputs: Path) -> None:
    made = []
    for sid, name in [("atl-cog", "atlanta-cog.tif"), ("atl-tif", "atlanta.tif")]:
        response = register(api_url, uri=str(inputs / name), name=sid, id=sid, attribution="SN")
        assert response.status_code == 201, response.text
        made.append(response.json())
    for body in made:
        assert body["crs"] == "EPSG:32616"
        assert body["dtype"] == "uint16" and body["band_count"] == 1
        assert body["resolution_m"] == pytest.approx(0.5)
        assert body["native_zoom"] == 18 and body["minzoom"] <= 16 <= body["maxzoom"]
        west, south, east, north = body["bounds"]
        assert -84.49 < west < east < -84.47 and 33.63 < south < north < 33.65
    # Same pixels as a direct rasterio read of the original file, warped to the tile.
    x, y, z = 69556, 105035, 18
    direct = warped_tile(ATLANTA, x, y, z)[0].astype(np.float32)
    low, high = made[1]["rescale"]
    expected = np.clip((direct - low) * 255 / (high - low), 0, 255)
    for body in made:
        tile = open_png(httpx.get(f"{api_url}/tiles/{body['id']}/{z}/{x}/{y}.png"))
        valid = direct > 0
        assert valid.mean() > 0.5
        assert np.abs(tile[..., 0][valid].astype(float) - expected[valid]).mean() < 1.5


def test_chip_folder(api_url: str, inputs: Path) -> None:
    response = register(api_url, uri=str(inputs / "chips"), name="Nairobi chips", id="chips")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["kind"] == "chips" and body["native_zoom"] == 21 and body["crs"] == "EPSG:3857"
    assert_matches_chip(api_url, "chips")


def test_http_url(api_url: str, remote: str) -> None:
    response = register(api_url, uri=f"{remote}/files/atlanta.tif", name="remote", id="remote")
    assert response.status_code == 201, response.text
    assert response.json()["dtype"] == "uint16"
    assert httpx.get(f"{api_url}/tiles/remote/18/69556/105035.png").status_code == 200


def test_xyz_template(api_url: str, remote: str) -> None:
    template = f"{remote}/xyz/{{z}}/{{x}}/{{y}}.png"
    response = register(api_url, uri=template, name="xyz", id="xyz", minzoom=18, maxzoom=21)
    assert response.status_code == 201, response.text
    assert response.json()["kind"] == "xyz"
    assert_matches_chip(api_url, "xyz")
    # A 512 px tile one zoom out is the four z21 chips under it, mosaicked.
    tile = open_png(httpx.get(f"{api_url}/tiles/xyz/20/{CHIP_X // 2}/{CHIP_Y // 2}@2x.png"))
    assert tile.shape[:2] == (512, 512)
    chips = {(x, y): path for x, y, path in chip_names()}
    for dx in (0, 1):
        for dy in (0, 1):
            quarter = tile[dy * 256 : dy * 256 + 256, dx * 256 : dx * 256 + 256, :3]
            assert np.array_equal(quarter, chip_rgb(chips[CHIP_X + dx, CHIP_Y + dy]))


def test_upload_geotiff_and_zip_of_chips(api_url: str) -> None:
    with open(ATLANTA, "rb") as f:
        response = httpx.post(
            f"{api_url}/sources/upload",
            files={"file": ("atlanta.tif", f, "image/tiff")},
            data={"name": "Uploaded Atlanta", "attribution": "SpaceNet"},
            timeout=120,
        )
    assert response.status_code == 201, response.text
    assert (
        response.json()["attribution"] == "SpaceNet" and response.json()["id"] == "uploaded-atlanta"
    )
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for x, y, path in chip_names():
            zf.write(path, f"21/{x}/{y}.png")
    response = httpx.post(
        f"{api_url}/sources/upload",
        files={"file": ("chips.zip", archive.getvalue(), "application/zip")},
        data={"name": "zipped", "id": "zipped"},
        timeout=120,
    )
    assert response.status_code == 201, response.text
    assert response.json()["kind"] == "chips"
    assert_matches_chip(api_url, "zipped")


def test_list_get_delete(api_url: str, inputs: Path) -> None:
    assert (
        register(api_url, uri=str(inputs / "atlanta.tif"), name="doomed", id="doomed").status_code
        == 201
    )
    assert "doomed" in source_ids(api_url)
    assert (
        httpx.get(f"{api_url}/sources/doomed")
        .json()["tilejson"]
        .endswith("/tiles/doomed/tilejson.json")
    )
    assert (
        register(api_url, uri=str(inputs / "atlanta.tif"), name="again", id="doomed").status_code
        == 409
    )
    assert httpx.delete(f"{api_url}/sources/doomed").status_code == 204
    assert httpx.get(f"{api_url}/sources/doomed").status_code == 404
    assert httpx.delete(f"{api_url}/sources/doomed").status_code == 404


@pytest.mark.parametrize(
    ("uri", "status", "says"),
    [
        ("notes.txt", 400, "not a GeoTIFF"),
        ("picture.png", 400, "not a GeoTIFF"),
        ("evil.tif", 400, "not a GeoTIFF"),
        ("evil.vrt", 400, "not a GeoTIFF"),
        ("missing.tif", 400, "no such file"),
        ("/etc/hostname", 400, "outside the directories"),
        ("{inputs}/../../../../etc/hostname", 400, "outside the directories"),
        ("/vsicurl/http://example.com/a.tif", 400, "unsupported source"),
        ("file:///etc/hostname", 400, "unsupported source"),
        ("http://10.1.2.3/a.tif", 400, "internal address"),
        ("http://169.254.169.254/latest/meta-data", 400, "internal address"),
        ("http://[::1]:9/a.tif", 400, "internal address"),
        ("http://127.0.0.1:{dead}/a.tif", 502, "could not read"),
        ("{remote}/files/nothing-here.tif", 502, "HTTP 404"),
    ],
)
def test_bad_sources_are_refused_and_nothing_registered(
    api_url: str, inputs: Path, remote: str, uri: str, status: int, says: str
) -> None:
    uri = uri.format(inputs=inputs, remote=remote, dead=free_port())
    if not uri.startswith(("/", "http", "file")):
        uri = str(inputs / uri)
    before = source_ids(api_url)
    response = register(api_url, uri=uri, name="bad one", id="bad-one")
    assert response.status_code == status, response.text
    assert says in response.json()["error"]
    assert source_ids(api_url) == before


def test_bad_upload_and_bad_id(api_url: str) -> None:
    response = httpx.post(
        f"{api_url}/sources/upload",
        files={"file": ("notes.txt", b"hello", "text/plain")},
        data={"name": "text"},
    )
    assert response.status_code == 400 and "not a GeoTIFF" in response.json()["error"]
    assert httpx.post(f"{api_url}/sources/upload", data={"name": "x"}).status_code == 400
    response = register(api_url, uri=str(ATLANTA), name="x", id="Bad Id!")
    assert response.status_code == 400 and "source id" in response.json()["error"]
    assert httpx.get(f"{api_url}/sources/no-such-source").status_code == 404


def test_upload_of_a_valid_cog(api_url: str, inputs: Path) -> None:
    """A COG is renamed into sources/<id>/, which did not exist yet: that was a 500."""
    with open(inputs / "atlanta-cog.tif", "rb") as f:
        response = httpx.post(
            f"{api_url}/sources/upload",
            files={"file": ("atlanta-cog.tif", f, "image/tiff")},
            data={"name": "Uploaded COG", "id": "uploaded-cog"},
            timeout=120,
        )
    assert response.status_code == 201, response.text
    assert response.json()["kind"] == "cog" and response.json()["dtype"] == "uint16"
    tile = open_png(httpx.get(f"{api_url}/tiles/uploaded-cog/18/69556/105035.png"))
    assert tile[..., 0].any()


def test_tiny_spread_zip_is_refused_within_a_second(api_url: str) -> None:
    chip = chip_names()[0][2].read_bytes()
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("7/0/0.png", chip)
        zf.writestr("7/127/127.png", chip)
    start = time.perf_counter()
    response = httpx.post(
        f"{api_url}/sources/upload",
        files={"file": ("spread.zip", archive.getvalue(), "application/zip")},
        data={"name": "spread"},
    )
    assert time.perf_counter() - start < 1.0
    assert response.status_code == 413, response.text
    assert response.json()["detail"]["limit"] == 2**29
    assert "spread.zip" in response.json()["error"]


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("{inputs}/atlanta\x00.tif", "NUL byte"),
        ("{inputs}/" + "a" * 300 + ".tif", "uri"),
        ("https://no-such-host.invalid/a.tif", "cannot resolve host"),
        ("http://100.100.100.200/latest/meta-data", "internal address"),
        ("http://[2002:a9fe:a9fe::]/latest", "internal address"),
        ("http://[2002:7f00:1::]:{port}/files/atlanta.tif", "internal address"),
    ],
)
def test_bad_uris_are_400_naming_the_input(
    api_url: str, inputs: Path, settings: Settings, uri: str, says: str
) -> None:
    uri = uri.format(inputs=inputs, port=settings.api_port)
    response = register(api_url, uri=uri, name="bad", id="bad-uri")
    assert response.status_code == 400, response.text
    assert says in response.json()["error"]
    assert str(settings.home) not in response.text.replace(str(inputs), "")
    assert "data_roots" not in response.text


def test_outside_a_data_root_names_the_input_not_the_roots(
    api_url: str, settings: Settings
) -> None:
    response = register(api_url, uri="/etc/hostname", name="x", id="outside")
    assert response.status_code == 400
    assert response.json()["detail"] == {"uri": "/etc/hostname"}
    assert str(settings.home) not in response.text


def test_reserved_ids_and_staging_outside_sources(api_url: str, inputs: Path) -> None:
    for sid in ("uploads", "upload", "staging"):
        response = register(api_url, uri=str(inputs / "atlanta.tif"), name="x", id=sid)
        assert response.status_code == 400 and "reserved" in response.json()["error"]
    # a name that slugs to a reserved id gets another id
    response = register(api_url, uri=str(inputs / "atlanta-cog.tif"), name="Uploads")
    assert response.status_code == 201 and response.json()["id"].startswith("uploads-")
    assert httpx.delete(f"{api_url}/sources/{response.json()['id']}").status_code == 204


def test_chunked_json_over_the_limit_is_413(api_url: str, settings: Settings) -> None:
    def body() -> Iterator[bytes]:
        yield b'{"uri": "'
        for _ in range(settings.max_body_bytes // 65536 + 2):
            yield b"a" * 65536
        yield b'", "name": "x"}'

    response = httpx.post(
        f"{api_url}/sources", content=body(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413, response.text
    assert response.json()["detail"]["limit"] == settings.max_body_bytes
