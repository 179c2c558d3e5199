"""Probabilities -> clean footprints: tracing, cleaning, clipping, orientation, seams."""

from __future__ import annotations

import mercantile
import numpy as np
import pytest
from shapely.geometry import MultiPolygon, box

from tilesight.jobs.merge import pixel_degrees, seam_lines
from tilesight.jobs.vectorize import (
    CleanParams,
    building_channel,
    mosaic_origin,
    stitch,
    vectorize,
)

Z, X0, Y0 = 19, 319292, 270960
TILES = [(X0 + dx, Y0 + dy, Z) for dy in range(2) for dx in range(2)]


def world() -> MultiPolygon:
    return MultiPolygon([box(-180, -85, 180, 85)])


def mosaic_with(*rects: tuple[int, int, int, int], value: float = 0.9) -> np.ndarray:
    m = np.zeros((512, 512), np.float32)
    for r0, c0, r1, c1 in rects:
        m[r0:r1, c0:c1] = value
    return m


def run(m: np.ndarray, aoi: MultiPolygon | None = None, **params) -> list:
    transform = mosaic_origin(TILES, 256)[4]
    return vectorize(m, transform, aoi or world(), CleanParams(**params))


def test_a_building_across_tile_edges_is_one_polygon_with_its_area() -> None:
    # 40 x 60 px straddling the corner where four tiles meet
    found = run(mosaic_with((236, 226, 276, 286)))
    assert len(found) == 1
    px_m = 0.2986 * np.cos(np.radians(6.05))  # ~ ground metres per pixel at z19, 6 S
    assert found[0].area_m2 == pytest.approx(40 * 60 * px_m**2, rel=0.03)
    assert found[0].confidence == pytest.approx(0.9, abs=1e-5)


def test_specks_go_and_small_holes_are_filled() -> None:
    m = mosaic_with((10, 10, 13, 13), (100, 100, 160, 160))
    m[120:122, 120:122] = 0.0  # a 2x2 px hole
    found = run(m)
    assert len(found) == 1
    assert len(found[0].geom.interiors) == 0


def test_exterior_ring_is_counter_clockwise_lon_lat() -> None:
    poly = run(mosaic_with((100, 100, 160, 200)))[0].geom
    assert poly.exterior.is_ccw
    west, south, east, north = mercantile.bounds(X0, Y0, Z)
    assert 39 < poly.bounds[0] < 40 and -7 < poly.bounds[1] < -6


def test_clipped_to_the_aoi() -> None:
    west, _, _, north = mercantile.bounds(X0, Y0, Z)
    px = pixel_degrees(Z)
    aoi = MultiPolygon([box(west, north - 300 * px, west + 130 * px, north)])
    found = run(mosaic_with((100, 100, 160, 200)), aoi=aoi)
    assert len(found) == 1
    assert found[0].geom.bounds[2] <= west + 130 * px + 1e-9


def test_threshold_and_square_off() -> None:
    assert run(mosaic_with((100, 100, 160, 200), value=0.4)) == []
    m = mosaic_with((100, 100, 160, 200))
    m[100:104, 100:104] = 0  # a notch: square-off restores the rectangle
    square = run(m, square=True)[0].geom
    assert len(square.exterior.coords) == 5


def test_two_chunks_trace_halves_that_meet_on_the_seam() -> None:
    m = mosaic_with((100, 200, 160, 300))
    left = stitch({t: m[(t[1] - Y0) * 256 : (t[1] - Y0 + 1) * 256, :256] for t in TILES[::2]},
                  TILES[::2], 256)  # fmt: skip
    halves = []
    for tiles in (TILES[::2], TILES[1::2]):
        sub = stitch(
            {t: m[(t[1] - Y0) * 256 : (t[1] - Y0 + 1) * 256,
                  (t[0] - X0) * 256 : (t[0] - X0 + 1) * 256] for t in tiles},
            tiles, 256,
        )  # fmt: skip
        halves += vectorize(sub, mosaic_origin(tiles, 256)[4], world(), CleanParams())
    assert left.shape == (512, 256) and len(halves) == 2
    seams = seam_lines({(X0, Y0), (X0 + 1, Y0)}, 1, Z)
    assert all(h.geom.distance(seams) < 1e-9 for h in halves)
    assert halves[0].geom.union(halves[1].geom).geom_type == "Polygon"


def test_building_channel_by_name() -> None:
    assert building_channel([{"name": "background"}, {"name": "building"}], 2) == 1
    assert building_channel(None, 1) == 0
