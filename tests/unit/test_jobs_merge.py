"""The seam merge against a real PostGIS, on hand-drawn pieces of buildings.

Each building is drawn in pixels of a 2 x 2 grid of 4 x 4-tile chunk blocks and cut
along the seams the way the chunks write it (one piece per chunk, its edge on the seam
line), so the tests say which pieces must become one feature and which must not.
"""

from __future__ import annotations

import uuid

import mercantile
import numpy as np
import pytest
import shapely
from geoalchemy2.shape import from_shape, to_shape
from shapely.geometry import MultiPolygon, Polygon, box
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from tilesight import tables
from tilesight.db import session_scope
from tilesight.jobs.merge import merge_seams
from tilesight.jobs.vectorize import TO_MERCATOR

Z, SIDE = 19, 4
X0, Y0 = 319288, 270956  # 4-aligned: the seams lie at pixel 1024 on both axes
SEAM = SIDE * 256
BLOCKS = {(X0 // SIDE + i, Y0 // SIDE + j) for i in (0, 1) for j in (0, 1)}
Px = tuple[float, float, float, float]  # col0, row0, col1, row1 from the grid's corner


def to_lonlat(col: float, row: float) -> tuple[float, float]:
    ll = mercantile.ul(X0 + col / 256, Y0 + row / 256, Z)
    return ll.lng, ll.lat


def to_px(lonlat: np.ndarray) -> np.ndarray:
    """EPSG:4326 -> pixels of the grid, through Web Mercator where pixels are square."""
    x, y = TO_MERCATOR.transform(lonlat[:, 0], lonlat[:, 1])
    n = 256 * 2**Z / mercantile.CE
    return np.column_stack(
        [(x + mercantile.CE / 2) * n - X0 * 256, (mercantile.CE / 2 - y) * n - Y0 * 256]
    )


def pieces(house: Px | Polygon) -> list[tuple[int, Polygon]]:
    """A house (a box or an outline in grid pixels) as the chunks write it: (chunk
    index, piece) per block it covers."""
    shape = house if isinstance(house, Polygon) else box(*house)
    out = []
    for index, (bx, by) in enumerate(sorted(BLOCKS, key=lambda b: (b[1], b[0]))):
        c0, r0 = (bx * SIDE - X0) * 256, (by * SIDE - Y0) * 256
        cut = shape.intersection(box(c0, r0, c0 + SEAM, r0 + SEAM))
        for part in getattr(cut, "geoms", [cut]):
            if isinstance(part, Polygon) and part.area > 0:
                out.append((index, Polygon([to_lonlat(c, r) for c, r in part.exterior.coords])))
    return out


def write(factory: sessionmaker[Session], *houses: Px | Polygon) -> uuid.UUID:
    """A job whose chunks wrote these houses, cut at the seams."""
    with session_scope(factory) as s:
        if s.get(tables.Source, "s") is None:
            s.add(tables.Source(id="s", name="s", kind="cog", uri="", original_uri="",
                                bounds=[0, 0, 1, 1], minzoom=0, maxzoom=22))  # fmt: skip
            s.flush()
        aoi = MultiPolygon(
            [Polygon([to_lonlat(c, r) for c, r in box(0, 0, 2 * SEAM, 2 * SEAM).exterior.coords])]
        )
        job = tables.Job(
            source_id="s", model_name="m", model_version=1, aoi=from_shape(aoi, 4326),
            zoom=Z, tiles_total=4 * SIDE**2, chunks_total=4, area_km2=1.0,
            params={"side": SIDE, "options": {}},
        )  # fmt: skip
        s.add(job)
        s.flush()
        for house in houses:
            for index, piece in pieces(house):
                s.add(tables.Building(
                    job_id=job.id, chunk_index=index, geom=from_shape(piece, 4326), area_m2=1.0,
                    confidence=0.9, model_name="m", model_version=1, merged=False,
                ))  # fmt: skip
        return job.id


def merge(factory: sessionmaker[Session], job_id: uuid.UUID) -> int:
    with session_scope(factory) as s:
        return merge_seams(s, job_id, blocks=BLOCKS, side=SIDE, zoom=Z, model="m", version=1)


def features(factory: sessionmaker[Session], job_id: uuid.UUID) -> list[Polygon]:
    """The job's buildings in grid pixels."""
    with factory() as s:
        rows = s.scalars(select(tables.Building.geom).where(tables.Building.job_id == job_id))
        return [shapely.transform(to_shape(g), to_px) for g in rows]


def areas(found: list[Polygon]) -> list[int]:
    return [round(p.area) for p in found]


def test_one_house_across_a_seam_becomes_one_feature_of_its_whole_area(factory) -> None:
    job = write(factory, (990, 100, 1060, 160))
    assert len(features(factory, job)) == 2
    assert merge(factory, job) == 1
    (house,) = features(factory, job)
    assert house.area == pytest.approx(70 * 60, abs=2)
    assert house.bounds == pytest.approx((990, 100, 1060, 160), abs=0.01)


@pytest.mark.parametrize(
    ("west", "east"),
    [
        pytest.param((160, 160), (160, 160), id="shared wall"),
        pytest.param((159, 161), (159, 161), id="2 px border band between them"),
        pytest.param((160, 160), (161, 161), id="wall 1 px lower east of the seam"),
        pytest.param((160, 160), (159, 159), id="wall 1 px higher east of the seam"),
    ],
)
def test_two_houses_sharing_a_wall_across_a_seam_stay_two(factory, west, east) -> None:
    """The wall runs across the seam; each chunk traced it on its own side (rows where
    the north house ends and the south one starts), a pixel off at worst."""
    north = box(990, 100, SEAM, west[0]).union(box(SEAM, 100, 1060, east[0]))
    south = box(990, west[1], SEAM, 220).union(box(SEAM, east[1], 1060, 220))
    job = write(factory, north, south)
    assert len(features(factory, job)) == 4
    assert merge(factory, job) == 2
    found = sorted(features(factory, job), key=lambda p: p.bounds[1])
    assert len(found) == 2, areas(found)
    for house, want in zip(found, (north, south), strict=True):
        assert house.bounds == pytest.approx(want.bounds, abs=0.01)
        assert house.area == pytest.approx(want.area, abs=2)


def test_a_house_on_the_corner_of_four_chunks_becomes_one_feature(factory) -> None:
    job = write(factory, (1000, 990, 1040, 1050))
    assert len(features(factory, job)) == 4
    assert merge(factory, job) == 1
    (house,) = features(factory, job)
    assert house.area == pytest.approx(40 * 60, abs=2)


def test_houses_of_two_chunks_touching_at_a_corner_stay_apart(factory) -> None:
    job = write(
        factory,
        (980, 100, SEAM, 150),  # chunk 0, its east wall on the seam
        (SEAM, 150, 1070, 200),  # chunk 1, touching the first only at (1024, 150)
        (950, 950, SEAM, SEAM),  # chunk 0, its corner on the corner of four chunks
        (SEAM, SEAM, 1080, 1090),  # chunk 3, diagonal to it, same corner
    )
    assert merge(factory, job) == 0
    assert sorted(areas(features(factory, job))) == [44 * 50, 46 * 50, 56 * 66, 74 * 74]


def test_a_rerun_of_the_merge_changes_nothing(factory) -> None:
    job = write(
        factory,
        (990, 100, 1060, 160),
        (990, 160, 1060, 220),
        (1000, 990, 1040, 1050),
        (SEAM, 300, 1070, 340),
    )
    assert merge(factory, job) == 3
    first = sorted(p.wkt for p in features(factory, job))
    assert merge(factory, job) == 0
    assert sorted(p.wkt for p in features(factory, job)) == first
