"""Imagery tiles: Tilesight against TiTiler on the same COG, the same tiles, the same client.

Both servers run under uvicorn with the same worker count and the same GDAL options
(Tilesight's own, passed to TiTiler as environment), one after the other so they never
share the CPU. The client replays a realistic pan (several zooms, neighbouring tiles,
panning back over tiles already seen) with bounded concurrency on loopback, first
against freshly started servers (cold) and then again (warm). Tilesight runs its real
app: PostGIS + Redis from a private stack, source lookup, ETag, rate limiter (budget
raised so it never refuses).

    .venv/bin/python bench/imagery.py            # nairobi chips COG and the large COG
    .venv/bin/python bench/imagery.py --source nairobi tanzania atlanta large --format webp
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import mercantile
import numpy as np
import rasterio
import rasterio.shutil
from PIL import Image, UnidentifiedImageError
from rasterio.transform import from_origin
from rasterio.windows import Window

from tilesight.db import make_engine, make_sessionmaker
from tilesight.imagery.chips import CHIP_SIZE, WORLD_M, chips_to_cog
from tilesight.imagery.cog import to_cog
from tilesight.imagery.rasters import GDAL_CONFIG
from tilesight.imagery.register import register_file
from tilesight.imagery.sources import SourceInfo
from tilesight.settings import PROJECT_ROOT, Settings
from tilesight.stack import Stack, bring_up, free_port, isolated_settings, settings_env

DEMO = PROJECT_ROOT / "data" / "demo"
INPUTS = {
    "nairobi": DEMO / "buildings" / "nairobi",
    "tanzania": DEMO / "buildings" / "tanzania",
    "atlanta": DEMO / "atlanta-spacenet" / "sample_geotiff.tif",
}


LARGE = "large"  # a user-sized COG built from the demo chips (large_cog)
LARGE_SIDE = 20480  # px: 400 M pixels, 1.5 km at the chips' 7.5 cm


def make_cog(name: str, home: Path) -> Path:
    dst = home / f"{name}.tif"
    if name == LARGE:
        return large_cog(dst)
    src = INPUTS[name]
    return chips_to_cog(src, dst) if src.is_dir() else to_cog(src, dst)


def large_cog(dst: Path, side: int = LARGE_SIDE, seed: int = 0) -> Path:
    """A JPEG COG of side x side px with internal overviews, mosaicked from the real demo
    chips (Nairobi and Tanzania, z21): each 512 px block is four chips, each turned and
    flipped at random, or one chip resampled 2x (bilinear), so neighbouring tiles differ
    the way real imagery does and JPEG has real texture to code. Built at bench time in
    the bench's temporary home (the demo data holds about a quarter of these pixels)."""
    chips = sorted(INPUTS["nairobi"].glob("*.png")) + sorted(INPUTS["tanzania"].glob("*.png"))
    rng = np.random.default_rng(seed)
    z = 21
    res = WORLD_M / (CHIP_SIZE * 2**z)
    ul = mercantile.xy(*mercantile.ul(1263512, 1056200, z))  # the Nairobi chips' corner
    block = 2 * CHIP_SIZE
    raw = dst.with_suffix(".raw.tif")
    profile = {
        "driver": "GTiff", "width": side, "height": side, "count": 3, "dtype": "uint8",
        "crs": "EPSG:3857", "transform": from_origin(ul[0], ul[1], res, res), "tiled": True,
        "blockxsize": block, "blockysize": block, "BIGTIFF": "YES",
    }  # fmt: skip

    def chip(size: int) -> np.ndarray:
        with Image.open(chips[rng.integers(len(chips))]) as image:
            rgb = image.convert("RGB")
            if size != CHIP_SIZE:
                rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
            a = np.asarray(rgb)
        a = np.rot90(a, int(rng.integers(4)))
        return a[:, ::-1] if rng.integers(2) else a

    t0 = time.perf_counter()
    with rasterio.open(raw, "w", **profile) as out:
        for row in range(0, side, block):
            for col in range(0, side, block):
                if rng.random() < 0.25:
                    tile = chip(block)
                else:
                    top = np.concatenate([chip(CHIP_SIZE), chip(CHIP_SIZE)], axis=1)
                    bottom = np.concatenate([chip(CHIP_SIZE), chip(CHIP_SIZE)], axis=1)
                    tile = np.concatenate([top, bottom], axis=0)
                out.write(np.ascontiguousarray(tile.transpose(2, 0, 1)),
                          window=Window(col, row, block, block))  # fmt: skip
    rasterio.shutil.copy(
        raw, dst, driver="COG", COMPRESS="JPEG", QUALITY=85, BLOCKSIZE=512,
        OVERVIEW_RESAMPLING="AVERAGE", NUM_THREADS="ALL_CPUS", BIGTIFF="YES",
    )  # fmt: skip
    raw.unlink()
    mb = dst.stat().st_size / 2**20
    print(f"large COG: {side} x {side} px, JPEG, {mb:.0f} MB, built in "
          f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)  # fmt: skip
    return dst


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


@dataclass(frozen=True)
class Server:
    cmd: list[str]
    env: dict[str, str]
    port: int
    url: str  # a template with {z}, {x}, {y}


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


