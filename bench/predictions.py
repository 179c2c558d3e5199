"""Prediction tiles: what the API adds to the model, side by side in one run.

Starts a private stack (PostGIS, Redis, Triton, API; no worker) in a temporary home with
the demo data and a copy of model_repo/, then, for concurrency 1, 8 and 32, measures
tiles/s and p50/p99 latency on loopback for

- imagery:  GET /tiles/{source}/{z}/{x}/{y}.png (the floor: reading and encoding imagery)
- triton:   the same tiles, read beforehand with their context buffer, sent straight to
            Triton over gRPC, one tile per request (what the model alone delivers)
- cold:     GET /predictions/... with the prediction cache off (API restarted with
            TILESIGHT_PREDICTION_CACHE=false): read + infer + crop + colour + PNG
- warm:     the same with the cache on and every tile already cached
- triton torch: the Triton column again for a twin model `<model>-torch` holding the
            same versions without model.onnx, so the backend runs PyTorch eager: the
            ONNX Runtime / PyTorch ratio of the served model, measured in the same run
- triton block: the model step as the API now runs it, one window per block of
            `prediction_block` x `prediction_block` tiles (`tilesight.predict`), counted
            in tiles: against "triton torch" (one tile per window, PyTorch eager, as the
            backend ran before) it is the model step's speed-up
- cold per tile: the cold column with `prediction_block` 1 (each tile its own window)
- triton vN: the Triton column for an older version (`--against`, default the one before
            the promoted one), so a new architecture's CPU latency is a ratio against
            the model it replaces, from the same server in the same run

and, before the stack is loaded, the model step in-process for PyTorch eager, ONNX Runtime
fp32 and its fp16 / int8 variants (bench/onnx_variants.py). It prints the U-Net's FLOPs
per tile (input tile_size + 2 * buffer square).

    .venv/bin/python bench/predictions.py                      # tanzania z19, 48 requests
    .venv/bin/python bench/predictions.py --requests 96 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from onnx_variants import compare_runtimes  # bench/, the script's own folder
from torch.utils.flop_counter import FlopCounterMode

from tilesight.db import make_engine, make_sessionmaker
from tilesight.imagery.reader import read_tile
from tilesight.imagery.sources import get_source
from tilesight.model.export import load_model
from tilesight.predict import context_px
from tilesight.registry import ensure_served, model_metadata, resolve_version
from tilesight.settings import PROJECT_ROOT, Settings
from tilesight.stack import Stack, bring_up, isolated_settings
from tilesight.triton import TritonClient
from tilesight.tritonserver import instance_plan

UNLIMITED = [1e9, 1e9]
FAILURES: list[int] = []


def flops_per_tile(version_dir: Path, size: int) -> float:
    model, _ = load_model(version_dir)
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(torch.zeros((1, 3, size, size), dtype=torch.uint8))
    return float(counter.get_total_flops())


async def measure(
    call: Callable[[int], Awaitable[bool]], requests: int, concurrency: int
) -> dict[str, float]:
    """`requests` calls (index i) from `concurrency` workers: tiles/s of the successful
    ones, their latency, and how many failed (a 503 when Triton's queue is too long)."""
    latencies: list[float] = []
    errors = 0
    queue = list(range(requests))

    async def worker() -> None:
        nonlocal errors
        while queue:
            i = queue.pop()
            start = time.perf_counter()
            if await call(i):
                latencies.append(time.perf_counter() - start)
            else:
                errors += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    ms = np.array(latencies or [float("nan")]) * 1000
    return {
        "tiles_per_s": round(len(latencies) / wall, 2),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
        "errors": errors,
    }


def http_call(client: httpx.AsyncClient, urls: list[str]) -> Callable[[int], Awaitable[bool]]:
    async def call(i: int) -> bool:
        response = await client.get(urls[i % len(urls)])
        if response.status_code != 200 and not FAILURES:
            FAILURES.append(response.status_code)
            print("first failure:", response.status_code, response.text[:300], flush=True)
        return response.status_code == 200

    return call


def bench_settings(home: Path, cache: bool) -> dict[str, Any]:
    return {
        "environment": "test",
        "home": home,
        "model_repo": home / "model_repo",
        "prediction_cache": cache,
        # a CPU Triton queues concurrency-32 bursts for longer than the default 10 s
        "triton_timeout_s": 120.0,
        "rate_limits": {k: UNLIMITED for k in ("tiles", "predictions", "jobs", "default")},
    }


async def run(args: argparse.Namespace, settings: Settings, stack: Stack) -> dict[str, Any]:
    engine = make_engine(settings)
    with make_sessionmaker(engine)() as session:
        source = get_source(session, args.source)
        version = resolve_version(session, args.model, None)
    engine.dispose()
    meta = model_metadata(settings, args.model, version)
    z, buffer = int(meta["zoom"]), context_px(settings, meta)
    chips = sorted((PROJECT_ROOT / "data/demo/buildings" / args.source).glob(f"*-{z}.png"))
    tiles = [tuple(int(v) for v in p.stem.split("-")[1:3]) for p in chips]
    windows = [
        read_tile(source, x, y, z, tilesize=256, buffer=buffer, settings=settings).data[None]
        for x, y in tiles
    ]
    base = settings.api_url
    imagery = [f"{base}/tiles/{args.source}/{z}/{x}/{y}.png" for x, y in tiles]
    preds = [f"{base}/predictions/{args.model}/{args.source}/{z}/{x}/{y}.png" for x, y in tiles]
    triton = TritonClient(settings.triton_url, timeout_s=120)

    async def direct(i: int) -> bool:
        await triton.infer(args.model, windows[i % len(windows)], str(version))
        return True

    n = settings.prediction_block
    blocks = sorted({(x - x % n, y - y % n) for x, y in tiles})
    block_windows = [
        read_tile(source, x, y, z, tilesize=256, buffer=buffer, block=n, settings=settings).data[
            None
        ]
        for x, y in blocks
    ]

    async def direct_block(i: int) -> bool:
        await triton.infer(args.model, block_windows[i % len(block_windows)], str(version))
        return True

    async def direct_torch(i: int) -> bool:
        await triton.infer(torch_twin(args.model), windows[i % len(windows)], str(version))
        return True

    against = args.against if args.against is not None else version - 1
    old_buffer = context_px(settings, model_metadata(settings, args.model, against))
    old_windows = [
        read_tile(source, x, y, z, tilesize=256, buffer=old_buffer, settings=settings).data[None]
        for x, y in tiles
    ]

    async def direct_against(i: int) -> bool:
        await triton.infer(args.model, old_windows[i % len(old_windows)], str(against))
        return True

    size = 256 + 2 * buffer
    flops = flops_per_tile(settings.model_repo / args.model / str(version), size)
    results: dict[str, Any] = {
        "device": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "model": f"{args.model} v{version}",
        "against": f"{args.model} v{against}",
        "against_gflops_per_tile": round(
            flops_per_tile(settings.model_repo / args.model / str(against), 256 + 2 * old_buffer)
            / 1e9,
            2,
        ),  # fmt: skip
        "architecture": meta["architecture"],
        "input": [3, size, size],
        "gflops_per_tile": round(flops / 1e9, 2),
        "tiles": len(tiles),
        "block": n,
        "requests": args.requests,
        "rows": [],
    }
    version_dir = settings.model_repo / args.model / str(version)
    _, threads = instance_plan()
    results["threads"] = threads
    results["runtimes"] = compare_runtimes(version_dir, np.concatenate(windows), threads)
    served = [await triton.infer(args.model, w, str(version)) for w in windows]
    eager = [await triton.infer(torch_twin(args.model), w, str(version)) for w in windows]
    results["served_max_abs_diff"] = round(
        max(float(np.abs(a - b).max()) for a, b in zip(served, eager, strict=True)), 6
    )
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        await direct(0)  # warm up Triton and the API
        await direct_against(0)
        await client.get(imagery[0])
        for c in args.concurrency:
            row = {"concurrency": c}
            row["imagery"] = await measure(http_call(client, imagery), args.requests, c)
            row["triton"] = await measure(direct, args.requests, c)
            row["triton_torch"] = await measure(direct_torch, args.requests, c)
            row["onnx_vs_torch"] = round(
                row["triton"]["tiles_per_s"] / row["triton_torch"]["tiles_per_s"], 2
            )
            row["triton_block"] = await measure(direct_block, max(args.requests // n**2, c), c)
            row["triton_block"]["tiles_per_s"] = round(row["triton_block"]["tiles_per_s"] * n**2, 2)
            # the model step now (ONNX Runtime, one window per block) against before
            # (PyTorch eager, one window per tile), in tiles/s
            row["step_vs_before"] = round(
                row["triton_block"]["tiles_per_s"] / row["triton_torch"]["tiles_per_s"], 2
            )
            row["triton_against"] = await measure(direct_against, args.requests, c)
            # how many times the reference's tiles/s: above 1 the new version is slower
            row["latency_vs_against"] = round(
                row["triton_against"]["tiles_per_s"] / row["triton"]["tiles_per_s"], 2
            )
            results["rows"].append(row)
            print(json.dumps(row), flush=True)
    # cold: the API again with the cache off, so every request runs the model; once with
    # blocks and once with one window per tile, as before blocks
    api = stack.component("api")
    stack.stop_component(api)
    for column, block in (("cold", n), ("cold_per_tile", 1)):
        overrides = {"prediction_cache": False, "prediction_block": block}
        cold_stack = Stack(Settings(**{**settings.model_dump(), **overrides}), components=["api"])
        cold_stack.start_component(cold_stack.component("api"))
        try:
            async with httpx.AsyncClient(timeout=300, limits=limits) as client:
                await client.get(preds[0])
                for row in results["rows"]:
                    c = row["concurrency"]
                    row[column] = await measure(http_call(client, preds), args.requests, c)
                    print(json.dumps({"concurrency": c, column: row[column]}), flush=True)
        finally:
            cold_stack.stop_component(cold_stack.component("api"))
    stack.start_component(api)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        for url in preds:  # fill the cache
            await client.get(url)
        for row in results["rows"]:
            c = row["concurrency"]
            row["warm"] = await measure(http_call(client, preds), args.requests, c)
            row["cold_vs_triton"] = round(
                row["cold"]["tiles_per_s"] / row["triton"]["tiles_per_s"], 2
            )
            print(json.dumps({"concurrency": c, "warm": row["warm"]}), flush=True)
    await triton.close()
    return results


def torch_twin(model: str) -> str:
    return f"{model}-torch"


def add_torch_twin(settings: Settings, model: str) -> None:
    """A second Triton model with the same versions minus model.onnx: its backend serves
    them with PyTorch eager, so both runtimes are measured by one server in one run."""
    twin = torch_twin(model)
    ensure_served(settings, twin)
    for version in (settings.model_repo / model).iterdir():
        if version.name.isdigit():
            target = settings.model_repo / twin / version.name
            shutil.copytree(version, target, ignore=shutil.ignore_patterns("model.onnx"))


def runtime_table(results: dict[str, Any]) -> str:
    lines = [
        f"In-process model step, batch 4, {results['threads']} threads (the Triton "
        "instance's share), against PyTorch eager fp32 on the same windows:",
        "| runtime | tiles/s | vs torch | max abs diff | pixels flipped | object F1 vs torch "
        "| holds accuracy |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results["runtimes"]:
        lines.append(
            f"| {r['runtime']} | {r['tiles_per_s']} | {r['vs_torch']} | {r['max_abs_diff']} "
            f"| {r['flipped_pixels']} | {r['object_f1_vs_torch']} | {r['holds_accuracy']} |"
        )
    lines.append(
        f"Served: ONNX Runtime vs PyTorch backend, max abs diff {results['served_max_abs_diff']}"
        " (fp16 outputs); tiles/s ratio per concurrency: "
        + ", ".join(f"c{r['concurrency']} {r['onnx_vs_torch']}" for r in results["rows"])
    )
    return "\n".join(lines)


def table(results: dict[str, Any]) -> str:
    lines = [
        f"{results['model']} input {results['input']}: {results['gflops_per_tile']} GFLOP/tile, "
        f"{results['tiles']} distinct tiles, {results['requests']} requests per cell, "
        f"{results['cpus']} CPUs; {results['against']}: "
        f"{results['against_gflops_per_tile']} GFLOP/tile",
        "| concurrency | imagery tiles/s (p50/p99 ms) | Triton direct | Triton, torch backend "
        f"| Triton, blocks of {results['block']} | step vs before | API cold (no cache) "
        "| API cold, a window per tile | API warm (cached) | cold / Triton "
        f"| Triton {results['against']} | latency vs it |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    keys = ("imagery", "triton", "triton_torch", "triton_block", "cold", "cold_per_tile")
    for row in results["rows"]:
        cells = [
            f"{row[k]['tiles_per_s']} ({row[k]['p50_ms']}/{row[k]['p99_ms']})"
            + (f" {row[k]['errors']} failed" if row[k]["errors"] else "")
            for k in (*keys, "warm", "triton_against")
        ]
        cells.insert(4, str(row["step_vs_before"]))
        cells.insert(8, str(row["cold_vs_triton"]))
        lines.append(
            f"| {row['concurrency']} | " + " | ".join(cells) + f" | {row['latency_vs_against']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", default="tanzania")
    parser.add_argument("--model", default="buildings")
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--model-repo", type=Path, default=PROJECT_ROOT / "model_repo")
    parser.add_argument("--against", type=int, help="reference version (default: promoted - 1)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="tilesight-bench-"))
    shutil.copytree(args.model_repo, home / "model_repo")
    settings = isolated_settings(**bench_settings(home, cache=True))
    add_torch_twin(settings, args.model)
    stack = Stack(settings, components=["postgres", "redis", "triton", "api"])
    try:
        bring_up(stack, on_line=lambda line: print(line, flush=True))
        results = asyncio.run(run(args, settings, stack))
    finally:
        stack.stop()
        shutil.rmtree(home, ignore_errors=True)
    print(table(results))
    print(runtime_table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
