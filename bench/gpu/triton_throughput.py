"""Triton's own throughput and latency for one tile per request, by client concurrency.

    python bench/gpu/triton_throughput.py --url 127.0.0.1:8001 [--concurrency 1,8,32,64]

The reference the API is judged against: what the model server delivers with nothing in
front of it, through the same async gRPC client the API and workers use.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import numpy as np

from tilesight.triton import TritonClient


async def run(client: TritonClient, model: str, size: int, concurrency: int, seconds: float,
              batch: int = 1) -> dict[str, float]:  # fmt: skip
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (batch, 3, size, size), dtype=np.uint8)
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            await client.infer(model, image)
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {
        "concurrency": concurrency, "batch": batch, "requests": len(latencies),
        "tiles_per_s": round(len(latencies) * batch / elapsed, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
    }  # fmt: skip


async def main_async(args: argparse.Namespace) -> list[dict[str, float]]:
    client = TritonClient(args.url, timeout_s=60)
    rows = []
    try:
        await run(client, args.model, args.size, 2, 1.0)  # warm-up
        for c in [int(v) for v in args.concurrency.split(",")]:
            row = await run(client, args.model, args.size, c, args.seconds)
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        await client.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="127.0.0.1:8001")
    parser.add_argument("--model", default="buildings")
    parser.add_argument("--size", type=int, default=320, help="tile + 2*buffer")
    parser.add_argument("--concurrency", default="1,8,32,64")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = asyncio.run(main_async(args))
    if args.out:
        args.out.write_text(
            json.dumps({"url": args.url, "model": args.model, "rows": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