def servers_for(
    settings: Settings, cog: Path, source: SourceInfo, workers: int, fmt: str
) -> dict[str, Server]:
    """Both servers' commands, environments and tile URLs for one source: the same GDAL
    options, the same output format (PNG, or JPEG/WebP for opaque imagery when asked)."""
    rescale = f"rescale={source.rescale[0]},{source.rescale[1]}" if source.rescale else ""
    gdal_env = {k: str(v) for k, v in GDAL_CONFIG.items()}
    base_env = {**os.environ, **gdal_env, "PYTHONUNBUFFERED": "1"}
    ts_port, tt_port = settings.api_port, free_port()
    ts_query = f"?{rescale}" if rescale else ""
    tt_query = f"?url={cog}" + (f"&{rescale}" if rescale else "")
    return {
        "tilesight": Server(
            uvicorn("api.main:create_app", ts_port, workers, factory=True),
            {**base_env, **settings_env(settings)},
            ts_port,
            f"http://127.0.0.1:{ts_port}/tiles/{source.id}/{{z}}/{{x}}/{{y}}.{fmt}{ts_query}",
        ),
        "titiler": Server(
            uvicorn("titiler.application.main:app", tt_port, workers),
            base_env,
            tt_port,
            f"http://127.0.0.1:{tt_port}/cog/tiles/WebMercatorQuad/{{z}}/{{x}}/{{y}}.{fmt}"
            + tt_query,
        ),
    }


def bench_source(
    settings: Settings, home: Path, name: str, args: argparse.Namespace
) -> dict[str, Any]:
    """Cold then warm replay of one source's pan on each server (fresh server each)."""
    cog = make_cog(name, home)
    engine = make_engine(settings)
    with make_sessionmaker(engine)() as session:
        source = register_file(
            settings, session, cog, name=name, attribution="", source_id=name,
            original_uri=str(cog), in_place=True,
        )  # fmt: skip
    engine.dispose()
    tiles = pan(source)
    servers = servers_for(settings, cog, source, args.workers, args.format)
    result: dict[str, Any] = {"tiles": len(tiles), "unique_tiles": len(set(tiles))}
    load_before = os.getloadavg()[0]
    result["size_px"] = source_size(cog)
    for server_name, server in servers.items():
        proc = serve(server.cmd, server.env, server.port, home / f"{name}-{server_name}.log")
        try:
            urls = [server.url.format(z=z, x=x, y=y) for z, x, y in tiles]
            cold = asyncio.run(replay(urls, args.concurrency))
            warm = asyncio.run(replay(urls, args.concurrency))
            result[server_name] = {"cold": cold, "warm": warm}
        finally:
            stop(proc)
    result["load_average"] = f"{load_before:.1f} -> {os.getloadavg()[0]:.1f}"
    for phase in ("cold", "warm"):
        ratio = result["tilesight"][phase]["tiles_per_s"] / result["titiler"][phase]["tiles_per_s"]
        result[f"ratio_{phase}"] = round(ratio, 2)
    # Same pixels? Start both briefly and compare one mid-zoom tile.
    z, x, y = tiles[len(tiles) // 2]
    procs = [
        serve(s.cmd, s.env, s.port, home / f"{name}-{n}-check.log") for n, s in servers.items()
    ]
    try:
        urls = [s.url.format(z=z, x=x, y=y) for s in servers.values()]
        diff = sample_diff(*urls)
        result["pixel_mean_abs_diff"] = round(diff, 3) if isinstance(diff, float) else diff
    finally:
        for proc in procs:
            stop(proc)
    return result


def source_size(cog: Path) -> str:
    with rasterio.open(cog) as dataset:
        compress = dataset.profile.get("compress", "none")
        return f"{dataset.width}x{dataset.height} {compress}, {len(dataset.overviews(1))} ovr"


def report(results: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"\nimagery tiles, {args.workers} uvicorn workers each, client concurrency "
          f"{args.concurrency}, .{args.format}")  # fmt: skip
    print(f"{'source':10}{'size':28}{'server':10}{'phase':6}{'tiles/s':>9}{'p50 ms':>8}"
          f"{'p99 ms':>8}  statuses")  # fmt: skip
    for name, r in results["sources"].items():
        for server in ("tilesight", "titiler"):
            for phase in ("cold", "warm"):
                f = r[server][phase]
                print(f"{name:10}{r['size_px']:28}{server:10}{phase:6}{f['tiles_per_s']:>9}"
                      f"{f['p50_ms']:>8}{f['p99_ms']:>8}  {f['statuses']}")  # fmt: skip
    print("\nratio tilesight/titiler (tiles/s, same run):")
    for name, r in results["sources"].items():
        print(f"  {name:10} cold {r['ratio_cold']:.2f}  warm {r['ratio_warm']:.2f}  "
              f"({r['tiles']} requests, {r['unique_tiles']} unique, "
              f"load average {r['load_average']}; "
              f"pixel mean abs diff on one tile: {r['pixel_mean_abs_diff']})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--source", nargs="+", choices=[*sorted(INPUTS), LARGE], default=["nairobi", LARGE]
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--format", choices=["png", "jpg", "webp"], default="png")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="tilesight-bench-imagery-"))
    settings = isolated_settings(
        home,
        load_demo=False,
        rate_limits={name: [1e6, 1e6] for name in ("tiles", "predictions", "jobs", "default")},
    )
    stack = Stack(settings, components=["postgres", "redis"])
    results: dict[str, Any] = {"sources": {}}
    try:
        bring_up(stack, demo=False)
        for name in args.source:
            results["sources"][name] = bench_source(settings, home, name, args)
    except BaseException:
        print(f"failed; server logs kept in {home}", file=sys.stderr)
        raise
    else:
        shutil.rmtree(home, ignore_errors=True)
    finally:
        stack.stop()
    results["setup"] = {
        "workers": args.workers,
        "concurrency": args.concurrency,
        "format": args.format,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    report(results, args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
