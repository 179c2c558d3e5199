"""The review loop in a real browser against the real stack: judge buildings with clicks and
keys, lose a race to a second reviewer, redraw an outline, draw a missed building, retrain
from the reviews, swipe between the two versions and promote the new one."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from shapely.geometry import Point, shape
from shapely.ops import polylabel, unary_union
from sqlalchemy import Engine

from tests.browser.conftest import PageLog, screenshot
from tests.integration.jobs_support import aoi_polygon, features, submit, wait

pytestmark = [pytest.mark.browser, pytest.mark.integration]

# what the viewer paints each verdict in (web/js/review.js VERDICT_COLOURS)
COLOURS = {
    "unreviewed": "#ffffff",
    "correct": "#22c55e",
    "wrong": "#ef4444",
    "edited": "#3b82f6",
    "added": "#a855f7",
}
# the responses this test provokes on purpose: a retrain with too few reviews, a stale
# review, and the score of a version that has no buildings on the reviewed area yet
REFUSALS = ((400, "/retrain"), (409, "/reviews"), (409, "/reviews/score"))


@pytest.fixture(scope="module")
def job(client: httpx.Client, db: Engine, source: str) -> Iterator[dict[str, Any]]:
    """A finished job of this module's own; the version it ran with is promoted again at
    the end, so the tests after this one see the demo model they expect."""
    response = submit(client, source)
    assert response.status_code == 202, response.text
    done = wait(client, db, response.json()["id"])
    assert done["state"] == "done" and done["buildings"] >= 6, done
    yield done
    promoted = client.post(f"/models/{done['model']}/versions/{done['version']}/promote")
    assert promoted.status_code == 200, promoted.text


def screen_point(page, lat: float, lon: float) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """Where a place is on the page, in pixels."""
    return tuple(
        page.evaluate(
            """([lat, lon]) => {
              const p = tilesight.map.latLngToContainerPoint([lat, lon]);
              const box = tilesight.map.getContainer().getBoundingClientRect();
              return [box.left + p.x, box.top + p.y];
            }""",
            [lat, lon],
        )
    )


def click_building(page, feature: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    inside = shape(feature["geometry"]).representative_point()
    page.mouse.click(*screen_point(page, inside.y, inside.x))
    page.wait_for_function(f"tilesight.review.selected === 'b{feature['id']}'")


def outline(page, feature_id: int) -> Any:  # type: ignore[no-untyped-def]
    return page.locator(f'path[data-building="b{feature_id}"]')


def wait_verdict(page, feature_id: int, verdict: str) -> None:  # type: ignore[no-untyped-def]
    path = page.locator(f'path[data-building="b{feature_id}"][data-verdict="{verdict}"]')
    path.wait_for()
    assert path.get_attribute("stroke") == COLOURS[verdict], verdict


def count(page, verdict: str) -> str:  # type: ignore[no-untyped-def]
    return page.inner_text(f'#review-counts [data-verdict="{verdict}"] .count')


def wait_counts(page, **expected: int) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 20
    while (seen := {v: count(page, v) for v in expected}) != {
        v: str(n) for v, n in expected.items()
    }:
        assert time.monotonic() < deadline, f"counts {seen}, expected {expected}"
        page.wait_for_timeout(100)


def test_review_retrain_swipe_promote(  # type: ignore[no-untyped-def]
    page, page_log: PageLog, client: httpx.Client, job: dict[str, Any]
) -> None:
    buildings = sorted(features(client, job["id"]), key=lambda f: f["id"])
    centre = aoi_polygon().centroid
    page.goto(f"/#map=19/{centre.y}/{centre.x}&source={job['source']}&overlay=0")
    page.wait_for_function("tilesight.jobs.loaded")
    card = page.locator(f'#jobs-list .card[data-job="{job["id"]}"]')
    card.get_by_role("button", name="Review").click()
    page.wait_for_function("tilesight.review.loaded")
    assert page.locator("#review-h").inner_text().startswith("Review · Job ")
    assert page.locator("path[data-building]").count() == len(buildings)
    wait_counts(page, unreviewed=len(buildings), correct=0)
    assert outline(page, buildings[0]["id"]).get_attribute("stroke") == COLOURS["unreviewed"]
    shortcuts = page.locator("#review .keys kbd").all_text_contents()
    assert {"a", "r", "x", "n"} <= set(shortcuts), f"undocumented shortcuts: {shortcuts}"

    # the two largest buildings: one accepted, one rejected, each by click and key
    big = sorted(buildings, key=lambda f: shape(f["geometry"]).area, reverse=True)
    first, second = big[0], big[1]
    click_building(page, first)
    page.keyboard.press("a")
    wait_verdict(page, first["id"], "correct")
    click_building(page, second)
    page.keyboard.press("x")
    wait_verdict(page, second["id"], "wrong")
    wait_counts(page, correct=1, wrong=1, unreviewed=len(buildings) - 2)

    # too few reviews for a retrain: the server says how many more, the viewer shows it
    page.get_by_role("button", name="Retrain from reviews").click()
    page.locator("#retrain-error", has_text="review 2 more").wait_for()

    # n: the next unreviewed building in id order after the selected one, panned to
    page.keyboard.press("n")
    after = [f for f in buildings if f["id"] > second["id"] and f["id"] != first["id"]]
    third = (after or [f for f in buildings if f["id"] not in (first["id"], second["id"])])[0]
    page.wait_for_function(f"tilesight.review.selected === 'b{third['id']}'")
    assert f"Building {third['id']}" in page.inner_text("#review-selection")
    west, south, east, north = shape(third["geometry"]).bounds
    middle = Point((west + east) / 2, (south + north) / 2)  # where Leaflet centres a shape
    page.wait_for_function(
        """([lat, lon]) => {
          const c = tilesight.map.getCenter();
          return Math.abs(c.lat - lat) < 2e-5 && Math.abs(c.lng - lon) < 2e-5;
        }""",
        arg=[middle.y, middle.x],
    )

    # a second reviewer judges it first: our stale verdict is refused, and we see theirs
    theirs = client.post(
        f"/jobs/{job['id']}/reviews",
        json={"reviews": [{"building_id": third["id"], "verdict": "wrong"}]},
    )
    assert theirs.status_code == 200, theirs.text
    page.keyboard.press("a")
    page.locator("#review-error").wait_for()
    assert "someone else" in page.inner_text("#review-error")
    wait_verdict(page, third["id"], "wrong")

    # redraw its outline: a corner dragged outwards, saved as an edit
    page.evaluate(
        "([lat, lon]) => tilesight.map.setView([lat, lon], 20, {animate: false})",
        [middle.y, middle.x],
    )
    page.keyboard.press("e")
    corner = page.locator(".marker-icon:not(.marker-icon-middle)").first
    box = corner.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    mx, my = screen_point(page, middle.y, middle.x)
    away = ((cx - mx) ** 2 + (cy - my) ** 2) ** 0.5
    page.mouse.move(cx, cy)
    page.mouse.down()
    page.mouse.move(cx + 12 * (cx - mx) / away, cy + 12 * (cy - my) / away, steps=5)
    page.mouse.up()
    page.get_by_role("button", name="Save outline").click()
    wait_verdict(page, third["id"], "edited")
    wait_counts(page, correct=1, wrong=1, edited=1, unreviewed=len(buildings) - 3)
    saved = {
        r["building_id"]: r for r in client.get(f"/jobs/{job['id']}/reviews").json()["reviews"]
    }
    assert saved[third["id"]]["version"] == 2  # theirs, then ours on top of it
    redrawn = shape(saved[third["id"]]["geometry"])
    assert redrawn.area > shape(third["geometry"]).area, "the dragged corner was not saved"

    # a building the model missed, drawn where it found none
    page.evaluate("tilesight.map.fitBounds(tilesight.review.layer.getBounds(), {animate: false})")
    taken = unary_union([shape(f["geometry"]).buffer(3e-5) for f in buildings])
    free = aoi_polygon().buffer(-3e-5).difference(taken)
    pieces = getattr(free, "geoms", [free])
    spot = polylabel(max(pieces, key=lambda g: g.area), tolerance=1e-7)
    sx, sy = screen_point(page, spot.y, spot.x)
    page.get_by_role("button", name="Draw missed building").click()
    corners = [(sx - 10, sy - 10), (sx + 10, sy - 10), (sx + 10, sy + 10), (sx - 10, sy + 10)]
    for x, y in [*corners, corners[0]]:
        page.mouse.click(x, y)
    wait_counts(page, correct=1, wrong=1, edited=1, added=1)
    added = page.locator('path[data-verdict="added"]')
    added.wait_for()
    assert added.get_attribute("stroke") == COLOURS["added"]
    page.keyboard.press("Escape")
    screenshot(page, "08-review")

    # retrain: a tiny run, followed as a percentage until it is done
    page.locator("#review summary", has_text="Training options").click()
    page.fill("#retrain-epochs", "1")
    page.fill("#retrain-steps", "2")
    page.get_by_role("button", name="Retrain from reviews").click()
    status = page.locator("#retrain-status")
    status.wait_for()
    seen: set[str] = set()
    deadline = time.monotonic() + 600
    while "done" not in (text := status.inner_text()):
        assert time.monotonic() < deadline, f"the retrain did not finish: {text}"
        assert page.locator("#retrain-error").is_hidden(), page.inner_text("#retrain-error")
        seen.add(text)
        page.wait_for_timeout(250)
    assert any(re.search(r"(queued|running).* \d+ %$", t) for t in seen), seen
    assert page.locator("#retrain-progress").get_attribute("value") == "100"
    new = int(re.search(r"v(\d+) is ready", text).group(1))  # type: ignore[union-attr]
    assert new > job["version"]
    page.locator("#compare-status", has_text=f"v{new} is ready").wait_for()

    # compare: the job's version left, the new one right, each with its F1
    assert page.input_value("#compare-left") == str(job["version"])
    assert page.input_value("#compare-right") == str(new)
    page.get_by_role("button", name="Compare with a swipe").click()
    f1 = {}
    for version in (job["version"], new):
        shown = page.locator(f'#compare-scores dd[data-version="{version}"]')
        shown.filter(has_text=re.compile(r"F1 \d")).wait_for(timeout=300_000)
        score = client.get(f"/jobs/{job['id']}/reviews/score", params={"version": version})
        assert score.status_code == 200, score.text
        f1[version] = float(re.search(r"F1 ([\d.]+)", shown.inner_text()).group(1))  # type: ignore[union-attr]
        assert f1[version] == pytest.approx(score.json()["f1"], abs=5e-4)
    labels = page.locator(".swipe-label")
    assert labels.nth(0).inner_text() == f"v{job['version']} · F1 {f1[job['version']]:g}"
    assert labels.nth(1).inner_text() == f"v{new} · F1 {f1[new]:g}"
    for version in (job["version"], new):
        asked = [r for r in page_log.matching(f"version={version}") if "/predictions/" in r.url]
        assert asked and all(r.status in (200, 204, 404) for r in asked), version

    # drag the divider to a third of the map: the map stays put, the clips follow
    before = page.evaluate("tilesight.map.getCenter()")
    handle = page.locator(".swipe-handle").bounding_box()
    hx, hy = handle["x"] + handle["width"] / 2, handle["y"] + handle["height"] / 2
    map_box = page.locator("#map").bounding_box()
    page.mouse.move(hx, hy)
    page.mouse.down()
    page.mouse.move(map_box["x"] + map_box["width"] / 3, hy + 40, steps=8)
    page.mouse.up()
    assert page.get_attribute(".swipe-divider", "aria-valuenow") == "33"
    assert page.evaluate("tilesight.map.getCenter()") == before, "the drag panned the map"
    clips = page.evaluate(
        """() => {
          const s = tilesight.compare.swipe;
          const x = Math.round(tilesight.map.getSize().x / 3);
          const cut = tilesight.map.containerPointToLayerPoint([x, 0]).x;
          const edges = (layer) => [
            ...layer.getContainer().style.clipPath.matchAll(/(-?[\\d.]+)px/g),
          ].map((m) => Number(m[1])).filter((_, i) => i % 2 === 0);
          return {cut, left: edges(s.left.layer), right: edges(s.right.layer)};
        }"""
    )
    assert max(clips["left"]) == clips["cut"] and min(clips["right"]) == clips["cut"], clips
    page.wait_for_function(
        "[...document.querySelectorAll('.prediction-tiles')].every("
        "(c) => c.querySelector('img.leaflet-tile-loaded'))"
    )
    screenshot(page, "09-swipe")

    # promote the new version from the swipe
    page.get_by_role("button", name=f"Promote v{new}").click()
    page.locator("#compare-promote", has_text=f"v{new} is promoted").wait_for()
    assert f"v{new} is promoted" in page.inner_text("#compare-status")
    model = client.get(f"/models/{job['model']}").json()
    assert model["promoted_version"] == new
    promoted_card = page.locator(f'#models-list .card[data-version="{new}"]')
    assert promoted_card.locator(".state").inner_text() == "promoted"
    assert page_log.problems(REFUSALS) == []
