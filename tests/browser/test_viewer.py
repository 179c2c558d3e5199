"""The viewer end to end in a real browser against the real stack: imagery, overlay,
drawing an area, following the job to 100 %, downloading its buildings, showing them."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import httpx
import mapbox_vector_tile
import numpy as np
import pytest
from PIL import Image
from shapely.geometry import shape

from tests.browser.conftest import PageLog, screenshot

pytestmark = [pytest.mark.browser, pytest.mark.integration]

# The middle of a z19 demo chip in coastal Tanzania with about twenty buildings on it.
LAT, LON = -6.043260, 39.242821


@pytest.fixture(scope="module")
def source_id(api_url: str) -> str:
    """The registered demo source that covers the test spot."""
    body = httpx.get(f"{api_url}/sources", timeout=10).json()
    sources = body if isinstance(body, list) else body.get("items", [])
    for source in sources:
        west, south, east, north = source["bounds"]
        if west <= LON <= east and south <= LAT <= north:
            return str(source["id"])
    raise AssertionError(f"no demo source covers {LAT}, {LON}: {sources}")


def open_view(page, source_id: str, zoom: int = 19, extra: str = "") -> None:  # type: ignore[no-untyped-def]
    page.goto(f"/#map={zoom}/{LAT}/{LON}&source={source_id}{extra}")
    page.wait_for_selector(".imagery-tiles img.leaflet-tile-loaded")


def image_of(page, response) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The pixels of a tile the page loaded (HTTP 200).

    Chrome keeps no copy of a fetch() body the page read as a blob, so an empty body is
    fetched again from the same URL."""
    assert response.status == 200, (response.url, response.status)
    body = response.body() or page.request.get(response.url).body()
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGBA"))


def test_page_shows_imagery_without_console_errors(page, page_log: PageLog) -> None:  # type: ignore[no-untyped-def]
    page.goto("/")
    page.wait_for_selector(".imagery-tiles img.leaflet-tile-loaded")
    page.wait_for_function("tilesight.basemap && !tilesight.basemap.isLoading()")
    tiles = [image_of(page, r) for r in page_log.matching("/tiles/") if ".png" in r.url]
    assert tiles, "no imagery tile was requested"
    assert all(t.shape == (256, 256, 4) for t in tiles)
    # chip sources have transparent gaps between clusters; some tiles must show the ground
    ground = [t[..., :3][t[..., 3] == 255] for t in tiles]
    assert any(len(g) > 1000 and g.std() > 5 for g in ground), "every tile is blank"
    assert "OpenAerialMap" in page.inner_text(".leaflet-control-attribution")
    assert re.search(r"map=\d+/", page.url), "the view is not kept in the URL"
    assert page_log.problems() == []
    screenshot(page, "01-imagery")


def test_overlay_opacity_and_threshold(page, page_log: PageLog, source_id: str) -> None:  # type: ignore[no-untyped-def]
    open_view(page, source_id)
    page.wait_for_selector(".prediction-tiles img.leaflet-tile-loaded")
    predictions = [r for r in page_log.matching("/predictions/") if ".png" in r.url]
    assert predictions, "no prediction tile was requested"
    overlays = [image_of(page, r) for r in predictions if r.status == 200]
    assert overlays, "no prediction tile loaded"
    assert all(o.shape == (256, 256, 4) for o in overlays)
    assert max(o[..., 3].max() for o in overlays) > 0, "the overlay paints no building at all"
    assert min(o[..., 3].min() for o in overlays) == 0, "the overlay hides the imagery everywhere"
    # the legend names what the colour means, in the colour the model's metadata gives it
    legend = page.locator("#model-classes li")
    assert legend.first.inner_text().strip() == "building"
    swatch = legend.first.locator(".swatch").evaluate("el => getComputedStyle(el).backgroundColor")
    assert swatch == "rgb(255, 59, 48)"  # "#ff3b30" in buildings/N/metadata.json

    page.locator("#opacity").fill("0.3")
    opacity = page.eval_on_selector(".prediction-tiles", "el => getComputedStyle(el).opacity")
    assert float(opacity) == pytest.approx(0.3)
    page.wait_for_function("location.hash.includes('opacity=0.3')")

    with page.expect_response(lambda r: "/predictions/" in r.url and "threshold=0.8" in r.url):
        page.locator("#threshold").fill("0.8")
    page.wait_for_selector(".prediction-tiles img.leaflet-tile-loaded")
    page.locator("#overlay-toggle").uncheck()
    assert page.locator(".prediction-tiles").count() == 0
    page.locator("#overlay-toggle").check()
    page.wait_for_selector(".prediction-tiles img.leaflet-tile-loaded")
    assert page_log.problems() == []
    screenshot(page, "02-overlay")


