"""Building instances from probabilities: the border class cuts touching roofs apart."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tilesight.model.data import border_mask
from tilesight.model.instances import border_channel, split_instances
from tilesight.model.metrics import label_components, match_objects
from tilesight.model.sources import ChipFolder, load_footprints, prepare_tiles, rasterize_instances

DATA = Path(__file__).resolve().parents[1] / "data" / "buildings" / "tanzania"


def two_houses() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two 20 x 20 px roofs sharing a wall at column 30, the model's border band 4 px wide
    across the wall (as border_mask draws it for width 2), and the true instance map."""
    truth = np.zeros((40, 60), np.int32)
    truth[10:30, 10:30] = 1
    truth[10:30, 30:50] = 2
    building = (truth > 0).astype(np.float32)
    border = np.zeros_like(building)
    border[10:30, 28:32] = 0.9
    return building, border, truth


def test_touching_roofs_split_along_the_border_each_with_its_own_pixels() -> None:
    building, border, truth = two_houses()
    labels = split_instances(building, border, threshold=0.5, min_area=10)
    assert labels.max() == 2
    left, right = labels[20, 15], labels[20, 45]
    assert {left, right} == {1, 2}
    # the border band is given back to the roof it belongs to, pixel for pixel
    assert np.array_equal(labels == left, truth == 1)
    assert np.array_equal(labels == right, truth == 2)


def test_without_a_border_map_touching_roofs_are_one_object() -> None:
    building, _, truth = two_houses()
    labels = split_instances(building, None, threshold=0.5, min_area=10)
    assert labels.max() == 1
    assert np.array_equal(labels > 0, truth > 0)


def test_a_border_that_does_not_cut_through_leaves_one_object() -> None:
    building, border, truth = two_houses()
    border[10:20, :] = 0  # the band stops half way: the roofs stay joined below it
    labels = split_instances(building, border, threshold=0.5, min_area=10)
    assert labels.max() == 1 and np.array_equal(labels > 0, truth > 0)


def test_a_weak_border_below_the_threshold_does_not_cut() -> None:
    building, border, _ = two_houses()
    labels = split_instances(building, border * 0.5, threshold=0.5, min_area=10)
    assert labels.max() == 1


def test_a_roof_that_is_all_border_is_kept_as_its_own_object() -> None:
    building, border, truth = two_houses()
    building[2:7, 52:58] = 0.8  # a 5 x 6 px shed the model calls border all over
    border[2:7, 52:58] = 0.8
    labels = split_instances(building, border, threshold=0.5, min_area=10)
    assert labels.max() == 3
    shed = labels[4, 55]
    assert shed > 0 and np.array_equal(labels == shed, (building >= 0.5) & (truth == 0))
    assert shed not in (labels[20, 15], labels[20, 45])


def test_min_area_drops_specks_with_and_without_a_border() -> None:
    building, border, truth = two_houses()
    building[2:4, 2:4] = 0.9  # a 2 x 2 px speck
    for border_map in (border, None):
        labels = split_instances(building, border_map, threshold=0.5, min_area=10)
        assert labels[2:4, 2:4].max() == 0
        assert np.array_equal(labels > 0, truth > 0)
    # with no minimum the speck is an object of its own
    assert split_instances(building, border, threshold=0.5, min_area=1).max() == 3


def test_border_channel_is_found_by_name_only() -> None:
    classes = [{"name": "building", "color": "#ff3b30"}, {"name": "Border"}]
    assert border_channel(classes, 2) == 1
    assert border_channel(classes, 1) is None  # the model returns fewer channels than named
    assert border_channel([{"name": "building"}], 1) is None
    assert border_channel([{"name": "background"}, {"name": "building"}], 2) is None
    assert border_channel(None, 2) is None


@pytest.fixture(scope="module")
def real_tiles() -> list[tuple[np.ndarray, np.ndarray]]:
    """(true instances, true border) of each real tile: OSM footprints, several touching."""
    geoms = load_footprints(DATA / "labels.geojson")
    out = []
    for tile in prepare_tiles(ChipFolder(DATA), geoms, 19):
        inst = rasterize_instances(geoms, tile, 256, 0)
        out.append((inst, border_mask(inst, width=2)))
    return out


def test_real_touching_footprints_are_recovered_by_the_border(real_tiles) -> None:
    min_area = 10
    found = {"components": 0, "border": 0}
    objects = 0
    for inst, border in real_tiles:
        ids, area = np.unique(inst[inst > 0], return_counts=True)
        truth = np.where(np.isin(inst, ids[area >= min_area]), inst, 0)  # as metrics do
        objects += int((area >= min_area).sum())
        building = (inst > 0).astype(np.float32)
        plain = label_components(building >= 0.5, min_area)
        split = split_instances(building, border.astype(np.float32), 0.5, min_area)
        for name, pred in (("components", plain), ("border", split)):
            tp, fp, fn = match_objects(pred, truth)
            found[name] += tp
            if name == "border":
                assert fp == 0 and fn == 0
    assert objects > 40
    assert found["border"] == objects
    # touching OSM footprints really merge without the border: that is what it is for
    assert found["components"] <= objects - 2


def two_roofs_with_a_dip(dip: float) -> tuple[np.ndarray, np.ndarray]:
    """Two roofs the model is 0.95 sure of, sharing a wall where it is only `dip` sure:
    all of it above the threshold, so the mask alone is one blob."""
    _, _, truth = two_houses()
    building = np.where(truth > 0, 0.95, 0.02).astype(np.float32)
    building[10:30, 29:31] = dip
    return building, truth


def test_a_watershed_splits_roofs_where_the_probability_dips_along_the_wall() -> None:
    building, truth = two_roofs_with_a_dip(0.7)
    assert split_instances(building, None, 0.5, 10).max() == 1  # the mask alone: one blob
    labels = split_instances(building, None, 0.5, 10, peak_depth=0.1)
    assert labels.max() == 2
    tp, fp, fn = match_objects(labels, truth, 0.8)  # each roof nearly pixel for pixel
    assert (tp, fp, fn) == (2, 0, 0)
    assert np.array_equal(labels > 0, truth > 0)  # nothing lost or added at the wall


def test_a_dip_shallower_than_the_depth_and_a_roof_s_texture_do_not_split() -> None:
    building, truth = two_roofs_with_a_dip(0.9)
    assert split_instances(building, None, 0.5, 10, peak_depth=0.1).max() == 1
    roof = np.where(truth == 1, 0.8, 0.02).astype(np.float32)
    rng = np.random.default_rng(0)
    roof[truth == 1] += rng.uniform(-0.08, 0.08, int((truth == 1).sum())).astype(np.float32)
    assert split_instances(roof, None, 0.5, 10, peak_depth=0.05).max() == 1
