"""Chunk writes and the seam merge against a real PostGIS, with a fake predictor.

Only the model is faked (a synthetic probability map), so the idempotent writes, the
progress count, the last-chunk decision and the merge SQL run for real. The test gets
its own PostgreSQL (no Triton, no worker), started through the stack launcher.
"""

from __future__ import annotations

import uuid

import mercantile
import numpy as np
import pytest
from shapely.geometry import box, mapping
from sqlalchemy import func, select

from tilesight import tables
from tilesight.db import session_scope
from tilesight.jobs import chunk
from tilesight.jobs.plan import Tile, plan_job
from tilesight.model.data import border_mask

Z, X0, Y0 = 19, 319290, 270958  # a 2x2-block grid of 4x4-tile chunks, aligned to 4


def building_map(tiles: list[Tile]) -> dict[Tile, np.ndarray]:
    """A synthetic world: one 60 x 100 px building across the vertical seam at x = X0 + 2
    (block edge, 4-aligned), plus one building wholly inside the first chunk."""
    out = {}
    for x, y, z in tiles:
        p = np.zeros((2, 256, 256), np.float32)
        gx0, gy0 = (x - X0) * 256, (y - Y0) * 256
        for r0, c0, r1, c1 in ((300, 2 * 256 - 50, 360, 2 * 256 + 50), (100, 100, 150, 160)):
            rr = slice(max(r0 - gy0, 0), max(min(r1 - gy0, 256), 0))
            cc = slice(max(c0 - gx0, 0), max(min(c1 - gx0, 256), 0))
            p[1, rr, cc] = 0.95
        out[(x, y, z)] = p
    return out


def make_job(factory) -> uuid.UUID:
    west, north = mercantile.ul(X0, Y0, Z)
    east, south = mercantile.ul(X0 + 4, Y0 + 2, Z)
    aoi = box(west + 1e-7, south + 1e-7, east - 1e-7, north - 1e-7)
    plan = plan_job(
        mapping(aoi), zoom=Z, source_id="s", source_footprint=aoi.buffer(1),
        chunk_tiles=16, max_area_km2=5, max_tiles=100,
    )  # fmt: skip
    assert len(plan.chunks) == 2
    with session_scope(factory) as s:
        if s.get(tables.Source, "s") is None:
            s.add(tables.Source(id="s", name="s", kind="cog", uri="", original_uri="",
                                bounds=[0, 0, 1, 1], minzoom=0, maxzoom=22))  # fmt: skip
            s.flush()
        from geoalchemy2.shape import from_shape

        job = tables.Job(
            source_id="s", model_name="m", model_version=1, aoi=from_shape(plan.aoi, 4326),
            zoom=Z, tiles_total=len(plan.tiles), chunks_total=2, area_km2=plan.area_km2,
            params={"side": plan.side, "options": {}},
        )  # fmt: skip
        s.add(job)
        s.flush()
        for c in plan.chunks:
            s.add(tables.JobChunk(job_id=job.id, index=c.index, tiles=[list(t) for t in c.tiles]))
        return job.id


def fake_predict(tiles: list[Tile]):
    return building_map(tiles), {"read": 0.0}


def run(factory, job_id, index, predict=fake_predict, classes=None):
    return chunk.run_chunk(
        factory, job_id, index, predict=predict,
        classes=classes or [{"name": "background"}, {"name": "building"}], threshold=0.5,
    )  # fmt: skip


def border_model_predict(tiles: list[Tile]):
    """A border model's view of the world: [building, border] per tile. Two houses share
    a wall on a tile edge inside the first chunk; one building lies across the seam."""
    truth = np.zeros((2 * 256, 4 * 256), np.int32)
    truth[300:360, 2 * 256 - 50 : 2 * 256 + 50] = 1
    truth[100:150, 200:256] = 2
    truth[100:150, 256:300] = 3
    world = np.stack([truth > 0, border_mask(truth, width=2)]).astype(np.float32) * 0.95
    out = {}
    for x, y, z in tiles:
        r, c = (y - Y0) * 256, (x - X0) * 256
        out[(x, y, z)] = world[:, r : r + 256, c : c + 256]
    return out, {"read": 0.0}


def geoms(factory, job_id) -> list[str]:
    with factory() as s:
        rows = s.scalars(
            select(func.ST_AsText(func.ST_Normalize(tables.Building.geom))).where(
                tables.Building.job_id == job_id
            )
        ).all()
    return sorted(rows)


