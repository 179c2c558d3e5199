"""One round of review and retrain on a place the model never saw, through the API.

Issue 16 asks what a mapper gets from one round of corrections: on a place left out of
training, object F1 before and after reviewing a third of the place and retraining from
the reviews, scored on the rest, and how long the round takes. This bench walks that
path as a client would, over HTTP against a private stack (PostGIS, Redis, Triton, a
Celery worker, the API):

1. a model repository whose `buildings/1` is a copy of `--version-dir`, a version
   trained without the place;
2. the place's imagery registered with POST /sources (its labels.geojson lies beside the
   imagery, which is where GET /jobs/{id}/evaluation finds labels);
3. the place's z19 tiles split by bench/lopo.thirds (about a third, by whole z18
   blocks, and the rest); one area job over each with version 1;
4. a careful reviewer on the third's job: each building matched one to one to an OSM
   label at IoU >= 0.5 is `correct`, the others `wrong`, and every label left unmatched
   is `added` with its outline cut to the job's area (as evaluation cuts it);
5. POST /jobs/{id}/retrain with no body (the fine-tune defaults), then an area job over
   the rest with the new version;
6. GET /jobs/{id}/evaluation of the rest's two jobs: F1 before and after.

The version folder comes from a leave-one-place-out fold that keeps its repository:

    .venv/bin/python bench/lopo.py --architecture resunet --width 24 --depth 5 --border \
        --keep DIR
    # -> DIR/repo-tanzania/buildings/1 is the fold trained on the three other places
    #    (with --finetune, buildings/2 is lopo's own fine-tune: not an input here)

Run:

    .venv/bin/python bench/review_round.py --version-dir DIR/repo-tanzania/buildings/1 \
        --place tanzania [--json out.json]

Review seconds are the API calls a reviewer's client makes (read the buildings, save the
verdicts), not a person's time at the map; retrain seconds run from the POST to the
finished run; the round is the two. One thing in the API path shapes the figure, and
the bench reports it rather than hiding it: the retrain's area is the bounding box of
the reviewed outlines, and training reads every imagery tile of the source in that box,
reviewed or not, as labelled. A third that is not one rectangle (or a mosaic with
imagery beyond the chips) adds unreviewed tiles as background. The bench prints the new
version's train/validation tile counts and how many scored tiles of the rest lie in the
box.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import mercantile
import shapely
from lopo import DATA, PLACES, thirds
from shapely.geometry import mapping, shape

from tilesight.jobs.evaluate import clip_labels, footprints_4326, polygon_pairs
from tilesight.jobs.plan import geodesic_area_km2
from tilesight.model.sources import Tile, load_footprints, open_imagery, prepare_tiles
from tilesight.registry import link_backend
from tilesight.settings import PROJECT_ROOT, Settings
from tilesight.stack import Stack, bring_up, isolated_settings

MODEL = "buildings"
REVIEW_BATCH = 250  # reviews per POST; the route takes at most 1000
MIN_OUTLINE_M2 = 1.0  # tilesight.jobs.reviews refuses smaller drawn outlines
INSET_DEG = 1e-7  # ~1 cm: the AOI never meets a neighbouring tile by rounding
POLL_S = 2.0


@dataclass
class LoadMeter:
    """The machine's 1-minute load average, sampled while waiting, so the figures say
    how busy the shared cores were when they were measured."""

    samples: list[float] = field(default_factory=list)

    def sample(self) -> None:
        self.samples.append(os.getloadavg()[0])

    def summary(self) -> dict[str, float]:
        s = self.samples or [os.getloadavg()[0]]
        return {"mean": round(sum(s) / len(s), 2), "max": round(max(s), 2)}


# -- the private stack ----------------------------------------------------------------


def layout_repo(version_dir: Path, repo: Path) -> None:
    """A model repository with the given version as `buildings/1`: the served model's
    config.pbtxt and backend beside it, and the version's model.py link to that backend."""
    model_dir = repo / MODEL
    model_dir.mkdir(parents=True)
    for name in ("config.pbtxt", "model.py"):
        shutil.copy(PROJECT_ROOT / "model_repo" / MODEL / name, model_dir / name)
    shutil.copytree(version_dir, model_dir / "1", ignore=shutil.ignore_patterns("model.py"))
    link_backend(model_dir / "1")


