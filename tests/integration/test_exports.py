"""A job's buildings as FlatGeobuf, GeoParquet, GeoPackage and OSM XML: the same buildings as
the GeoJSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import geopandas as gpd
import httpx
import osmium
import pyogrio
import shapely
from shapely.geometry import Polygon, shape

from tests.integration.jobs_support import features


def test_fgb_and_parquet_hold_the_geojson_buildings(
    client: httpx.Client, done_job: dict[str, Any], tmp_path: Path
) -> None:
    expected = {f["id"]: f for f in features(client, done_job["id"])}
    assert expected
    for ext, media in [
        ("fgb", "application/flatgeobuf"),
        ("parquet", "application/vnd.apache.parquet"),
        ("gpkg", "application/geopackage+sqlite3"),
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
    assert unknown.json()["detail"]["formats"] == ["geojson", "fgb", "parquet", "gpkg", "osm"]
    bad = client.get(f"/jobs/{job}/buildings.fgb", params={"bbox": "1,2,3"})
    assert bad.status_code == 400 and "bbox" in bad.json()["error"]
    empty = client.get(f"/jobs/{job}/buildings.parquet", params={"bbox": "0,0,0.001,0.001"})
    assert empty.status_code == 200


def osm_buildings(path: Path) -> tuple[list[tuple[dict[str, str], Any]], list[int]]:
    """The tagged buildings in an OSM file read with pyosmium, and every object id. Their
    geometry is assembled here: libosmium's location index skips negative (new) ids, which
    is all this file has, so pyosmium's own area builder would see no locations."""
    nodes: dict[int, tuple[float, float]] = {}
    ways: dict[int, tuple[list[int], dict[str, str]]] = {}
    relations: list[tuple[list[tuple[int, str]], dict[str, str]]] = []
    ids: list[int] = []
    for obj in osmium.FileProcessor(str(path)):
        ids.append(obj.id)
        if obj.is_node():
            nodes[obj.id] = (obj.location.lon, obj.location.lat)
        elif obj.is_way():
            ways[obj.id] = ([n.ref for n in obj.nodes], dict(obj.tags))
        elif obj.is_relation():
            relations.append(([(m.ref, m.role) for m in obj.members], dict(obj.tags)))

    def ring(way: int) -> list[tuple[float, float]]:
        return [nodes[r] for r in ways[way][0]]

    found = [(tags, Polygon(ring(w))) for w, (_, tags) in ways.items() if tags]
    for members, tags in relations:
        outer = [Polygon(ring(w)) for w, role in members if role == "outer"]
        inner = [Polygon(ring(w)) for w, role in members if role == "inner"]
        found.append((tags, shapely.union_all(outer).difference(shapely.union_all(inner))))
    return found, ids


def test_osm_xml_opens_in_pyosmium_with_new_tagged_buildings(
    client: httpx.Client, done_job: dict[str, Any], tmp_path: Path
) -> None:
    expected = features(client, done_job["id"])
    response = client.get(done_job["links"]["buildings_osm"])
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/vnd.osm+xml")
    assert 'upload="never"' in response.text[:200]  # raw model output: JOSM will not upload
    path = tmp_path / "b.osm"
    path.write_bytes(response.content)
    areas, ids = osm_buildings(path)
    assert ids and all(i < 0 for i in ids)  # new objects only: JOSM adds, never modifies
    assert len(areas) == len(expected)
    version = f"{done_job['model']} v{done_job['version']}"
    for tags, _ in areas:
        assert tags["building"] == "yes"
        assert tags["source"].startswith("Tilesight") and version in tags["source"]
    want = sum(shape(f["geometry"]).area for f in expected)
    got = sum(geom.area for _, geom in areas)
    assert abs(got - want) / want < 1e-4