def test_rerun_replaces_rows_and_last_chunk_triggers_merge(factory) -> None:
    job_id = make_job(factory)
    first = run(factory, job_id, 0)
    assert first.state == "done" and not first.merge and first.buildings == 2
    again = run(factory, job_id, 0)  # re-delivery of a finished chunk: nothing changes
    assert again.state == "skipped" and len(geoms(factory, job_id)) == 2
    with session_scope(factory) as s:  # an attempt that died after writing, before "done"
        s.get(tables.JobChunk, (job_id, 0)).state = "queued"
    assert run(factory, job_id, 0).buildings == 2 and len(geoms(factory, job_id)) == 2
    last = run(factory, job_id, 1)
    assert last.merge
    with factory() as s:
        job = s.get(tables.Job, job_id)
        assert (job.state, job.chunks_done) == ("merging", 2)
    assert chunk.finish_job(factory, job_id) == "done"
    merged = geoms(factory, job_id)
    assert len(merged) == 2, merged  # the seam-cut building is one feature again
    assert chunk.finish_job(factory, job_id) == "done"  # idempotent
    assert geoms(factory, job_id) == merged
    with factory() as s:
        job = s.get(tables.Job, job_id)
        assert job.buildings_count == 2 and "merge" in job.timings
        areas = s.scalars(select(tables.Building.area_m2).where(tables.Building.job_id == job_id))
        px_m2 = (0.2986 * np.cos(np.radians(6.05))) ** 2
        assert sorted(round(a / px_m2) for a in areas) == pytest.approx([3000, 6000], rel=0.03)


def test_a_border_model_writes_touching_houses_apart_and_seams_still_merge(factory) -> None:
    job_id = make_job(factory)
    border_model = [{"name": "building"}, {"name": "border"}]
    first = run(factory, job_id, 0, border_model_predict, border_model)
    assert first.buildings == 3  # two houses and the seam-cut half
    assert run(factory, job_id, 1, border_model_predict, border_model).merge
    assert chunk.finish_job(factory, job_id) == "done"
    with factory() as s:
        areas = s.scalars(select(tables.Building.area_m2).where(tables.Building.job_id == job_id))
        px_m2 = (0.2986 * np.cos(np.radians(6.05))) ** 2
        found = sorted(round(a / px_m2) for a in areas)
    assert found == pytest.approx([2200, 2800, 6000], rel=0.03)


def test_cancelled_job_writes_nothing_and_failure_keeps_written_chunks(factory) -> None:
    job_id = make_job(factory)
    assert run(factory, job_id, 0).state == "done"
    chunk.fail_chunk(factory, job_id, 1, "Unavailable: Triton is unreachable", attempts=4)
    with factory() as s:
        job = s.get(tables.Job, job_id)
        assert job.state == "failed" and "chunk 1 failed after 4 attempts" in job.error
    assert len(geoms(factory, job_id)) == 2
    assert run(factory, job_id, 1).state == "skipped"
    with factory() as s:
        assert s.get(tables.JobChunk, (job_id, 1)).state == "failed"


def test_houses_sharing_a_wall_across_the_seam_stay_two_after_the_merge(factory) -> None:
    """Both houses cross the seam and meet along a wall that crosses it too: each chunk
    writes two pieces, and the merge must join each house's pieces, not the houses."""
    truth = np.zeros((2 * 256, 4 * 256), np.int32)
    truth[300:330, 2 * 256 - 50 : 2 * 256 + 50] = 1
    truth[330:380, 2 * 256 - 40 : 2 * 256 + 60] = 2
    world = np.stack([truth > 0, border_mask(truth, width=2)]).astype(np.float32) * 0.95

    def predict(tiles: list[Tile]):
        return {
            (x, y, z): world[
                :, (y - Y0) * 256 : (y - Y0 + 1) * 256, (x - X0) * 256 : (x - X0 + 1) * 256
            ]
            for x, y, z in tiles
        }, {"read": 0.0}

    job_id = make_job(factory)
    border_model = [{"name": "building"}, {"name": "border"}]
    assert run(factory, job_id, 0, predict, border_model).buildings == 2
    assert run(factory, job_id, 1, predict, border_model).buildings == 2
    assert chunk.finish_job(factory, job_id) == "done"
    with factory() as s:
        areas = s.scalars(select(tables.Building.area_m2).where(tables.Building.job_id == job_id))
        px_m2 = (0.2986 * np.cos(np.radians(6.05))) ** 2
        found = sorted(round(a / px_m2) for a in areas)
    assert found == pytest.approx([3000, 5000], rel=0.03)
