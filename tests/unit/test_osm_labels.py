"""An OSM extract works as training labels: the same buildings, tiles and chips as GeoJSON.

The extract is written at test time from the real Tanzania footprints (nodes + closed
ways, as OSM holds them), plus what real extracts also hold: a multipolygon building
with a courtyard, a `building=no` way and a closed way that is not a building.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import osmium
import pyproj
import pytest
import shapely
from shapely.geometry import mapping, shape

from tilesight.errors import InvalidInput, Unprocessable
from tilesight.imagery.sources import SourceInfo
from tilesight.model.data import ChipSpec, cache_chips
from tilesight.model.osm import read_osm
from tilesight.model.sources import ChipFolder, load_footprints, prepare_tiles
from tilesight.settings import Settings

DATA = Path(__file__).resolve().parents[1] / "data" / "buildings" / "tanzania"
SPEC = ChipSpec(zoom=19, buffer=32, jitter=16)

# Open ground inside the chips, found by searching for squares far from every footprint.
COURTYARD = shapely.Polygon(
    shapely.box(39.24189, -6.04259, 39.24204, -6.04244).exterior.coords,
    [shapely.box(39.241915, -6.042565, 39.241965, -6.042515).exterior.coords],
)
COURTYARD_ID = 1  # relation id; its untagged member ways are 10 (outer) and 11 (inner)
SHED = shapely.box(39.24212, -6.04320, 39.24222, -6.04310)  # tagged building=no
SHED_ID = 12
LANDUSE = shapely.box(39.2410, -6.0445, 39.2440, -6.0420)  # wider than all the chips
LANDUSE_ID = 13


def _labels() -> list[dict[str, Any]]:
    return json.loads((DATA / "labels.geojson").read_text())["features"]


def write_extract(path: Path, buildings: bool = True, landuse: bool = True) -> Path:
    """Nodes, then ways, then relations, each sorted by id, as real extracts are."""
    nodes: dict[int, tuple[float, float]] = {}
    ways: list[tuple[int, list[int], dict[str, str]]] = []

    def way(way_id: int, ring: Any, tags: dict[str, str]) -> None:
        ids = []
        for lon, lat in list(ring)[:-1]:
            ids.append(len(nodes) + 1)
            nodes[ids[-1]] = (lon, lat)
        ways.append((way_id, [*ids, ids[0]], tags))

    if buildings:
        for feat in _labels():
            (ring,) = feat["geometry"]["coordinates"]
            way(feat["properties"]["osm_id"], ring, {"building": "yes"})
        way(10, COURTYARD.exterior.coords, {})
        way(11, COURTYARD.interiors[0].coords, {})
        way(SHED_ID, SHED.exterior.coords, {"building": "no"})
    if landuse:
        way(LANDUSE_ID, LANDUSE.exterior.coords, {"landuse": "residential"})
    path.unlink(missing_ok=True)
    with osmium.SimpleWriter(str(path)) as writer:
        for node_id, location in sorted(nodes.items()):
            writer.add_node(osmium.osm.mutable.Node(id=node_id, location=location, version=1))
        for way_id, refs, tags in sorted(ways):
            writer.add_way(osmium.osm.mutable.Way(id=way_id, nodes=refs, tags=tags, version=1))
        if buildings:
            members = [("w", 10, "outer"), ("w", 11, "inner")]
            tags = {"type": "multipolygon", "building": "yes"}
            relation = osmium.osm.mutable.Relation(id=COURTYARD_ID, members=members, tags=tags)
            writer.add_relation(relation)
    return path


@pytest.fixture(scope="module")
def extract(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_extract(tmp_path_factory.mktemp("osm") / "tanzania.osm.pbf")


@pytest.fixture(scope="module")
def same_as_geojson(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The GeoJSON that says what the extract says: the labels plus the courtyard."""
    feats = [*_labels(), {"type": "Feature", "geometry": mapping(COURTYARD), "properties": {}}]
    path = tmp_path_factory.mktemp("geojson") / "labels.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return path


def _area_3857(geometry: dict) -> float:
    to_3857 = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True)
    return shapely.transform(
        shape(geometry), lambda c: np.column_stack(to_3857.transform(*c.T))
    ).area


def test_every_tagged_area_comes_back_once(extract: Path) -> None:
    feats = read_osm(extract)
    keys = sorted((f["properties"]["osm_type"], f["properties"]["osm_id"]) for f in feats)
    ways = sorted([f["properties"]["osm_id"] for f in _labels()] + [SHED_ID])
    assert keys == [("relation", COURTYARD_ID)] + [("way", i) for i in ways]
    assert all(f["properties"]["building"] in {"yes", "no"} for f in feats)


def test_areas_match_the_geojson_footprints(extract: Path) -> None:
    by_id = {f["properties"]["osm_id"]: f["geometry"] for f in read_osm(extract)}
    for feat in _labels():
        expected = _area_3857(feat["geometry"])
        got = _area_3857(by_id[feat["properties"]["osm_id"]])
        assert got == pytest.approx(expected, rel=1e-6), feat["properties"]["osm_id"]


