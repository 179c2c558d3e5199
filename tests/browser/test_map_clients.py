"""MapLibre GL JS and OpenLayers, from npm, on a page of another origin than the API: each
reads the imagery, overlay and buildings TileJSON and draws from them, as a third-party
map does. A missing CORS header, a TileJSON they cannot parse or a tile they cannot
decode shows up here as a console error, blank pixels or no features."""

from __future__ import annotations

import io
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS, screenshot
from tests.integration.imagery_support import http_server
from tests.integration.jobs_support import aoi_polygon
from tilesight.settings import PROJECT_ROOT

PAGES = Path(__file__).parent / "pages"
# MapLibre needs WebGL: SwiftShader renders it on the CPU in headless Chromium
WEBGL_ARGS = [a for a in CHROMIUM_ARGS if a != "--disable-gpu"] + [
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
]


@pytest.fixture(scope="module")
def other_origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The two pages and their npm packages, served from a port the API does not own."""
    root = tmp_path_factory.mktemp("map-clients")
    for page in PAGES.glob("*.html"):
        shutil.copy(page, root / page.name)
    (root / "vendor").symlink_to(PROJECT_ROOT / "web" / "node_modules")
    (root / "favicon.ico").write_bytes(b"")  # the browser asks; a 404 would be an error
    with http_server(root) as base:
        yield base


@pytest.fixture(scope="module")
def webgl_browser() -> Iterator[Any]:
    if not shutil.which(CHROMIUM):
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=WEBGL_ARGS)
        yield browser
        browser.close()


def open_client(
    browser: Any, other_origin: str, api_url: str, page_name: str, source: str, job: str
) -> tuple[Any, list[str]]:
    errors: list[str] = []
    page = browser.new_page(viewport={"width": 600, "height": 600})
    page.on("console", lambda m: m.type == "error" and errors.append(f"{m.text} {m.location}"))
    page.on("pageerror", lambda e: errors.append(str(e)))
    centre = aoi_polygon().centroid
    query = f"api={api_url}&source={source}&job={job}&lon={centre.x}&lat={centre.y}&zoom=19"
    assert other_origin.rsplit(":", 1)[1] != api_url.rsplit(":", 1)[1]  # cross-origin
    page.goto(f"{other_origin}/{page_name}?{query}")
    deadline = time.monotonic() + 60
    while not page.evaluate("window.ready") and time.monotonic() < deadline:
        page.wait_for_timeout(250)
    assert page.evaluate("window.ready"), f"{page_name} never finished rendering: {errors}"
    return page, errors


def painted_fraction(page: Any) -> float:
    """Share of the map's pixels that are not the page's white background."""
    png = page.locator("#map").screenshot()
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    return float((np.abs(rgb - 255).sum(axis=2) > 30).mean())


# each client's own count of the building features it drew (MapLibre) or loaded (OpenLayers)
CLIENTS = {"maplibre": "window.renderedBuildings()", "openlayers": "window.loadedBuildings"}


@pytest.mark.parametrize("map_client", CLIENTS)
def test_client_draws_imagery_overlay_and_buildings(
    map_client: str,
    webgl_browser: Any,
    other_origin: str,
    api_url: str,
    source: str,
    done_job: dict[str, Any],
) -> None:
    page, errors = open_client(
        webgl_browser, other_origin, api_url, f"{map_client}.html", source, done_job["id"]
    )
    screenshot(page, f"{map_client}-client")
    assert not errors, errors
    assert page.evaluate(CLIENTS[map_client]) > 0
    assert painted_fraction(page) > 0.5
    page.close()
