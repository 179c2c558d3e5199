"""Area-job throughput: km²/min and tiles/s end to end, time per stage, for 1, 2 and 4 workers.

Starts a private stack (PostGIS, Redis, Triton, API; no worker) in a temporary home with
the demo data, then for each `prediction_block` (1: a window per tile, the reference;
2: the default) and each worker count starts that many Celery worker processes (one task
at a time each), submits the same AOI (the demo chips' own tiles), waits for the job and
prints the figures, with the job's object F1 so a faster block is seen to find the same
buildings. The prediction cache is not used by jobs, so every run infers every tile.
`--split off model` runs each job twice: without the watershed that parts touching roofs
(the job option `peak_depth` 0, the reference) and with the model version's own depth,
so its cost in the vectorise stage and its effect on F1 are side by side.

    .venv/bin/python bench/jobs.py                       # blocks 1, 2 x 1, 2, 4 workers
    .venv/bin/python bench/jobs.py --blocks 2 --workers 1 --split off model
    .venv/bin/python bench/jobs.py --workers 1 --source nairobi --json out.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import mercantile
from shapely.geometry import box, mapping
from shapely.ops import unary_union

from tilesight.settings import PROJECT_ROOT, Settings
from tilesight.stack import Stack, bring_up, isolated_settings, settings_env

STAGES = ("read", "infer", "vectorize", "write", "merge")
SPLITS: dict[str, dict[str, Any]] = {"off": {"peak_depth": 0}, "model": {}}  # job options


def start_workers(settings: Settings, n: int, log_dir: Path) -> list[subprocess.Popen[bytes]]:
    env = {**os.environ, **settings_env(settings), "PYTHONUNBUFFERED": "1"}
    procs = []
    for i in range(n):
        log = open(log_dir / f"bench-worker-{n}-{i}.log", "wb")  # noqa: SIM115 - child owns it
        cmd = [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-Q", "gpu,cpu",
               "-c", "1", "--prefetch-multiplier", "1", "-n", f"bench{n}-{i}@%h",
               "--without-gossip", "--without-mingle", "-l", "WARNING"]  # fmt: skip
        procs.append(
            subprocess.Popen(
                cmd,
                env=env,
                cwd=PROJECT_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        )
    from celery import Celery

    app = Celery(broker=settings.celery_broker_url)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        replies = app.control.ping(timeout=1.0)
        if len({name for r in replies for name in r if name.startswith(f"bench{n}-")}) == n:
            break
    app.close()
    return procs


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def run_job(
    client: httpx.Client, source: str, aoi: dict[str, Any], options: dict[str, Any]
) -> dict[str, Any]:
    t0 = time.perf_counter()
    response = client.post("/jobs", json={"source": source, "aoi": aoi, "options": options})
    response.raise_for_status()
    job_id = response.json()["id"]
    while True:
        job = client.get(f"/jobs/{job_id}").json()
        if job["state"] in ("done", "failed", "cancelled"):
            break
        time.sleep(0.2)
    wall = time.perf_counter() - t0
    if job["state"] != "done":
        print(f"job {job_id} ended {job['state']}: {job['error']}", flush=True)
    evaluation = client.get(f"/jobs/{job_id}/evaluation")
    quality = evaluation.json() if evaluation.status_code == 200 else {}
    return {**job, "wall_s": wall, "evaluation": quality}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--source", default="tanzania", help="part of a demo source id")
    parser.add_argument(
        "--blocks", type=int, nargs="+", default=[1, 2],
        help="prediction_block values to run, each with every worker count (1: a window "
        "per tile, the reference)",
    )  # fmt: skip
    parser.add_argument(
        "--split", nargs="+", choices=SPLITS, default=["model"],
        help="off: no watershed split of touching roofs (job option peak_depth 0); model: "
        "the version's own peak_depth",
    )  # fmt: skip
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="tilesight-bench-"))
    settings = isolated_settings(
        home, load_demo=True, rate_limits={"default": [1000.0, 1000.0], "jobs": [1000.0, 1000.0]}
    )
    stack = Stack(settings, components=["postgres", "redis", "triton", "api"])
    results: list[dict[str, Any]] = []
    try:
        bring_up(stack)
        with httpx.Client(base_url=settings.api_url, timeout=60) as client:
            body = client.get("/sources").json()
            items = body["items"] if isinstance(body, dict) else body
            source = next(s for s in items if args.source in s["id"])
            aoi = imagery_aoi(settings, args.source) or mapping(box(*source["bounds"]))
            for block, n in itertools.product(args.blocks, args.workers):
                worker_settings = settings.model_copy(update={"prediction_block": block})
                procs = start_workers(worker_settings, n, settings.run_dir)
                try:
                    for _, split in itertools.product(range(args.repeat), args.split):
                        job = run_job(client, source["id"], aoi, SPLITS[split])
                        results.append({"block": block, "split": split, **summarise(n, job)})
                        print_row(results[-1])
                finally:
                    stop_workers(procs)
    finally:
        stack.stop()
        shutil.rmtree(home, ignore_errors=True)
    print_scaling(results)
    if args.json:
        meta = {"machine": platform.node(), "cpus": os.cpu_count(), "source": args.source}
        args.json.write_text(json.dumps({"meta": meta, "runs": results}, indent=2))


def imagery_aoi(settings: Settings, place: str, zoom: int = 19) -> dict[str, Any] | None:
    """The demo chips' own tiles as the AOI, so every planned tile has imagery (a
    bounding box would add empty tiles that cost nothing and flatter tiles/s)."""
    folder = settings.demo_data / "buildings" / place
    tiles = [n.stem.split("-")[1:3] for n in folder.glob(f"OAM-*-*-{zoom}.png")]
    if not tiles:
        return None
    inset = 360 / (256 * 2**zoom) / 4
    boxes = [
        box(w + inset, s + inset, e - inset, n - inset)
        for w, s, e, n in (mercantile.bounds(int(x), int(y), zoom) for x, y in tiles)
    ]
    return mapping(unary_union([b.buffer(inset * 1.01, join_style="mitre") for b in boxes]))


def summarise(workers: int, job: dict[str, Any]) -> dict[str, Any]:
    timings = {s: float(job["timings"].get(s, 0.0)) for s in STAGES}
    busy = sum(timings.values()) or 1.0
    return {
        "workers": workers,
        "state": job["state"],
        "tiles": job["tiles"],
        "chunks": job["chunks_total"],
        "area_km2": job["area_km2"],
        "buildings": job["buildings"],
        "wall_s": round(job["wall_s"], 2),
        "tiles_per_s": round(job["tiles"] / job["wall_s"], 2),
        "km2_per_min": round(job["area_km2"] / job["wall_s"] * 60, 3),
        "stage_s": {s: round(v, 2) for s, v in timings.items()},
        "stage_share": {s: round(v / busy, 3) for s, v in timings.items()},
        "object_f1": job["evaluation"].get("f1"),
        "precision": job["evaluation"].get("precision"),
        "recall": job["evaluation"].get("recall"),
    }


def print_scaling(results: list[dict[str, Any]]) -> None:
    """The scaling curve: tiles/s per worker count as a ratio to the fewest workers of
    this run (the reference measured beside it, not a figure from another day)."""
    if not results:
        return
    first = results[0]
    base = first["tiles_per_s"] or 1.0
    curve = ", ".join(
        f"block {r['block']} x {r['workers']} split {r['split']} -> {r['tiles_per_s']:.2f} "
        f"({r['tiles_per_s'] / base:.2f}x, F1 {r['object_f1']})"
        for r in results
    )
    print(
        f"tiles/s against block {first['block']}, split {first['split']}, with "
        f"{first['workers']} worker(s): {curve}",
        flush=True,
    )


def print_row(r: dict[str, Any]) -> None:
    shares = " ".join(f"{s} {r['stage_share'][s]:.0%}" for s in STAGES)
    print(
        f"block={r['block']} split={r['split']} workers={r['workers']} tiles={r['tiles']} "
        f"chunks={r['chunks']} "
        f"km2={r['area_km2']:.3f} wall={r['wall_s']:.1f}s tiles/s={r['tiles_per_s']:.2f} "
        f"km2/min={r['km2_per_min']:.3f} buildings={r['buildings']} F1={r['object_f1']} | {shares}",
        flush=True,
    )


if __name__ == "__main__":
    main()
