"""AOI validation and the tile/chunk plan of an area job."""

from __future__ import annotations

import mercantile
import pytest
from shapely.geometry import box, mapping

from tilesight.errors import TooLarge, Unprocessable
from tilesight.jobs.plan import chunk_side, make_chunks, parse_aoi, plan_job, tile_cover

Z = 19
ORIGIN = (319292, 270960)


def tiles_box(nx: int, ny: int, inset: float = 0.0):
    """A lon/lat box exactly over nx * ny tiles at zoom 19 (shrunk by `inset` degrees)."""
    west, north = mercantile.ul(ORIGIN[0], ORIGIN[1], Z)
    east, south = mercantile.ul(ORIGIN[0] + nx, ORIGIN[1] + ny, Z)
    return box(west + inset, south + inset, east - inset, north - inset)


def plan(aoi, footprint=None, **kw):
    footprint = footprint if footprint is not None else tiles_box(20, 20)
    args = dict(
        zoom=Z, source_id="s", source_footprint=footprint, chunk_tiles=16,
        max_area_km2=50.0, max_tiles=20_000,
    )  # fmt: skip
    args.update(kw)
    return plan_job(aoi, **args)


def test_feature_and_polygon_are_accepted() -> None:
    geom = mapping(tiles_box(2, 2, 1e-6))
    assert parse_aoi(geom).equals(parse_aoi({"type": "Feature", "geometry": geom}))


def test_bow_tie_is_refused_with_the_reason() -> None:
    bow = {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}
    with pytest.raises(Unprocessable) as err:
        parse_aoi(bow)
    assert "Self-intersection" in err.value.message


@pytest.mark.parametrize(
    "aoi",
    [
        {"type": "Point", "coordinates": [0, 0]},
        {"type": "Polygon", "coordinates": [[[0, 0], [1]]]},
        {"type": "Polygon", "coordinates": [[[500, 0], [501, 0], [501, 1], [500, 0]]]},
        "not an object",
    ],
)
def test_malformed_aoi_is_unprocessable(aoi) -> None:
    with pytest.raises(Unprocessable):
        parse_aoi(aoi)


def test_tile_cover_is_exact_for_a_tile_aligned_box() -> None:
    tiles = tile_cover(parse_aoi(mapping(tiles_box(3, 2, 1e-7))), Z)
    assert len(tiles) == 6
    assert tiles[0] == (ORIGIN[0], ORIGIN[1], Z)


def test_chunks_are_aligned_blocks_of_neighbours() -> None:
    tiles = [(x, y, Z) for x in range(2, 10) for y in range(0, 5)]
    chunks = make_chunks(tiles, chunk_side(16))
    assert sum(len(c.tiles) for c in chunks) == len(tiles)
    for c in chunks:
        assert all((t[0] // 4, t[1] // 4) == c.block for t in c.tiles)
    assert [c.index for c in chunks] == list(range(len(chunks)))


def test_outside_the_source_is_unprocessable() -> None:
    far = box(10, 10, 10.001, 10.001)
    with pytest.raises(Unprocessable) as err:
        plan(mapping(far))
    assert "outside source" in err.value.message


def test_area_and_tile_limits_name_the_limit() -> None:
    with pytest.raises(TooLarge) as err:
        plan(mapping(tiles_box(8, 8)), max_area_km2=0.01)
    assert err.value.detail["limit_km2"] == 0.01
    with pytest.raises(TooLarge) as err:
        plan(mapping(tiles_box(8, 8, 1e-7)), max_tiles=10)
    assert err.value.detail["limit_tiles"] == 10
    circle = tiles_box(8, 8).centroid.buffer(0.001, quad_segs=64)  # 257 vertices
    with pytest.raises(TooLarge, match="257 vertices") as err:
        plan(mapping(circle), max_vertices=100)
    assert err.value.detail["limit_vertices"] == 100
    assert plan(mapping(circle), max_vertices=300).tiles


def test_plan_cuts_the_aoi_to_the_source() -> None:
    p = plan(mapping(tiles_box(8, 8, 1e-7)), footprint=tiles_box(4, 4))
    assert len(p.tiles) == 16 and len(p.chunks) == 1
    assert 0 < p.area_km2 < 0.1


WORLD = box(-180, -85.0511, 180, 85.0511)  # the footprint of a world-wide (XYZ) source


@pytest.mark.parametrize(
    "ring",
    [
        [[-180, 0], [180, 0], [180, 1], [-180, 1], [-180, 0]],  # exactly 360°: area reads 0
        [[170, 0], [-170, 0], [-170, 1], [170, 1], [170, 0]],  # across the antimeridian
    ],
)
def test_a_ring_wider_than_half_the_globe_is_refused(ring) -> None:
    with pytest.raises(Unprocessable, match="antimeridian") as err:
        plan({"type": "Polygon", "coordinates": [ring]}, footprint=WORLD, max_area_km2=1e9)
    assert err.value.detail["limit_degrees"] == 180


def test_an_aoi_split_at_the_antimeridian_is_accepted() -> None:
    east = box(179.9999, 0, 180, 0.0001)
    west = box(-180, 0, -179.9999, 0.0001)
    aoi = {"type": "MultiPolygon", "coordinates": [mapping(east)["coordinates"],
                                                   mapping(west)["coordinates"]]}  # fmt: skip
    assert parse_aoi(aoi).geoms[0].bounds[2] == 180
    assert plan(aoi, footprint=WORLD).tiles


@pytest.mark.parametrize(
    "band",
    [
        box(-179, 40, 0.5, 40.01),  # a 0.01° band half around the world: millions of tiles
        box(-179.9, 80, 0, 80.0001),  # thinner and further north: under the area limit
    ],
)
def test_a_thin_world_band_is_refused_within_a_second(band) -> None:
    import time

    start = time.process_time()  # CPU seconds: what the check costs, however busy the box
    with pytest.raises(TooLarge) as err:
        plan(mapping(band), footprint=WORLD, max_area_km2=1e6)
    assert time.process_time() - start < 1.0
    assert err.value.detail["limit_tiles"] == 20_000
    assert err.value.detail["tiles_at_least"] > 20_000


def test_the_tile_count_stops_at_the_limit() -> None:
    """A cover just over the limit is refused; one at the limit is planned in full."""
    aoi = parse_aoi(mapping(tiles_box(10, 10, 1e-7)))
    assert len(tile_cover(aoi, Z, limit=100)) == 100
    with pytest.raises(TooLarge):
        tile_cover(aoi, Z, limit=99)


@pytest.mark.parametrize(
    ("position", "field"),
    [
        ([float("nan"), 0], "aoi.coordinates[0][1][0]"),
        ([0, float("inf")], "aoi.coordinates[0][1][1]"),
        ([0, 10**400], "aoi.coordinates[0][1][1]"),
        ([True, 0], "aoi.coordinates[0][1][0]"),
        (["0", 0], "aoi.coordinates[0][1][0]"),
        ([0], "aoi.coordinates[0][1]"),
    ],
)
def test_a_bad_coordinate_is_named(position, field) -> None:
    ring = [[0, 0], position, [1, 1], [0, 1], [0, 0]]
    with pytest.raises(Unprocessable) as err:
        parse_aoi({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}})
    assert err.value.detail["field"] == field.replace("aoi.", "aoi.geometry.")
