"""Debian's GDAL as a GIS user runs it: XYZ through a TMS XML, GeoJSON and MVT over HTTP."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import mapbox_vector_tile
import mercantile
import numpy as np
import pytest
import rasterio

from tests.integration.imagery_support import open_png

pytestmark = pytest.mark.skipif(
    shutil.which("ogrinfo") is None, reason="gdal-bin is not installed (make system)"
)
ENV = {**os.environ, "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "CPL_DEBUG": "OFF"}
HALF = 20037508.342789244

TMS_XML = """<GDAL_WMS>
  <Service name="TMS"><ServerUrl>{url}/tiles/{source}/${{z}}/${{x}}/${{y}}.png</ServerUrl></Service>
  <DataWindow>
    <UpperLeftX>-{half}</UpperLeftX><UpperLeftY>{half}</UpperLeftY>
    <LowerRightX>{half}</LowerRightX><LowerRightY>-{half}</LowerRightY>
    <TileLevel>{zoom}</TileLevel><TileCountX>1</TileCountX><TileCountY>1</TileCountY>
    <YOrigin>top</YOrigin>
  </DataWindow>
  <Projection>EPSG:3857</Projection>
  <BlockSizeX>256</BlockSizeX><BlockSizeY>256</BlockSizeY><BandsCount>4</BandsCount>
  <ZeroBlockHttpCodes>404</ZeroBlockHttpCodes>
</GDAL_WMS>"""


def summary(text: str) -> tuple[str, int, list[str]]:
    """Layer name, feature count and field names from `ogrinfo -so` (GDAL 3.6: no -json)."""
    name = re.search(r"^Layer name: (.+)$", text, re.M)
    count = re.search(r"^Feature Count: (\d+)$", text, re.M)
    assert name and count, text
    fields = re.findall(r"^(\w+): (?:Real|Integer|Integer64|String)", text, re.M)
    return name.group(1), int(count.group(1)), fields


def run(*args: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=120)
    assert done.returncode == 0, (args, done.stderr)
    return done.stdout


def test_xyz_window_through_a_tms_xml(client: httpx.Client, source: str, tmp_path: Path) -> None:
    doc = client.get(f"/tiles/{source}/tilejson.json").json()
    lon, lat, _ = doc["center"]
    zoom = doc["maxzoom"] - 2
    tile = mercantile.tile(lon, lat, zoom)
    xml = tmp_path / "tiles.xml"
    xml.write_text(TMS_XML.format(url=client.base_url, source=source, half=HALF, zoom=zoom))
    west, south, east, north = mercantile.xy_bounds(tile)
    out = tmp_path / "window.tif"
    run(
        "gdal_translate", "-q", "-projwin", str(west), str(north), str(east), str(south),
        "-outsize", "256", "256", str(xml), str(out),
    )  # fmt: skip
    with rasterio.open(out) as window:
        pixels = np.moveaxis(window.read(), 0, -1)
    expected = open_png(client.get(f"/tiles/{source}/{zoom}/{tile.x}/{tile.y}.png"))
    assert pixels.shape == (256, 256, 4)
    assert (pixels[..., 3] > 0).mean() > 0.05
    rgb = pixels[..., : expected.shape[-1]]
    assert np.abs(rgb.astype(int) - expected.astype(int)).mean() < 1.0


def test_geojson_through_vsicurl(client: httpx.Client, done_job: dict[str, Any]) -> None:
    url = f"{client.base_url}/jobs/{done_job['id']}/buildings.geojson"
    _, count, names = summary(run("ogrinfo", "-ro", "-so", "-al", f"/vsicurl/{url}"))
    expected = client.get(url).json()["features"]
    assert count == len(expected) > 0
    assert {"area_m2", "confidence", "model", "version", "job"} <= set(names)


def test_mvt_tile_with_ogrinfo(client: httpx.Client, done_job: dict[str, Any]) -> None:
    doc = client.get(f"/buildings/tilejson.json?job={done_job['id']}").json()
    lon, lat, zoom = doc["center"]
    tile = mercantile.tile(lon, lat, zoom)
    url = f"{client.base_url}/buildings/{zoom}/{tile.x}/{tile.y}.mvt"
    decoded = mapbox_vector_tile.decode(client.get(url).content)
    count = len(decoded["buildings"]["features"])
    assert count > 0
    text = run(
        "ogrinfo", "-ro", "-al", "-so",
        "-oo", f"Z={zoom}", "-oo", f"X={tile.x}", "-oo", f"Y={tile.y}",
        f"MVT:/vsicurl/{url}",
    )  # fmt: skip
    name, features, _ = summary(text)
    assert name == "buildings" and features == count
    extent = re.search(r"^Extent: \(([-\d.]+), ([-\d.]+)\) - \(([-\d.]+), ([-\d.]+)\)", text, re.M)
    assert extent, text
    minx, miny, maxx, maxy = (float(v) for v in extent.groups())
    west, south, east, north = mercantile.xy_bounds(tile)
    assert west - 50 <= minx and maxx <= east + 50 and south - 50 <= miny and maxy <= north + 50
