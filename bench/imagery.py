"""Imagery tiles: Tilesight against TiTiler on the same COG, the same tiles, the same client.

Both servers run under uvicorn with the same worker count and the same GDAL options
(Tilesight's own, passed to TiTiler as environment), one after the other so they never
share the CPU. The client replays a realistic pan (several zooms, neighbouring tiles,
panning back over tiles already seen) with bounded concurrency on loopback, first
against freshly started servers (cold) and then again (warm). Tilesight runs its real
app: PostGIS + Redis from a private stack, source lookup, ETag, rate limiter (budget
raised so it never refuses).

    .venv/bin/python bench/imagery.py                    # nairobi chips COG, 2 workers
    .venv/bin/python bench/imagery.py --source atlanta --workers 1 --concurrency 8
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import mercantile
import numpy as np
from PIL import Image, UnidentifiedImageError

from tilesight.db import make_engine, make_sessionmaker
from tilesight.imagery.chips import chips_to_cog
from tilesight.imagery.cog import to_cog
from tilesight.imagery.rasters import GDAL_CONFIG
from tilesight.imagery.register import register_file
from tilesight.imagery.sources import SourceInfo
from tilesight.settings import PROJECT_ROOT
from tilesight.stack import Stack, bring_up, free_port, isolated_settings, settings_env

DEMO = PROJECT_ROOT / "data" / "demo"
INPUTS = {
    "nairobi": DEMO / "buildings" / "nairobi",
    "tanzania": DEMO / "buildings" / "tanzania",
    "atlanta": DEMO / "atlanta-spacenet" / "sample_geotiff.tif",
}


def make_cog(name: str, home: Path) -> Path:
    dst = home / f"{name}.tif"
    src = INPUTS[name]
    return chips_to_cog(src, dst) if src.is_dir() else to_cog(src, dst)


def pan(source: SourceInfo, passes: int = 2) -> list[tuple[int, int, int]]:
    """A viewer panning across the source at each zoom (5x4 tiles on screen), then back."""
    west, south, east, north = source.bounds
    tiles: list[tuple[int, int, int]] = []
    top = min(source.native_zoom, source.maxzoom)
    for z in range(max(source.minzoom, top - 4), top + 1):
        steps = 6
        path = [
            (west + (east - west) * i / steps, south + (north - south) * i / steps)
            for i in range(1, steps)
        ]
        for _ in range(passes):  # there and back: the second pass repeats tiles
            for lon, lat in path:
                c = mercantile.tile(lon, lat, z)
                for dy in (-1, 0, 1, 2):
                    for dx in (-2, -1, 0, 1, 2):
                        x, y = c.x + dx, c.y + dy
                        tb = mercantile.bounds(x, y, z)
                        if (
                            tb.west < east
                            and tb.east > west
                            and tb.south < north
                            and tb.north > south
                        ):
                            tiles.append((z, x, y))
            path.reverse()
    return tiles


async def replay(urls: list[str], concurrency: int) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def one(url: str) -> None:
            async with sem:
                t0 = time.perf_counter()
                response = await client.get(url)
                await response.aread()
                latencies.append(time.perf_counter() - t0)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

        start = time.perf_counter()
        await asyncio.gather(*(one(u) for u in urls))
        wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {
        "tiles": len(urls),
        "tiles_per_s": round(len(urls) / wall, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
        "statuses": statuses,
    }


def serve(cmd: list[str], env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/docs", timeout=1).status_code < 500:
                return proc
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.terminate()
    raise RuntimeError(f"{cmd[2:5]} did not start; see {log}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


def uvicorn(app: str, port: int, workers: int, factory: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port)]
    return [*cmd, "--workers", str(workers), "--no-access-log", "--log-level", "warning"] + (
        ["--factory"] if factory else []
    )


def sample_diff(a: str, b: str) -> float | str:
    """Mean absolute pixel difference between the two servers' answers for one tile, or
    what came back instead of an image (a 404 outside the data, a JSON error): the
    comparison is reported, never raised, so the throughput figures still print."""
    arrays = []
    for url in (a, b):
        response = httpx.get(url, timeout=30)
        try:
            with Image.open(io.BytesIO(response.content)) as image:
                arrays.append(np.asarray(image.convert("RGBA")).astype(int))
        except UnidentifiedImageError:
            kind = response.headers.get("content-type", "?")
            return f"{url}: HTTP {response.status_code} {kind}, not an image: {response.text[:120]}"
    return float(np.abs(arrays[0] - arrays[1]).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", choices=sorted(INPUTS), default="nairobi")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="tilesight-bench-imagery-"))
    settings = isolated_settings(
        home,
        load_demo=False,
        rate_limits={name: [1e6, 1e6] for name in ("tiles", "predictions", "jobs", "default")},
    )
    stack = Stack(settings, components=["postgres", "redis"])
    results: dict[str, Any] = {}
    try:
        bring_up(stack, demo=False)
        cog = make_cog(args.source, home)
        engine = make_engine(settings)
        with make_sessionmaker(engine)() as session:
            source = register_file(
                settings, session, cog, name=args.source, attribution="", source_id="bench",
                original_uri=str(cog), in_place=True,
            )  # fmt: skip
        engine.dispose()
        tiles = pan(source)
        rescale = f"&rescale={source.rescale[0]},{source.rescale[1]}" if source.rescale else ""
        gdal_env = {k: str(v) for k, v in GDAL_CONFIG.items()}
        base_env = {**os.environ, **gdal_env, "PYTHONUNBUFFERED": "1"}
        ts_port, tt_port = settings.api_port, free_port()
        servers = {
            "tilesight": (
                uvicorn("api.main:create_app", ts_port, args.workers, factory=True),
                {**base_env, **settings_env(settings)},
                ts_port,
                lambda z, x, y: (
                    f"http://127.0.0.1:{ts_port}/tiles/bench/{z}/{x}/{y}.png"
                    + (f"?{rescale[1:]}" if rescale else "")
                ),
            ),
            "titiler": (
                uvicorn("titiler.application.main:app", tt_port, args.workers),
                base_env,
                tt_port,
                lambda z, x, y: (
                    f"http://127.0.0.1:{tt_port}/cog/tiles/WebMercatorQuad/"
                    f"{z}/{x}/{y}.png?url={cog}{rescale}"
                ),
            ),
        }
        for name, (cmd, env, port, url) in servers.items():
            proc = serve(cmd, env, port, home / f"{name}.log")
            try:
                urls = [url(*t) for t in tiles]
                cold = asyncio.run(replay(urls, args.concurrency))
                warm = asyncio.run(replay(urls, args.concurrency))
                results[name] = {"cold": cold, "warm": warm}
                stop(proc)
            except BaseException:
                stop(proc)
                raise
        # Same pixels? Start both briefly and compare one mid-zoom tile.
        z, x, y = tiles[len(tiles) // 2]
        procs = [serve(c, e, p, home / f"{n}-check.log") for n, (c, e, p, _) in servers.items()]
        try:
            diff = sample_diff(servers["tilesight"][3](z, x, y), servers["titiler"][3](z, x, y))
            results["pixel_mean_abs_diff"] = round(diff, 3) if isinstance(diff, float) else diff
        finally:
            for proc in procs:
                stop(proc)
    except BaseException:
        print(f"failed; server logs kept in {home}", file=sys.stderr)
        raise
    else:
        shutil.rmtree(home, ignore_errors=True)
    finally:
        stack.stop()

    results["setup"] = {
        "source": args.source,
        "workers": args.workers,
        "concurrency": args.concurrency,
        "tiles": len(tiles),
        "unique_tiles": len(set(tiles)),
        "zooms": sorted({t[0] for t in tiles}),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }
    setup = results["setup"]
    print(f"\nimagery tiles: {args.source}, {setup['tiles']} requests "
          f"({setup['unique_tiles']} unique), {args.workers} uvicorn workers each, "
          f"client concurrency {args.concurrency}")  # fmt: skip
    print(f"{'':10}{'phase':6}{'tiles/s':>10}{'p50 ms':>9}{'p99 ms':>9}  statuses")
    for name in ("tilesight", "titiler"):
        for phase in ("cold", "warm"):
            r = results[name][phase]
            print(f"{name:10}{phase:6}{r['tiles_per_s']:>10}{r['p50_ms']:>9}{r['p99_ms']:>9}  "
                  f"{r['statuses']}")  # fmt: skip
    for phase in ("cold", "warm"):
        ratio = (
            results["tilesight"][phase]["tiles_per_s"] / results["titiler"][phase]["tiles_per_s"]
        )
        results[f"ratio_{phase}"] = round(ratio, 2)
        print(f"ratio tilesight/titiler ({phase}): {ratio:.2f}")
    print(f"pixel mean abs diff on one tile: {results['pixel_mean_abs_diff']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
