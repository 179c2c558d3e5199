"""Training runs through the API and a real Celery worker: bad input refused before any
compute, and a tiny real run that exports a version Triton then serves."""

from __future__ import annotations

import json
import time

import httpx
import mercantile
import pytest
import shapely
from shapely.geometry import shape

from tilesight.settings import Settings

NAIROBI_LABELS = "buildings/nairobi/labels.geojson"


def labels_path(settings: Settings, name: str = NAIROBI_LABELS) -> str:
    return str(settings.demo_data / name)


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"source": "nowhere"}, 404, "no imagery source"),
        ({"source": "atlanta"}, 422, "8-bit RGB"),
        ({"source": "tanzania"}, 422, "do not overlap"),
        (
            {"source": "nairobi", "labels": {"type": "FeatureCollection", "features": []}},
            400,
            "no building polygons",
        ),  # fmt: skip
        ({"source": "nairobi", "epochs": 0}, 422, "epochs"),
        ({"source": "nairobi", "lr": 5}, 422, "lr"),
        ({"source": "nairobi", "labels_path": "/etc/passwd"}, 400, "outside"),
        ({"source": "nairobi", "init_from_version": 99}, 404, "no version 99"),
        ({"source": "nairobi", "init_from_version": 1, "width": 16}, 400, "cannot start from"),
    ],
)
def test_bad_requests_are_refused_before_queueing(
    api_url: str, settings: Settings, body: dict, status: int, message: str
) -> None:
    if "labels" not in body and "labels_path" not in body:
        body = {**body, "labels_path": labels_path(settings)}
    before = httpx.get(f"{api_url}/training-runs").json()
    response = httpx.post(f"{api_url}/training-runs", json=body)
    assert response.status_code == status, response.text
    assert message in response.text
    assert httpx.get(f"{api_url}/training-runs").json() == before


@pytest.mark.slow
def test_a_tiny_run_trains_exports_and_is_served(api_url: str, settings: Settings) -> None:
    body = {
        "source": "nairobi",
        "labels_path": labels_path(settings),
        "epochs": 2,
        "batch_size": 4,
        "width": 4,
        "depth": 3,
        "max_steps_per_epoch": 2,
    }
    created = httpx.post(f"{api_url}/training-runs", json=body)
    assert created.status_code == 202, created.text
    url = f"{api_url}{created.json()['url']}"
    deadline = time.monotonic() + 480
    seen_progress = set()
    while True:
        run = httpx.get(url).json()
        seen_progress.add(run["progress"])
        if run["state"] in ("done", "failed", "cancelled") or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert run["state"] == "done", run
    assert run["progress"] == 100.0
    assert [e["epoch"] for e in run["history"]] == [1, 2]
    last = run["history"][-1]
    assert {"pixel_iou", "f1", "object_f1"} <= set(last.get("tune") or last["val"])
    version = run["result_version"]
    meta = json.loads((settings.model_repo / "buildings" / str(version) / "metadata.json")
                      .read_text())  # fmt: skip
    # the building threshold is the tune split's best object F1, never validation's
    choice = run["validation"]["threshold"]
    assert choice["chosen_on"] == "tune split" and len(choice["object_f1_by_threshold"]) > 1
    assert choice["value"] == meta["threshold"]
    best = max(choice["object_f1_by_threshold"].values())
    assert choice["object_f1_by_threshold"][f"{meta['threshold']:g}"] == best
    # and at that threshold the watershed depth, "none" among the candidates
    depths = choice["object_f1_by_peak_depth"]
    assert depths["none"] == best and len(depths) > 1
    assert meta["peak_depth"] == choice["peak_depth"]
    chosen = "none" if meta["peak_depth"] is None else f"{meta['peak_depth']:g}"
    assert depths[chosen] == max(depths.values())
    model = httpx.get(f"{api_url}/models/buildings").json()
    assert version in [v["version"] for v in model["versions"]]
    ready = httpx.get(
        f"http://{settings.triton_http_url}/v2/models/buildings/versions/{version}/ready"
    )
    assert ready.status_code == 200


def _inline(features: list[dict]) -> dict:
    return {"type": "FeatureCollection", "features": features}


NAIROBI_SQUARE = {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon",
                  "coordinates": [[[36.8, -1.3], [36.8001, -1.3], [36.8001, -1.2999],
                                   [36.8, -1.2999], [36.8, -1.3]]]}}  # fmt: skip
FAR_RING = [[0, 0], [0.001, 0], [0.001, 0.001], [0, 0.001], [0, 0]]
FAR_SQUARE = {**NAIROBI_SQUARE, "geometry": {"type": "Polygon", "coordinates": [FAR_RING]}}


def test_refused_runs_leave_no_labels_on_disk_and_no_server_paths(
    api_url: str, settings: Settings
) -> None:
    folder = settings.home / "labels"
    before = sorted(folder.glob("*")) if folder.exists() else []
    probes = [
        {"source": "nairobi", "labels": _inline([])},  # no polygons
        {"source": "nairobi", "labels": _inline([FAR_SQUARE])},  # not over the imagery
        {"source": "nairobi", "labels": {"type": "Point", "coordinates": [36.8, -1.3]}},
        {"source": "nairobi", "labels": _inline([NAIROBI_SQUARE]), "init_from_version": 99},
        {"source": "nairobi", "labels": _inline([NAIROBI_SQUARE]), "classes": ["a", "b"]},
    ] * 4
    server_paths = [str(settings.home), str(settings.model_repo), str(settings.demo_data)]
    for body in probes:
        response = httpx.post(f"{api_url}/training-runs", json=body)
        assert 400 <= response.status_code < 500, response.text
        assert not any(p in response.text for p in server_paths), response.text
    after = sorted(folder.glob("*")) if folder.exists() else []
    assert after == before


