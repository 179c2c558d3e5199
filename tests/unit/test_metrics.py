"""Metrics on hand-made masks, where every count can be worked out on paper."""

from __future__ import annotations

import numpy as np
import pytest

from tilesight.model.labels import IGNORE
from tilesight.model.metrics import (
    ClassConfusion,
    PixelCounts,
    SegmentationMetrics,
    apply_colour_threshold,
    fit_colour_threshold,
    label_components,
    match_objects,
)


def test_pixel_scores_exact() -> None:
    true = np.zeros((4, 4), bool)
    true[:2, :2] = True  # 4 building pixels
    pred = np.zeros((4, 4), bool)
    pred[:2, :3] = True  # 6 predicted: 4 hit, 2 false
    pred[3, 3] = True  # 1 more false
    counts = PixelCounts()
    counts.update(pred, true)
    assert (counts.tp, counts.fp, counts.fn, counts.tn) == (4, 3, 0, 9)
    s = counts.scores()
    assert s["pixel_iou"] == pytest.approx(4 / 7)
    assert s["precision"] == pytest.approx(4 / 7)
    assert s["recall"] == 1.0
    assert s["f1"] == pytest.approx(2 * (4 / 7) / (4 / 7 + 1))


def test_pixel_scores_ignore_invalid_and_empty() -> None:
    counts = PixelCounts()
    valid = np.zeros((3, 3), bool)
    counts.update(np.ones((3, 3)), np.ones((3, 3)), valid)
    assert counts.scores() == {"pixel_iou": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_components_are_4_connected_and_sieved() -> None:
    m = np.zeros((6, 6), bool)
    m[0:2, 0:2] = True
    m[2, 2] = True  # touches the first block only at a corner: separate, 1 px
    m[4:6, 3:6] = True
    lab = label_components(m)
    assert lab.max() == 3
    assert len(np.unique(lab[0:2, 0:2])) == 1
    sieved = label_components(m, min_area=2)
    assert sieved[2, 2] == 0 and np.count_nonzero(np.unique(sieved)) == 2


def test_object_matching_is_one_to_one_at_iou_half() -> None:
    true = np.zeros((10, 10), np.int32)
    true[0:4, 0:4] = 1  # 16 px
    true[6:10, 6:10] = 2  # 16 px
    pred = np.zeros((10, 10), np.int32)
    pred[0:4, 0:3] = 1  # IoU 12/16 = 0.75 with true 1 -> match
    pred[0:4, 3:4] = 2  # IoU 4/16 with true 1 -> no match (and true 1 is taken)
    pred[6:10, 8:10] = 3  # IoU 8/16 = 0.5 exactly with true 2 -> match
    assert match_objects(pred, true) == (2, 1, 0)
    pred[6:10, 9:10] = 0  # IoU 4/16 now -> miss
    assert match_objects(pred, true) == (1, 2, 1)


def test_segmentation_metrics_object_f1() -> None:
    true = np.zeros((8, 8), np.int32)
    true[0:3, 0:3] = 1
    true[0:3, 3:6] = 2  # touches building 1: separate in the truth
    true[6:8, 6:8] = 3
    pred = np.zeros((8, 8), bool)
    pred[0:3, 0:6] = True  # one merged blob: IoU 9/18 = 0.5 with each -> one match
    m = SegmentationMetrics()
    m.update(pred, true)
    s = m.scores()
    assert (m.objects.tp, m.objects.fp, m.objects.fn) == (1, 0, 2)
    assert s["object_precision"] == 1.0
    assert s["object_recall"] == pytest.approx(1 / 3)
    assert s["object_f1"] == pytest.approx(0.5)
    assert s["pixel_iou"] == pytest.approx(18 / 22)


def test_min_area_drops_small_truth_and_predictions() -> None:
    true = np.zeros((8, 8), np.int32)
    true[0, 0] = 1  # too small to judge
    true[4:8, 4:8] = 2
    pred = np.zeros((8, 8), bool)
    pred[4:8, 4:8] = True
    pred[0, 7] = True  # a speck
    m = SegmentationMetrics(min_area=4)
    m.update(pred, true)
    assert (m.objects.tp, m.objects.fp, m.objects.fn) == (1, 0, 0)


def test_colour_threshold_is_fitted_on_given_tiles() -> None:
    image = np.zeros((3, 4, 4), np.uint8)
    image[:, :, :2] = 200  # bright roofs on the left
    truth = np.zeros((4, 4), np.int32)
    truth[:, :2] = 1
    rule = fit_colour_threshold([image], [truth])
    assert rule["pixel_iou"] == 1.0
    assert (apply_colour_threshold(image, rule) == (truth > 0)).all()


def test_class_confusion_exact_values() -> None:
    true = np.array([[0, 0, 1, 1], [2, 2, IGNORE, 0]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 2, 2]])
    confusion = ClassConfusion(("background", "building", "yard", "water"))
    confusion.update(pred, true)
    # rows truth, columns prediction; the IGNORE pixel (predicted yard) counts nowhere
    expected = [[1, 1, 1, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    assert confusion.matrix.tolist() == expected
    s = confusion.scores()
    assert s["iou_background"] == pytest.approx(1 / 4)
    assert s["iou_building"] == pytest.approx(2 / 3)
    assert s["iou_yard"] == pytest.approx(1 / 3)
    assert s["f1_building"] == pytest.approx(0.8) and s["f1_yard"] == pytest.approx(0.5)
    # means over the foreground classes present: not background, not the absent water
    assert s["pixel_iou"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert s["f1"] == pytest.approx((0.8 + 0.5) / 2)
    assert s["accuracy"] == pytest.approx(4 / 7)
    # a second tile adds to the same matrix
    confusion.update(np.array([3]), np.array([3]))
    assert confusion.scores()["iou_water"] == 1.0
    assert confusion.scores()["pixel_iou"] == pytest.approx((2 / 3 + 1 / 3 + 1) / 3)
