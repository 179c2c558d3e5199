"""Playwright against Debian's chromium (no browser download is possible here), one browser
per session, a fresh page per test that records every console error and page error."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.conftest import TEST_OUTPUT
from tilesight.settings import PROJECT_ROOT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = TEST_OUTPUT / "screenshots"


@dataclass
class PageLog:
    """What the page said: console errors, uncaught exceptions, failed responses."""

    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    responses: list[Any] = field(default_factory=list)  # playwright Response objects

    def matching(self, part: str) -> list[Any]:
        return [r for r in self.responses if part in r.url]

    def console(self, message: Any) -> None:
        """Keep an error, except the browser's note on a tile outside the imagery.

        Chip sources have gaps inside their bounds, and a prediction tile there is a 404
        with a JSON reason; Chrome logs every failed fetch, so those notes are expected."""
        url = (message.location or {}).get("url", "")
        gap = message.text.startswith("Failed to load resource") and any(
            r.url == url and r.status == 404 and "/predictions/" in r.url for r in self.responses
        )
        if not gap:
            self.console_errors.append(f"{message.text} ({url})")

    def problems(self, refusals: tuple[tuple[int, str], ...] = ()) -> list[str]:
        """Console errors and page errors, less Chrome's note on each response a test
        provoked on purpose: `refusals` holds (status, part of the URL) pairs."""

        def provoked(error: str) -> bool:
            text, _, url = error.rpartition(" (")
            url = url.removesuffix(")")
            statuses = {r.status for r in self.responses if r.url == url}
            return text.startswith("Failed to load resource") and any(
                status in statuses and part in url for status, part in refusals
            )

        return [e for e in self.console_errors if not provoked(e)] + self.page_errors


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not shutil.which(CHROMIUM):
        pytest.skip("chromium is not installed (apt-get install chromium)")
    if not (PROJECT_ROOT / "web" / "node_modules" / "leaflet" / "dist" / "leaflet.js").is_file():
        pytest.fail("the viewer's npm packages are missing: run `make web` (npm ci in web/)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page_log() -> PageLog:
    return PageLog()


@pytest.fixture
def page(browser, page_log: PageLog, api_url: str) -> Iterator[object]:  # type: ignore[no-untyped-def]
    # bypass_csp: Playwright's wait_for_function evaluates its predicate with eval(),
    # which the viewer's CSP (script-src 'self', rightly no 'unsafe-eval') refuses; the
    # policy itself is asserted in tests/integration/test_access.py
    context = browser.new_context(
        base_url=api_url,
        viewport={"width": 1280, "height": 800},
        accept_downloads=True,
        bypass_csp=True,
    )
    page = context.new_page()
    page.set_default_timeout(20_000)
    page.on("console", lambda m: m.type == "error" and page_log.console(m))
    page.on("pageerror", lambda e: page_log.page_errors.append(str(e)))
    page.on("response", lambda r: page_log.responses.append(r))
    yield page
    context.close()


def screenshot(page, name: str) -> None:  # type: ignore[no-untyped-def]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))