@pytest.mark.parametrize(
    ("labels_path", "needle"),
    [
        ("/etc/passwd", "outside"),
        ("data/no-such.geojson", "no such file"),
    ],
)
def test_path_errors_name_the_users_input_not_the_servers(
    api_url: str, settings: Settings, labels_path: str, needle: str
) -> None:
    response = httpx.post(
        f"{api_url}/training-runs", json={"source": "nairobi", "labels_path": labels_path}
    )
    assert response.status_code == 400, response.text
    assert needle in response.text
    for root in settings.data_roots:
        assert str(root) not in response.text


@pytest.mark.parametrize(
    "labels_path",
    ["a\x00b.geojson", "x" * 256 + ".geojson", "data/" + "é" * 128 + "/labels.geojson"],
)
def test_a_path_no_file_system_takes_is_a_422_naming_labels_path(
    api_url: str, labels_path: str
) -> None:
    response = httpx.post(
        f"{api_url}/training-runs", json={"source": "nairobi", "labels_path": labels_path}
    )
    assert response.status_code == 422, response.text
    assert "labels_path" in response.json()["error"]


@pytest.mark.parametrize("value", ["NaN", "Infinity", "1e400", "true"])
def test_inline_label_coordinates_must_be_finite_numbers(
    api_url: str, settings: Settings, value: str
) -> None:
    body = (
        '{"source": "nairobi", "labels": {"type": "FeatureCollection", "features": ['
        '{"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", '
        f'"coordinates": [[[36.8, -1.3], [{value}, -1.3], [36.8, -1.29], [36.8, -1.3]]]}}}}'
        "]}}"
    )
    response = httpx.post(
        f"{api_url}/training-runs", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"]["field"] == "labels.features[0].geometry.coordinates[0][1][0]"


def _two_tiles_of_nairobi(settings: Settings) -> tuple[list[tuple[int, int, int]], dict]:
    """Two neighbouring z19 chips of the demo Nairobi imagery and the footprints on them:
    the small labelled area a user of a new place would give."""
    folder = settings.demo_data / "buildings" / "nairobi"
    chips = {tuple(int(v) for v in p.stem.split("-")[1:]) for p in folder.glob("OAM-*-19.png")}
    x, y, z = next(t for t in sorted(chips) if (t[0] + 1, t[1], t[2]) in chips)
    tiles = [(x, y, z), (x + 1, y, z)]
    area = shapely.union_all([shapely.box(*mercantile.bounds(*t)) for t in tiles])
    features = json.loads((folder / "labels.geojson").read_text())["features"]
    inside = [f for f in features if shape(f["geometry"]).intersects(area)]
    return tiles, {"type": "FeatureCollection", "features": inside}


@pytest.mark.slow
def test_a_fine_tune_on_two_tiles_runs_with_its_own_defaults_and_is_served(
    api_url: str, settings: Settings
) -> None:
    """A user gives a source, a few buildings and the version to start from, nothing else:
    the run picks validation for a small area itself, says what it used, and its version
    is served beside the one it started from."""
    tiles, labels = _two_tiles_of_nairobi(settings)
    assert len(labels["features"]) >= 5, "the two demo tiles should hold some buildings"
    base = httpx.get(f"{api_url}/models/buildings").json()["promoted_version"]
    body = {"source": "nairobi", "labels": labels, "init_from_version": base}
    created = httpx.post(f"{api_url}/training-runs", json=body)
    assert created.status_code == 202, created.text
    url = f"{api_url}{created.json()['url']}"
    deadline = time.monotonic() + 480
    while (run := httpx.get(url).json())["state"] not in ("done", "failed", "cancelled"):
        assert time.monotonic() < deadline, run
        time.sleep(1)
    assert run["state"] == "done", run
    params = run["params"]
    assert params["epochs"] == 20 and params["lr"] == 5e-4  # the fine-tune defaults
    assert params["freeze_encoder_epochs"] == 2 and params["freeze_batchnorm"] is True
    validation = run["validation"]
    assert validation and "validation split" in validation["best_epoch_chosen_on"], validation
    assert validation["best_epoch_chosen_on"].endswith("the starting weights among the candidates)")
    version = run["result_version"]
    meta = json.loads((settings.model_repo / "buildings" / str(version) / "metadata.json")
                      .read_text())  # fmt: skip
    # no tune split in two tiles: the split holds back finer blocks, one with a building
    # in it (not the empty or imagery-less tiles the labels' extent also covers), leaves
    # most buildings to train on, and the cut is chosen there, as the epoch is
    split = meta["split"]
    assert split["block_zoom"] == 19 and split["block_zoom_requested"] == 18, split
    assert 0 < split["val_buildings"] < split["train_buildings"], split
    assert validation["val_tiles"] == split["val_tiles"] <= split["train_tiles"], validation
    assert validation["val_buildings"] == split["val_buildings"], validation  # the run says
    cut = validation["threshold"]
    assert cut["chosen_on"].startswith("validation split"), cut
    assert (meta["threshold"], meta["peak_depth"]) == (cut["value"], cut["peak_depth"])
    assert max(cut["object_f1_by_threshold"].values()) > 0, cut
    seeded = meta["hyperparameters"]["init_from"]
    assert seeded["version_dir"].endswith(f"buildings/{base}") and seeded["tensors_loaded"] > 0
    ready = httpx.get(
        f"http://{settings.triton_http_url}/v2/models/buildings/versions/{version}/ready"
    )
    assert ready.status_code == 200
    x, y, z = tiles[0]
    tile = httpx.get(f"{api_url}/predictions/buildings/nairobi/{z}/{x}/{y}.png?version={version}")
    assert tile.status_code == 200 and tile.headers["content-type"] == "image/png", tile.text
