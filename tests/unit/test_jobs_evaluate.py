"""Object matching for job evaluation, and the GeoJSON feature text of the export."""

from __future__ import annotations

import json
import uuid

from shapely.geometry import MultiPolygon, box

from tilesight.jobs.evaluate import clip_labels, footprints_4326, match
from tilesight.jobs.export import feature_json


def test_match_counts_each_label_once_at_iou_half() -> None:
    labels = [box(0, 0, 10, 10), box(20, 0, 30, 10), box(40, 0, 50, 10)]
    predictions = [
        box(0, 0, 10, 9),  # IoU 0.9: found
        box(1, 0, 10, 10),  # also overlaps the first label, which is taken: a false positive
        box(20, 0, 24, 10),  # IoU 0.4: not found
        box(100, 100, 101, 101),  # nothing there
    ]
    result = match(predictions, labels)
    assert result["true_positives"] == 1
    assert result["precision"] == 0.25 and result["recall"] == round(1 / 3, 4)
    assert result["f1"] == round(2 * 0.25 * (1 / 3) / (0.25 + 1 / 3), 4)


def test_labels_mostly_outside_the_aoi_are_not_counted() -> None:
    aoi = MultiPolygon([box(0, 0, 10, 10)])
    kept = clip_labels([box(8, 0, 12, 2), box(9.5, 0, 20, 2), box(30, 30, 31, 31)], aoi)
    assert [k.bounds for k in kept] == [(8.0, 0.0, 10.0, 2.0)]


def test_feature_json_is_a_geojson_feature() -> None:
    job = uuid.uuid4()
    geometry = '{"type":"Polygon","coordinates":[[[0,0],[1,0],[1,1],[0,0]]]}'
    feature = json.loads(feature_json((7, geometry, 12.345, 0.87654, "buildings", 1, None), job))
    assert feature["id"] == 7 and feature["geometry"]["type"] == "Polygon"
    assert feature["properties"] == {
        "id": 7, "area_m2": 12.35, "confidence": 0.8765, "model": "buildings",
        "version": 1, "job": str(job),
    }  # fmt: skip


def test_job_labels_are_read_as_training_reads_them(tmp_path) -> None:
    """Jobs are scored against the same footprints a model trains on: reprojected from
    the file's CRS to EPSG:4326, and `building=no` left out."""
    square = [[500000, 9330000], [500020, 9330000], [500020, 9330020], [500000, 9330020]]
    ring = {"type": "Polygon", "coordinates": [[*square, square[0]]]}
    feats = [
        {"type": "Feature", "properties": {}, "geometry": ring},
        {"type": "Feature", "properties": {"building": "no"}, "geometry": ring},
    ]
    utm = {"type": "name", "properties": {"name": "EPSG:32737"}}
    doc = {"type": "FeatureCollection", "features": feats, "crs": utm}
    path = tmp_path / "labels.geojson"
    path.write_text(json.dumps(doc))
    (polygon,) = footprints_4326(path)
    west, south, east, north = polygon.bounds
    assert 38.99 < west < east < 39.01 and -6.07 < south < north < -6.05  # UTM 37S, near Dar
    assert abs((east - west) * 111_320 - 20) < 0.5  # 20 m wide, in degrees at the equator-ish
