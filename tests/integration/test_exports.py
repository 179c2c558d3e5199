"""A job's buildings as FlatGeobuf and GeoParquet: the same buildings as the GeoJSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import geopandas as gpd
import httpx
import pyogrio
from shapely.geometry import shape

from tests.integration.jobs_support import features


def test_fgb_and_parquet_hold_the_geojson_buildings(
    client: httpx.Client, done_job: dict[str, Any], tmp_path: Path
) -> None:
    expected = {f["id"]: f for f in features(client, done_job["id"])}
    assert expected
    for ext, media in [
        ("fgb", "application/flatgeobuf"),
        ("parquet", "application/vnd.apache.parquet"),
    ]:
        link = done_job["links"][f"buildings_{ext}"]
        response = client.get(link)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == media
        assert int(response.headers["content-length"]) == len(response.content)
        assert response.headers["cache-control"] == "private, max-age=3600"
        path = tmp_path / f"b.{ext}"
        path.write_bytes(response.content)
        frame = gpd.read_parquet(path) if ext == "parquet" else pyogrio.read_dataframe(path)
        assert frame.crs.to_epsg() == 4326
        assert len(frame) == len(expected), ext
        for row in frame.itertuples():
            twin = expected[int(row.id)]
            assert row.area_m2 == twin["properties"]["area_m2"]
            assert row.model == twin["properties"]["model"]
            assert row.geometry.equals_exact(shape(twin["geometry"]), 1e-7), (ext, row.id)
        again = client.get(link, headers={"If-None-Match": response.headers["etag"]})
        assert again.status_code == 304


def test_bbox_and_unknown_format(client: httpx.Client, done_job: dict[str, Any]) -> None:
    job = done_job["id"]
    unknown = client.get(f"/jobs/{job}/buildings.shp")
    assert unknown.status_code == 404
    assert unknown.json()["detail"]["formats"] == ["geojson", "fgb", "parquet"]
    bad = client.get(f"/jobs/{job}/buildings.fgb", params={"bbox": "1,2,3"})
    assert bad.status_code == 400 and "bbox" in bad.json()["error"]
    empty = client.get(f"/jobs/{job}/buildings.parquet", params={"bbox": "0,0,0.001,0.001"})
    assert empty.status_code == 200
