"""Multi-class training runs through the API: every bad combination of the class fields
is refused with a 4xx that says what to change before anything is queued, and a tiny
real run of three classes trains on a Celery worker, becomes a new model of its own and
is served with its class colours.

The labels are the demo Tanzania footprints as class polygons ("building", and a
"yard" polygon 2 m wider around each) and a class raster in Web Mercator, written under
the test home's data root.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import rasterio
import shapely
from PIL import Image
from rasterio.features import rasterize
from rasterio.transform import from_origin
from shapely.geometry import mapping, shape

from tilesight.model.sources import load_footprints
from tilesight.overlay import hex_rgb
from tilesight.settings import Settings

NAMES = ["background", "building", "yard"]
MODEL = "landcover-run"


@pytest.fixture(scope="module")
def label_files(settings: Settings) -> dict[str, str]:
    """Class polygons, a clean class raster and one holding a value no class has."""
    folder = settings.home / "data" / "multiclass"
    folder.mkdir(parents=True, exist_ok=True)
    footprints = settings.demo_data / "buildings" / "tanzania" / "labels.geojson"
    features = json.loads(footprints.read_text())["features"]
    tagged = [
        {
            "type": "Feature",
            "properties": {"class": name},
            "geometry": mapping(shape(f["geometry"]).buffer(grow)),
        }  # fmt: skip
        for f in features
        for name, grow in (("building", 0.0), ("yard", 2e-5))  # about 2 m
    ]
    polygons = folder / "classes.geojson"
    polygons.write_text(json.dumps({"type": "FeatureCollection", "features": tagged}))

    geoms = load_footprints(footprints)  # EPSG:3857
    west, south, east, north = shapely.total_bounds(geoms)
    transform = from_origin(west - 20, north + 20, 1.0, 1.0)
    size = (int(north - south) + 40, int(east - west) + 40)
    values = rasterize([(g, 1) for g in geoms], out_shape=size, transform=transform)
    out = {"polygons": str(polygons)}
    for name, stray in (("raster", None), ("stray", 9)):
        band = values.astype("uint8")
        if stray is not None:
            band[size[0] // 2 : size[0] // 2 + 6, size[1] // 2 : size[1] // 2 + 6] = stray
        path = folder / f"{name}.tif"
        profile = dict(driver="GTiff", width=size[1], height=size[0], count=1, dtype="uint8")
        with rasterio.open(path, "w", crs="EPSG:3857", transform=transform, **profile) as dst:
            dst.write(band, 1)
        out[name] = str(path)
    return out


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"classes": NAMES, "border": True}, 400, "leave out `border`"),
        ({"classes": NAMES, "class_weights": [1, 2]}, 400, "2 class_weights for 3 classes"),
        ({"class_weights": [1, 2]}, 400, "give `classes`"),
        ({"ignore_value": 255, "labels": "raster"}, 400, "give `classes`"),
        (
            {"classes": ["background", "water", "trees"]},
            400,
            "values found: ['building', 'yard']",
        ),
        ({"classes": NAMES, "class_property": "kind"}, 400, "`kind`"),
        ({"classes": ["background", "yard", "Yard"]}, 400, "['yard'] appear twice"),
        ({"classes": ["building", "yard"]}, 400, "name it 'background'"),
        ({"classes": ["background"]}, 422, "classes"),
        ({"classes": ["background", " "]}, 422, "classes.1"),
        ({"classes": NAMES, "class_weights": [1, -1, 1]}, 422, "class_weights.1"),
        ({"classes": NAMES, "class_weights": [0, 0, 0]}, 400, "at least one is above 0"),
        (
            {"classes": NAMES, "ignore_value": 1, "labels": "raster"},
            400,
            "ignore_value 1 is the value of class 'building'",
        ),
        ({"classes": NAMES, "ignore_value": 300, "labels": "raster"}, 422, "ignore_value"),
        ({"classes": NAMES, "labels": "stray"}, 400, "class value(s) [9]"),
        ({"labels": "raster"}, 400, "name them in `classes`"),
        ({"classes": NAMES, "model": "buildings"}, 409, "makes another model"),
        ({"classes": NAMES, "width": 3}, 422, "width"),
    ],
)
def test_bad_class_requests_are_refused_before_queueing(
    api_url: str, label_files: dict[str, str], body: dict, status: int, message: str
) -> None:
    labels = label_files[body.pop("labels", "polygons")]
    body = {"model": MODEL, "source": "tanzania", "labels_path": labels, **body}
    before = httpx.get(f"{api_url}/training-runs").json()
    response = httpx.post(f"{api_url}/training-runs", json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert httpx.get(f"{api_url}/training-runs").json() == before


def test_classes_appear_in_the_openapi_schema(api_url: str) -> None:
    schema = httpx.get(f"{api_url}/openapi.json").json()["components"]["schemas"]["RunCreate"]
    fields = schema["properties"]
    assert {"classes", "class_property", "class_weights", "ignore_value"} <= set(fields)
    assert fields["classes"]["minItems"] == 2 and fields["classes"]["maxItems"] == 32
    assert fields["ignore_value"]["anyOf"][0]["maximum"] == 255


@pytest.mark.slow
def test_a_tiny_multiclass_run_becomes_a_served_model(
    api_url: str, settings: Settings, label_files: dict[str, str]
) -> None:
    assert not (settings.model_repo / MODEL).exists()
    body = {
        "model": MODEL, "source": "tanzania", "labels_path": label_files["polygons"],
        "classes": NAMES, "class_weights": [0.5, 1, 2], "epochs": 2, "batch_size": 4,
        "width": 4, "depth": 3, "max_steps_per_epoch": 2,
    }  # fmt: skip
    created = httpx.post(f"{api_url}/training-runs", json=body)
    assert created.status_code == 202, created.text
    assert created.json()["params"]["classes"] == NAMES
    url = f"{api_url}{created.json()['url']}"
    deadline = time.monotonic() + 480
    while True:
        run = httpx.get(url).json()
        if run["state"] in ("done", "failed", "cancelled") or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert run["state"] == "done", run
    last = run["history"][-1]
    assert {"iou_building", "iou_yard", "pixel_iou", "accuracy"} <= set(
        last.get("tune") or last["val"]
    )
    version = run["result_version"]

    # a model of its own, registered and loaded without anyone writing its config
    assert (settings.model_repo / MODEL / "config.pbtxt").is_file()
    detail = httpx.get(f"{api_url}/models/{MODEL}").json()
    (entry,) = [v for v in detail["versions"] if v["version"] == version]
    classes = entry["metadata"]["classes"]
    assert [c["name"] for c in classes] == NAMES
    assert entry["metadata"]["hyperparameters"]["loop"]["class_weights"] == [0.5, 1, 2]
    ready = httpx.get(
        f"http://{settings.triton_http_url}/v2/models/{MODEL}/versions/{version}/ready"
    )
    assert ready.status_code == 200

    tile = f"{api_url}/predictions/{MODEL}/tanzania/19/319295/270961.png"
    response = httpx.get(tile, timeout=120)
    assert response.status_code == 200, response.text
    rgba = np.asarray(Image.open(io.BytesIO(response.content)))
    painted = {tuple(int(v) for v in px) for px in rgba[rgba[..., 3] > 0][:, :3]}
    assert painted <= {hex_rgb(c["color"]) for c in classes[1:]}

    # the building model is untouched, and a second run must keep these classes
    again = httpx.post(
        f"{api_url}/training-runs", json={**body, "classes": NAMES[:2], "class_weights": None}
    )
    assert again.status_code == 409 and "makes another model" in again.json()["error"]
    assert Path(settings.model_repo / "buildings" / "config.pbtxt").is_file()