def test_a_multipolygon_relation_keeps_its_hole(extract: Path) -> None:
    (courtyard,) = [f for f in read_osm(extract) if f["properties"]["osm_type"] == "relation"]
    assert courtyard["properties"]["building"] == "yes"
    (polygon,) = shape(courtyard["geometry"]).geoms
    assert len(polygon.interiors) == 1
    assert polygon.area == pytest.approx(COURTYARD.area, rel=1e-6)
    holed = [g for g in load_footprints(extract) if g.interiors]
    assert len(holed) == 1 and holed[0].area == pytest.approx(_area_3857(mapping(COURTYARD)))


def test_load_footprints_drops_building_no_and_other_areas(
    extract: Path, same_as_geojson: Path
) -> None:
    geoms = load_footprints(extract)
    expected = load_footprints(same_as_geojson)
    assert len(geoms) == len(expected) == len(_labels()) + 1
    assert sum(g.area for g in geoms) == pytest.approx(sum(g.area for g in expected), rel=1e-6)
    x, y = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True).transform(
        SHED.centroid.x, SHED.centroid.y
    )
    assert not any(g.contains(shapely.Point(x, y)) for g in geoms)  # the building=no shed


def _same_instances(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal instance maps up to numbering: an extract lists ways by id, GeoJSON not."""
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = {(int(i), int(j)) for i, j in zip(a[a > 0], b[b > 0], strict=True)}
    return len(pairs) == len({i for i, _ in pairs}) == len({j for _, j in pairs})


def test_an_extract_gives_the_same_tiles_and_chips_as_geojson(
    extract: Path, same_as_geojson: Path, tmp_path: Path
) -> None:
    reader = ChipFolder(DATA)
    from_osm, from_json = load_footprints(extract), load_footprints(same_as_geojson)
    tiles = prepare_tiles(reader, from_osm, SPEC.zoom)
    assert tiles == prepare_tiles(reader, from_json, SPEC.zoom) and len(tiles) == 4
    osm_chips = cache_chips(reader, from_osm, tiles, SPEC, tmp_path / "osm")
    json_chips = cache_chips(reader, from_json, tiles, SPEC, tmp_path / "json")
    for a, b in zip(osm_chips, json_chips, strict=True):
        assert a.tile == b.tile and a.buildings == b.buildings > 0
        with np.load(a.path) as za, np.load(b.path) as zb:
            assert np.array_equal(za["image"], zb["image"])
            assert np.array_equal(za["valid"], zb["valid"])
            assert _same_instances(za["instances"], zb["instances"]), a.tile


def test_an_osm_xml_file_reads_like_the_pbf(extract: Path, tmp_path: Path) -> None:
    xml = write_extract(tmp_path / "tanzania.osm")
    assert xml.read_text().lstrip().startswith("<?xml")
    as_xml = {f["properties"]["osm_id"]: shape(f["geometry"]) for f in read_osm(xml)}
    as_pbf = {f["properties"]["osm_id"]: shape(f["geometry"]) for f in read_osm(extract)}
    assert as_xml.keys() == as_pbf.keys()
    assert all(as_xml[k].equals(as_pbf[k]) for k in as_pbf)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.osm.pbf", None, "do not exist"),
        ("garbage.osm.pbf", b"not a protobuf " * 64, "not a readable OSM file"),
        ("empty.osm.pbf", b"", "not a readable OSM file"),
        ("broken.osm", b"<osm><node", "not a readable OSM file"),
        ("landuse.osm.pbf", "landuse only", "hold no areas tagged building=*"),
    ],
)
def test_unusable_extracts_say_what_to_change(
    tmp_path: Path, name: str, content: bytes | str | None, message: str
) -> None:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        write_extract(path, buildings=False)
    with pytest.raises(InvalidInput, match=message.replace("*", r"\*")) as err:
        load_footprints(path)  # the way training reads labels
    assert name in err.value.message


class _Session:
    """Stores nothing: create_run only adds and flushes its new row."""

    def add(self, row: object) -> None:
        self.row = row

    def flush(self) -> None:
        pass


@pytest.mark.parametrize("over_the_labels", [True, False])
def test_a_training_run_accepts_an_extract_as_labels_path(
    extract: Path, monkeypatch: pytest.MonkeyPatch, over_the_labels: bool
) -> None:
    from tilesight.training import service as training_runs
    from tilesight.training.spec import RunRequest

    bounds = (39.2417, -6.0437, 39.2432, -6.0422) if over_the_labels else (0.0, 0.0, 0.1, 0.1)
    source = SourceInfo(
        id="tanzania", name="tanzania", kind="chips", uri="x.tif", attribution="", crs="",
        bounds=bounds, minzoom=12, maxzoom=19, native_zoom=19, resolution_m=0.3,
        band_count=3, dtype="uint8", rescale=None, version="1",
    )  # fmt: skip
    monkeypatch.setattr(training_runs, "get_source", lambda session, source_id: source)
    settings = Settings(home=extract.parent, data_roots=[extract.parent])
    req = RunRequest(model="buildings", source="tanzania", labels_path=str(extract), labels=None)
    if not over_the_labels:
        with pytest.raises(Unprocessable, match="do not overlap"):
            training_runs.create_run(settings, _Session(), req)
        return
    row = training_runs.create_run(settings, _Session(), req)
    assert row.labels_path == str(extract.resolve()) and row.state == "queued"