def test_draw_area_follow_job_download_and_show_buildings(  # type: ignore[no-untyped-def]
    page, page_log: PageLog, source_id: str, tmp_path: Path
) -> None:
    open_view(page, source_id, extra="&overlay=0")
    page.wait_for_function("tilesight.models.current() !== null")
    page.get_by_role("button", name="Draw rectangle").click()
    map_box = page.locator("#map").bounding_box()
    cx, cy = map_box["x"] + map_box["width"] / 2, map_box["y"] + map_box["height"] / 2
    page.mouse.click(cx - 100, cy - 100)
    page.mouse.click(cx + 100, cy + 100)
    summary = page.locator("#aoi-summary")
    assert re.search(r"Area [\d.,]+ (km²|m²) · \d+ tiles? at zoom \d+", summary.inner_text())
    drawn = page.evaluate("tilesight.draw.geometry()")
    screenshot(page, "03-area-drawn")

    page.get_by_role("button", name="Detect buildings in area").click()
    page.wait_for_function("tilesight.jobs.lastAdded")
    job_id = page.evaluate("tilesight.jobs.lastAdded")
    card = page.locator(f'#jobs-list .card[data-job="{job_id}"]')
    card.locator(".state", has_text="done").wait_for(timeout=180_000)
    assert card.locator("progress").get_attribute("value") == "100", card.inner_text()
    assert "100 %" in card.locator(".progress-text").inner_text()
    screenshot(page, "04-job-done")

    with page.expect_download() as download_info:
        card.get_by_role("link", name="Download GeoJSON", exact=True).click()
    path = tmp_path / "buildings.geojson"
    download_info.value.save_as(path)
    collection = json.loads(path.read_text())
    assert collection["type"] == "FeatureCollection"
    assert collection["features"], "the job found no buildings on a chip full of them"
    area = shape(drawn).buffer(1e-6)
    for feature in collection["features"]:
        assert shape(feature["geometry"]).intersects(area), feature["properties"]

    with page.expect_response(lambda r: ".mvt" in r.url and r.status == 200):
        card.get_by_role("button", name="Show buildings").click()
    page.wait_for_function("tilesight.buildings && !tilesight.buildings.isLoading()")
    features = 0
    for response in page_log.matching(".mvt"):
        assert response.status == 200, response.url
        body = response.body() or page.request.get(response.url).body()
        features += len(mapbox_vector_tile.decode(body).get("buildings", {}).get("features", []))
    assert features >= len(collection["features"]), "the vector tiles miss buildings"
    page.wait_for_function(PAINTED_BUILDINGS, timeout=15_000)
    # both layers together: the overlay's pixels under the job's outlines
    page.locator("#opacity").fill("0.5")
    page.locator("#overlay-toggle").check()
    page.wait_for_selector(".prediction-tiles img.leaflet-tile-loaded")
    page.wait_for_function("!tilesight.overlay.isLoading()")
    assert page_log.problems() == []
    page.eval_on_selector("#area-h", "el => el.scrollIntoView()")
    screenshot(page, "05-buildings")


# How many pixels the buildings layer has painted on its canvas tiles.
PAINTED_BUILDINGS = """() => {
  const canvases = tilesight.buildings?.getContainer()?.querySelectorAll("canvas") || [];
  let painted = 0;
  for (const c of canvases) {
    const data = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    for (let i = 3; i < data.length; i += 4) if (data[i] > 0) painted++;
  }
  return painted > 100;
}"""
