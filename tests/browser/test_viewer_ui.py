"""The viewer's manners in a real browser: phone width, keyboard use, and API errors
shown next to what caused them."""

from __future__ import annotations

import pytest

from tests.browser.conftest import PageLog, screenshot

pytestmark = [pytest.mark.browser, pytest.mark.integration]


def test_phone_width_and_keyboard(page, page_log: PageLog) -> None:  # type: ignore[no-untyped-def]
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto("/")
    page.wait_for_selector(".imagery-tiles img.leaflet-tile-loaded")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390, "the page scrolls sideways"
    map_box = page.locator("#map").bounding_box()
    assert map_box["width"] == pytest.approx(390, abs=2) and map_box["height"] > 300

    # every control is reachable with Tab, labelled, and shows where the focus is
    seen: dict[str, str] = {}
    for _ in range(40):
        page.keyboard.press("Tab")
        focused = page.evaluate(
            """() => {
              const el = document.activeElement;
              const style = getComputedStyle(el);
              const label = el.labels?.[0]?.innerText || el.getAttribute("aria-label")
                || el.innerText || el.title || "";
              return {id: el.id, label: label.trim(), outline: style.outlineStyle};
            }"""
        )
        if focused["id"]:
            seen[focused["id"]] = focused["label"]
            assert focused["outline"] != "none", f"no visible focus on #{focused['id']}"
    for control in ("source", "overlay-toggle", "opacity", "threshold", "draw-rect", "draw-view"):
        assert control in seen, f"#{control} cannot be reached with Tab: {sorted(seen)}"
        assert seen[control], f"#{control} has no label"

    page.locator("#opacity").focus()
    before = float(page.input_value("#opacity"))
    page.keyboard.press("ArrowLeft")
    assert float(page.input_value("#opacity")) < before
    page.wait_for_function("!location.hash.includes('opacity=0.7&')")

    page.get_by_role("button", name="Controls").click()
    assert page.locator("#panel").is_hidden()
    page.get_by_role("button", name="Controls").click()
    assert page.locator("#panel").is_visible()
    assert page_log.page_errors == []
    screenshot(page, "06-phone")


def test_api_error_is_shown_next_to_the_job_form(page, page_log: PageLog) -> None:  # type: ignore[no-untyped-def]
    # a view far from any imagery: the server refuses the area and says why
    page.goto("/#map=16/10.0/10.0&overlay=0")
    page.wait_for_function("tilesight.models.current() !== null && tilesight.jobs.loaded")
    page.get_by_role("button", name="Use map view").click()
    assert "at zoom" in page.inner_text("#aoi-summary")
    jobs_before = page.locator("#jobs-list .card").count()
    page.get_by_role("button", name="Detect buildings in area").click()
    error = page.locator("#job-error")
    error.wait_for()
    assert "aoi" in error.inner_text().lower()
    assert page.locator("#jobs-list .card").count() == jobs_before, "a refused job is listed"
    assert page_log.page_errors == []


def test_banner_when_predictions_are_down_while_imagery_keeps_working(  # type: ignore[no-untyped-def]
    page, page_log: PageLog, stack
) -> None:
    # tiles that no other test asked for, so none is in the prediction cache
    nairobi = "#map=19/-1.304857/36.906853&source=nairobi&overlay=1"
    triton = stack.component("triton")
    stack.stop(["triton"])
    try:
        page.goto(f"/{nairobi}")
        page.wait_for_selector(".imagery-tiles img.leaflet-tile-loaded")
        banner = page.locator("#banner")
        banner.wait_for(timeout=30_000)
        assert "unavailable" in banner.inner_text().lower()
        assert page.locator("#overlay-error").is_hidden(), "a 503 is not the user's mistake"
        statuses = {r.status for r in page_log.matching("/predictions/") if ".png" in r.url}
        assert 503 in statuses
        screenshot(page, "07-predictions-unavailable")
    finally:
        stack.start_component(triton)