@contextmanager
def private_stack(version_dir: Path, data_root: Path) -> Iterator[Settings]:
    """Every component in a temporary home, with no demo imagery (the place is
    registered through the API instead) and rate limits out of the way."""
    home = Path(tempfile.mkdtemp(prefix="tilesight-bench-review-"))
    layout_repo(version_dir, home / "model_repo")
    (home / "no-demo").mkdir()
    settings = isolated_settings(
        home,
        model_repo=home / "model_repo",
        demo_data=home / "no-demo",
        data_roots=[data_root],
        rate_limits={k: [1e6, 1e6] for k in ("tiles", "predictions", "jobs", "default")},
    )
    stack = Stack(settings)
    try:
        bring_up(stack)  # migrations, then the model versions found in the repository
        yield settings
    finally:
        stack.stop()
        shutil.rmtree(home, ignore_errors=True)


# -- areas ----------------------------------------------------------------------------


def tiles_area(tiles: list[Tile]) -> shapely.Geometry:
    """The tiles' squares as one (multi)polygon, shrunk a hair so the job plans exactly
    these tiles; no gaps between them, so evaluation never cuts a label at a tile edge."""
    squares = [shapely.box(*mercantile.bounds(x, y, z)) for x, y, z in tiles]
    return shapely.union_all(squares).buffer(-INSET_DEG, join_style="mitre")


def rest_inside_reviewed_box(part: list[Tile], rest: list[Tile]) -> int:
    """Tiles of the rest inside the third's bounding box: the retrain takes the box of
    the reviewed outlines as its area, so these are read as unlabelled background."""
    box = shapely.box(*tiles_area(part).bounds)
    return sum(box.contains(shapely.box(*mercantile.bounds(*t)).centroid) for t in rest)


# -- the API calls --------------------------------------------------------------------


def register_place(client: httpx.Client, place: str) -> str:
    """POST /sources with the place's imagery; its labels.geojson sits beside it."""
    imagery, _ = PLACES[place]
    r = client.post(
        "/sources", json={"uri": str(imagery), "name": f"{place} (left out)", "id": place}
    )
    r.raise_for_status()
    return str(r.json()["id"])


def submit_job(client: httpx.Client, source: str, area: shapely.Geometry, version: int) -> str:
    body = {"source": source, "model": MODEL, "version": version, "aoi": mapping(area)}
    r = client.post("/jobs", json=body)
    r.raise_for_status()
    return str(r.json()["id"])


def wait_job(client: httpx.Client, job_id: str, load: LoadMeter) -> dict[str, Any]:
    while True:
        job = client.get(f"/jobs/{job_id}").json()
        if job["state"] in ("done", "failed", "cancelled"):
            break
        load.sample()
        time.sleep(POLL_S)
    if job["state"] != "done":
        raise SystemExit(f"job {job_id} ended {job['state']}: {job['error']}")
    return dict(job)


