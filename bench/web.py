"""The viewer as a user feels it: how long until the map shows imagery and predictions.

Drives Debian's chromium (Playwright) against a stack and, for a few demo views at the
model's zoom, measures from navigation start:

- page:     DOMContentLoaded and the bytes of the page itself (HTML, JS, CSS, no tiles)
- imagery:  until every visible imagery tile is in (the basemap stops loading)
- overlay:  until every visible prediction tile is in, first with the server's prediction
            cache cold (each tile runs the model), then again in a fresh browser with the
            cache warm (the same view, from Redis)
- pan:      after a 512 px pan, until both layers have filled the new strip

Each visit uses a fresh browser context, so the browser's own cache never helps.

    .venv/bin/python bench/web.py                  # starts a private stack with the demo data
    .venv/bin/python bench/web.py --url http://127.0.0.1:8080   # a stack already running
    .venv/bin/python bench/web.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from playwright.sync_api import Page, sync_playwright

from tilesight.settings import PROJECT_ROOT
from tilesight.stack import Stack, bring_up, isolated_settings

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Centres of demo chips with buildings, at the model's native zoom (19).
VIEWS = [
    ("tanzania", -6.043260, 39.242821),
    ("tanzania", -6.043943, 39.241447),
    ("nairobi", -1.304857, 36.906853),
]
SETTLED = "(layer) => window.tilesight && tilesight[layer] && !tilesight[layer].isLoading()"


@contextmanager
def private_stack() -> Iterator[str]:
    """A stack of our own in a temporary home, with the demo data and a copy of model_repo."""

    home = Path(tempfile.mkdtemp(prefix="tilesight-bench-web-"))
    repo = home / "model_repo"
    shutil.copytree(PROJECT_ROOT / "model_repo", repo, symlinks=True)
    settings = isolated_settings(
        home,
        model_repo=repo,
        rate_limits={k: [1e9, 1e9] for k in ("tiles", "predictions", "jobs", "default")},
    )
    stack = Stack(settings)
    try:
        bring_up(stack)
        yield settings.api_url
    finally:
        stack.stop()
        shutil.rmtree(home, ignore_errors=True)


def wait_settled(page: Page, layer: str, timeout_ms: int = 120_000) -> float:
    """Seconds since navigation start when `layer` has no tile left to load."""
    page.wait_for_function(f"({SETTLED})('{layer}')", timeout=timeout_ms)
    return page.evaluate("performance.now()") / 1000


def visit(browser: Any, url: str, source: str, lat: float, lon: float) -> dict[str, float]:
    # bypass_csp: wait_for_function evaluates its predicate with eval(), which the
    # viewer's CSP refuses (script-src 'self'); the page itself is unchanged
    context = browser.new_context(viewport={"width": 1280, "height": 800}, bypass_csp=True)
    page = context.new_page()
    tiles = {"imagery": 0, "overlay": 0}

    def count(response: Any) -> None:
        if "/tiles/" in response.url and response.status == 200:
            tiles["imagery"] += 1
        elif "/predictions/" in response.url and ".png" in response.url:
            tiles["overlay"] += 1

    page.on("response", count)
    page.goto(f"{url}/#map=19/{lat}/{lon}&source={source}&overlay=1")
    imagery_s = wait_settled(page, "basemap")
    page.wait_for_function("tilesight.overlay !== null && tilesight.overlay !== undefined")
    overlay_s = wait_settled(page, "overlay")
    timing = page.evaluate(
        """() => {
          const nav = performance.getEntriesByType("navigation")[0];
          const own = performance.getEntriesByType("resource").filter(
            (r) => !/\\/(tiles|predictions|buildings)\\//.test(r.name)
                && /\\.(js|css|html)$|\\/$/.test(new URL(r.name).pathname));
          const bytes = own.reduce((sum, r) => sum + (r.encodedBodySize || 0), 0);
          return {dom: nav.domContentLoadedEventEnd / 1000,
                  bytes: bytes + (nav.encodedBodySize || 0)};
        }"""
    )
    before = dict(tiles)
    start = page.evaluate("performance.now()") / 1000
    page.evaluate("tilesight.map.panBy([512, 0], {animate: false})")
    page.wait_for_timeout(50)
    wait_settled(page, "basemap")
    pan_s = wait_settled(page, "overlay") - start
    context.close()
    return {
        "dom_s": timing["dom"],
        "page_kb": timing["bytes"] / 1024,
        "imagery_s": imagery_s,
        "overlay_s": overlay_s,
        "pan_s": pan_s,
        "imagery_tiles": before["imagery"],
        "overlay_tiles": before["overlay"],
        "pan_tiles": tiles["overlay"] - before["overlay"],
    }


def run(url: str) -> dict[str, Any]:
    rows: dict[str, list[dict[str, float]]] = {"cold": [], "warm": []}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        for phase in ("cold", "warm"):
            for source, lat, lon in VIEWS:
                rows[phase].append(visit(browser, url, source, lat, lon))
        browser.close()
    return rows


def summary(rows: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in rows) for key in rows[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running stack; default: start a private one")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    started = time.monotonic()
    if args.url:
        rows = run(args.url.rstrip("/"))
    else:
        with private_stack() as url:
            rows = run(url)
    print(f"{platform.node()} · {len(VIEWS)} views at z19, 1280x800, medians")
    print(
        f"{'server cache':12} {'DOM s':>6} {'page KB':>8} {'imagery s':>10} "
        f"{'overlay s':>10} {'pan s':>6} {'tiles img/ovl/pan':>18}"
    )
    for phase, phase_rows in rows.items():
        s = summary(phase_rows)
        tiles = f"{s['imagery_tiles']:.0f}/{s['overlay_tiles']:.0f}/{s['pan_tiles']:.0f}"
        print(
            f"{phase:12} {s['dom_s']:6.2f} {s['page_kb']:8.0f} {s['imagery_s']:10.2f} "
            f"{s['overlay_s']:10.2f} {s['pan_s']:6.2f} {tiles:>18}"
        )
    print(f"({time.monotonic() - started:.0f} s in all)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
