"""Training runs through the API and a real Celery worker: bad input refused before any
compute, and a tiny real run that exports a version Triton then serves."""

from __future__ import annotations

import time

import httpx
import pytest

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
    assert (settings.model_repo / "buildings" / str(version) / "metadata.json").exists()
    model = httpx.get(f"{api_url}/models/buildings").json()
    assert version in [v["version"] for v in model["versions"]]
    ready = httpx.get(
        f"http://{settings.triton_http_url}/v2/models/buildings/versions/{version}/ready"
    )
    assert ready.status_code == 200