def job_wall_s(job: dict[str, Any]) -> float:
    """Seconds from the job's creation to its end, as the server recorded them."""
    start, end = (job[k].replace("Z", "+00:00") for k in ("created_at", "finished_at"))
    return round((datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds(), 1)


def evaluation(client: httpx.Client, job_id: str) -> dict[str, Any]:
    r = client.get(f"/jobs/{job_id}/evaluation")
    r.raise_for_status()
    return dict(r.json())


# -- the reviewer ---------------------------------------------------------------------


def drawable(geom: shapely.Geometry) -> bool:
    """What the review route accepts as a drawn outline (a valid polygon of >= 1 m²)."""
    return geom.is_valid and geodesic_area_km2(geom) * 1e6 >= MIN_OUTLINE_M2


def verdicts(
    features: list[dict[str, Any]], labels: list[shapely.Geometry]
) -> tuple[list[dict[str, Any]], int]:
    """The reviews a careful reviewer sends, and how many missed labels could not be
    drawn (slivers left by cutting a label to the area)."""
    predictions = [shape(f["geometry"]) for f in features]
    matched = polygon_pairs(predictions, labels)
    items = [
        {"building_id": f["id"], "verdict": "correct" if i in matched else "wrong"}
        for i, f in enumerate(features)
    ]
    missed = [g for j, g in enumerate(labels) if j not in set(matched.values())]
    added = [{"verdict": "added", "geometry": mapping(g)} for g in missed if drawable(g)]
    return items + added, len(missed) - len(added)


def review(
    client: httpx.Client, job_id: str, area: shapely.Geometry, labels_path: Path
) -> dict[str, Any]:
    """Review every building of the job against the labels; time the API calls (what a
    reviewer's client waits for) apart from the matching (the simulated person)."""
    api_s = 0.0
    t = time.perf_counter()
    r = client.get(f"/jobs/{job_id}/buildings.geojson")
    r.raise_for_status()
    api_s += time.perf_counter() - t
    features = r.json()["features"]
    labels = clip_labels(footprints_4326(labels_path), area)  # as evaluation counts them
    t = time.perf_counter()
    items, undrawable = verdicts(features, labels)
    match_s = time.perf_counter() - t
    for start in range(0, len(items), REVIEW_BATCH):
        t = time.perf_counter()
        r = client.post(f"/jobs/{job_id}/reviews", json={"reviews": items[start:][:REVIEW_BATCH]})
        api_s += time.perf_counter() - t
        r.raise_for_status()
    counts = r.json()["counts"]
    return {
        "predicted": len(features),
        "labels": len(labels),
        "counts": {k: counts.get(k, 0) for k in ("correct", "wrong", "added")},
        "undrawable_labels": undrawable,
        "review_api_s": round(api_s, 2),
        "match_s": round(match_s, 2),
        "batches": -(-len(items) // REVIEW_BATCH),
    }


# -- the retrain ----------------------------------------------------------------------


def start_retrain(client: httpx.Client, job_id: str) -> dict[str, Any]:
    """POST /jobs/{id}/retrain with no body: the fine-tune defaults, as the viewer sends."""
    r = client.post(f"/jobs/{job_id}/retrain")
    if r.status_code != 202:
        raise SystemExit(f"POST /jobs/{job_id}/retrain: {r.status_code} {r.text}")
    return dict(r.json())


def version_metadata(client: httpx.Client, model: str, version: int) -> dict[str, Any]:
    body = client.get(f"/models/{model}").json()
    found = next(v for v in body["versions"] if v["version"] == version)
    return dict(found["metadata"])


def retrain_split(client: httpx.Client, version: int) -> dict[str, Any]:
    """What the new version was trained and validated on, as its metadata records it:
    the retrain reads every tile of the source inside the reviewed box, so these counts
    show how much of it lay outside the reviewed third."""
    split = version_metadata(client, MODEL, version).get("split", {})
    keys = ("train_tiles", "val_tiles", "train_buildings", "val_buildings", "val_blocks")
    return {k: split.get(k) for k in keys}


def wait_run(client: httpx.Client, run: dict[str, Any], load: LoadMeter) -> dict[str, Any]:
    while run["state"] not in ("done", "failed", "cancelled"):
        load.sample()
        time.sleep(POLL_S * 2)
        run = client.get(run["url"]).json()
    if run["state"] != "done":
        raise SystemExit(f"training run {run['id']} ended {run['state']}: {run['error']}")
    return run


# -- the round ------------------------------------------------------------------------


def split_place(place: str) -> tuple[list[Tile], list[Tile], Path]:
    """The place's z19 tiles within its labels, split as bench/lopo.py splits them."""
    imagery, labels = PLACES[place]
    tiles = prepare_tiles(open_imagery(imagery), load_footprints(labels), 19)
    part, rest = thirds(tiles)
    return part, rest, labels


def run_round(client: httpx.Client, place: str, load: LoadMeter) -> dict[str, Any]:
    part, rest, labels = split_place(place)
    part_area, rest_area = tiles_area(part), tiles_area(rest)
    source = register_place(client, place)
    review_id = submit_job(client, source, part_area, 1)
    before_id = submit_job(client, source, rest_area, 1)
    review_job = wait_job(client, review_id, load)
    before_job = wait_job(client, before_id, load)

    reviewed = review(client, review_id, part_area, labels)
    t = time.perf_counter()
    run = start_retrain(client, review_id)
    run = wait_run(client, run, load)
    retrain_s = time.perf_counter() - t
    version = int(run["result_version"])

    trained_on = retrain_split(client, version)
    after_job = wait_job(client, submit_job(client, source, rest_area, version), load)
    before, after = evaluation(client, before_id), evaluation(client, after_job["id"])
    return {
        "place": place,
        "review_tiles": len(part),
        "rest_tiles": len(rest),
        "rest_tiles_in_reviewed_box": rest_inside_reviewed_box(part, rest),
        **reviewed,
        "retrain_s": round(retrain_s, 1),
        "round_s": round(reviewed["review_api_s"] + retrain_s, 1),
        "run": {k: run.get(k) for k in ("id", "epoch", "epochs", "validation", "result_version")},
        "new_version": version,
        "retrain_split": trained_on,
        "job_wall_s": {
            "review_third_v1": job_wall_s(review_job),
            "rest_v1": job_wall_s(before_job),
            f"rest_v{version}": job_wall_s(after_job),
        },
        "before": before,
        "after": after,
    }


def print_table(r: dict[str, Any], load: dict[str, float]) -> None:
    c = r["counts"]
    b, a = r["before"], r["after"]
    print(
        "\n| place | review third: tiles / labels / predicted | correct / wrong / added | "
        "rest: tiles / labels | F1 before (P / R) | F1 after (P / R) | review s | "
        "retrain s | round s | load 1-min mean / max |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {r['place']} | {r['review_tiles']} / {r['labels']} / {r['predicted']} | "
        f"{c['correct']} / {c['wrong']} / {c['added']} | {r['rest_tiles']} / {b['labels']} | "
        f"{b['f1']} ({b['precision']} / {b['recall']}) | "
        f"{a['f1']} ({a['precision']} / {a['recall']}) | {r['review_api_s']} | "
        f"{r['retrain_s']} | {r['round_s']} | {load['mean']} / {load['max']} |"
    )
    print(f"jobs (s, server clock): {r['job_wall_s']}")
    print(f"retrain: {r['run']['epoch']}/{r['run']['epochs']} epochs -> v{r['new_version']}")
    split = r["retrain_split"]
    print(
        f"retrain read {split['train_tiles']} train + {split['val_tiles']} validation tiles "
        f"({split['train_buildings']} / {split['val_buildings']} buildings); the review third "
        f"is {r['review_tiles']} tiles, and {r['rest_tiles_in_reviewed_box']} scored tiles "
        "of the rest lie in the reviewed box"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version-dir", type=Path, required=True, help="model.pt + metadata")
    parser.add_argument("--place", required=True, choices=sorted(PLACES))
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    started = time.perf_counter()
    load = LoadMeter()
    with (
        private_stack(args.version_dir.resolve(), DATA) as settings,
        httpx.Client(base_url=settings.api_url, timeout=600) as client,
    ):
        result = run_round(client, args.place, load)
    result["load_avg_1min"] = load.summary()
    result["cpus"] = os.cpu_count()
    result["wall_s"] = round(time.perf_counter() - started, 1)
    result["version_dir"] = str(args.version_dir)
    print_table(result, result["load_avg_1min"])
    print(f"({result['wall_s']:.0f} s in all, {result['cpus']} CPUs)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
