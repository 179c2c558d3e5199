"""A bounded load test: imagery tiles, prediction tiles, job submissions and polling, mixed,
for a fixed time against the whole local stack, then every submitted job is followed to
its end. Prints throughput, p50/p99 and errors per kind; the run passes with zero 5xx and
zero lost jobs (a job not done, or with missing chunks, once the load stops).

    .venv/bin/python bench/load.py [--seconds 60] [--concurrency 16] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import mercantile
import numpy as np
from shapely.geometry import box, mapping

from tilesight.settings import Settings
from tilesight.stack import Stack, bring_up, isolated_settings

PLACES = ("tanzania", "nairobi")


def chip_tiles(settings: Settings, place: str, zoom: int) -> list[mercantile.Tile]:
    folder = settings.demo_data / "buildings" / place
    tiles = [n.stem.split("-")[1:3] for n in folder.glob(f"OAM-*-*-{zoom}.png")]
    return [mercantile.Tile(int(x), int(y), zoom) for x, y in tiles]


class Recorder:
    def __init__(self) -> None:
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.status: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))

    async def call(self, kind: str, coro: Any) -> httpx.Response | None:
        start = time.perf_counter()
        try:
            response = await coro
        except httpx.HTTPError as exc:
            self.status[kind][0] += 1
            print(f"{kind}: {type(exc).__name__}", file=sys.stderr)
            return None
        self.latency[kind].append(time.perf_counter() - start)
        self.status[kind][response.status_code] += 1
        return response

    def table(self, seconds: float) -> list[dict[str, Any]]:
        rows = []
        for kind in sorted(self.status):
            ms = np.array(self.latency[kind] or [0.0]) * 1000
            codes = dict(sorted(self.status[kind].items()))
            rows.append({
                "kind": kind, "requests": sum(codes.values()),
                "per_s": round(sum(codes.values()) / seconds, 1),
                "p50_ms": round(float(np.percentile(ms, 50)), 1),
                "p99_ms": round(float(np.percentile(ms, 99)), 1),
                "statuses": codes,
                "5xx": sum(n for c, n in codes.items() if c >= 500),
            })  # fmt: skip
        return rows


async def run_load(settings: Settings, seconds: float, concurrency: int) -> dict[str, Any]:
    rec = Recorder()
    rng = random.Random(0)
    tiles = {place: chip_tiles(settings, place, 19) for place in PLACES}
    jobs: list[str] = []
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=concurrency * 2)
    async with httpx.AsyncClient(base_url=settings.api_url, timeout=60, limits=limits) as client:

        async def viewer() -> None:
            while time.monotonic() < deadline:
                place = rng.choice(PLACES)
                t = rng.choice(tiles[place])
                z = rng.choice([18, 19, 19, 20])
                if z == 18:
                    t = mercantile.parent(t)
                elif z == 20:
                    t = rng.choice(mercantile.children(t))
                await rec.call("imagery", client.get(f"/tiles/{place}/{t.z}/{t.x}/{t.y}.png"))
                if z >= 19:
                    url = f"/predictions/buildings/{place}/{t.z}/{t.x}/{t.y}.png"
                    await rec.call("prediction", client.get(url))

        async def submitter() -> None:
            while time.monotonic() < deadline:
                place = rng.choice(PLACES)
                t = rng.choice(tiles[place])
                aoi = mapping(box(*mercantile.bounds(t)).buffer(-1e-6))
                response = await rec.call(
                    "job submit", client.post("/jobs", json={"source": place, "aoi": aoi})
                )
                if response is not None and response.status_code == 202:
                    jobs.append(response.json()["id"])
                await asyncio.sleep(2.0)

        async def poller() -> None:
            while time.monotonic() < deadline:
                if jobs:
                    await rec.call("job poll", client.get(f"/jobs/{rng.choice(jobs)}"))
                await rec.call("job list", client.get("/jobs", params={"limit": 10}))
                await asyncio.sleep(0.5)

        start = time.monotonic()
        await asyncio.gather(
            *(viewer() for _ in range(concurrency)), submitter(), poller(),
        )  # fmt: skip
        elapsed = time.monotonic() - start

        # After the load: every accepted job must finish, with every chunk done.
        lost, finish_deadline = [], time.monotonic() + 600
        for job_id in jobs:
            while True:
                job = (await client.get(f"/jobs/{job_id}")).json()
                if job["state"] in ("done", "failed", "cancelled"):
                    break
                if time.monotonic() > finish_deadline:
                    break
                await asyncio.sleep(1)
            if job["state"] != "done" or job["chunks_done"] != job["chunks_total"]:
                lost.append({"id": job_id, "state": job["state"], "error": job.get("error")})
    rows = rec.table(elapsed)
    return {
        "seconds": round(elapsed, 1), "concurrency": concurrency, "rows": rows,
        "jobs_submitted": len(jobs), "jobs_lost": lost,
        "total_5xx": sum(r["5xx"] for r in rows),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--concurrency", type=int, default=16, help="simulated map viewers")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="tilesight-load-"))
    settings = isolated_settings(
        home,
        rate_limits={"tiles": [1e4, 1e4], "predictions": [1e4, 1e4], "jobs": [100, 100],
                     "default": [1e4, 1e4]},
    )  # fmt: skip
    stack = Stack(settings)
    try:
        bring_up(stack)
        result = asyncio.run(run_load(settings, args.seconds, args.concurrency))
    finally:
        stack.stop()
        shutil.rmtree(home, ignore_errors=True)
    print(f"{'kind':<12} {'requests':>8} {'per s':>7} {'p50 ms':>8} {'p99 ms':>8}  statuses")
    for r in result["rows"]:
        print(f"{r['kind']:<12} {r['requests']:>8} {r['per_s']:>7} {r['p50_ms']:>8} "
              f"{r['p99_ms']:>8}  {r['statuses']}")  # fmt: skip
    print(f"{result['seconds']} s, {args.concurrency} viewers: {result['total_5xx']} 5xx, "
          f"{len(result['jobs_lost'])} of {result['jobs_submitted']} jobs lost")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if result["total_5xx"] or result["jobs_lost"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
