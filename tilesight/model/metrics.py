"""Segmentation metrics for building footprints: per-pixel and per-object.

Pixel scores come from confusion counts summed over a whole split (not averaged per
tile, which would let empty tiles dominate). Object F1 is the footprint-level score
used by SpaceNet: a predicted building counts only if it overlaps one true building
at IoU >= 0.5, and each true building can be matched once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b else 0.0


@dataclass
class PixelCounts:
    """Confusion counts, added up across tiles and turned into scores at the end."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def update(self, pred: np.ndarray, true: np.ndarray, valid: np.ndarray | None = None) -> None:
        pred, true = np.asarray(pred, bool), np.asarray(true, bool)
        if valid is not None:
            pred, true = pred[valid], true[valid]
        self.tp += int(np.count_nonzero(pred & true))
        self.fp += int(np.count_nonzero(pred & ~true))
        self.fn += int(np.count_nonzero(~pred & true))
        self.tn += int(np.count_nonzero(~pred & ~true))

    def scores(self) -> dict[str, float]:
        precision = _ratio(self.tp, self.tp + self.fp)
        recall = _ratio(self.tp, self.tp + self.fn)
        return {
            "pixel_iou": _ratio(self.tp, self.tp + self.fp + self.fn),
            "precision": precision,
            "recall": recall,
            "f1": _ratio(2 * precision * recall, precision + recall),
        }


def label_components(mask: np.ndarray, min_area: int = 0) -> np.ndarray:
    """Instance ids (1..n) for the 4-connected components of a boolean mask, without
    those of fewer than `min_area` pixels. The one labelling every object count, split
    and outline goes through (scipy's, in C: a 1024 px chunk mosaic in milliseconds)."""
    labels, _ = ndimage.label(np.asarray(mask, bool))  # 4-connected in 2-D, ids 1..n
    labels = labels.astype(np.int32, copy=False)
    return drop_small(labels, min_area) if min_area > 1 else labels  # a sort: only if asked


def drop_small(labels: np.ndarray, min_area: int = 0) -> np.ndarray:
    """Labels renumbered 1..n, without those of fewer than `min_area` pixels (now 0)."""
    ids, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    keep = (ids > 0) & (counts >= max(min_area, 1))
    relabel = np.zeros(len(ids), np.int32)
    relabel[keep] = np.arange(1, int(keep.sum()) + 1)
    return relabel[inverse].reshape(labels.shape)


def match_objects(
    pred: np.ndarray, true: np.ndarray, iou_threshold: float = 0.5
) -> tuple[int, int, int]:
    """(tp, fp, fn) for two instance maps, matching one-to-one by descending IoU."""
    pred, true = np.asarray(pred), np.asarray(true)
    p_ids, p_area = np.unique(pred[pred > 0], return_counts=True)
    t_ids, t_area = np.unique(true[true > 0], return_counts=True)
    both = (pred > 0) & (true > 0)
    pairs, inter = np.unique(
        np.stack([pred[both], true[both]]).astype(np.int64), axis=1, return_counts=True
    )
    pa = dict(zip(p_ids.tolist(), p_area.tolist(), strict=True))
    ta = dict(zip(t_ids.tolist(), t_area.tolist(), strict=True))
    candidates = []
    for (p, t), n in zip(pairs.T.tolist(), inter.tolist(), strict=True):
        iou = n / (pa[p] + ta[t] - n)
        if iou >= iou_threshold:
            candidates.append((iou, p, t))
    tp = len(greedy_pairs(candidates))
    return tp, len(p_ids) - tp, len(t_ids) - tp


def greedy_pairs(candidates: list[tuple[float, int, int]]) -> dict[int, int]:
    """Prediction -> label, one to one, from (iou, prediction, label) candidates taken
    best IoU first: the matching of SpaceNet's object F1, for instance maps here and
    polygons in jobs."""
    pairs: dict[int, int] = {}
    used: set[int] = set()
    for _, p, t in sorted(candidates, reverse=True):
        if p not in pairs and t not in used:
            pairs[p] = t
            used.add(t)
    return pairs


@dataclass
class ObjectCounts:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def update(self, pred: np.ndarray, true: np.ndarray, iou_threshold: float = 0.5) -> None:
        tp, fp, fn = match_objects(pred, true, iou_threshold)
        self.tp, self.fp, self.fn = self.tp + tp, self.fp + fp, self.fn + fn

    def scores(self) -> dict[str, float]:
        precision = _ratio(self.tp, self.tp + self.fp)
        recall = _ratio(self.tp, self.tp + self.fn)
        return {
            "object_precision": precision,
            "object_recall": recall,
            "object_f1": _ratio(2 * precision * recall, precision + recall),
        }


@dataclass
class SegmentationMetrics:
    """Pixel and object scores for one split; `min_area` drops specks (in pixels) from
    both sides before matching, as SpaceNet drops footprints too small to judge."""

    min_area: int = 0
    pixels: PixelCounts = field(default_factory=PixelCounts)
    objects: ObjectCounts = field(default_factory=ObjectCounts)

    def update(
        self,
        pred_mask: np.ndarray,
        true_instances: np.ndarray,
        valid: np.ndarray | None = None,
        pred_instances: np.ndarray | None = None,
    ) -> None:
        """Add one tile. `pred_instances` (e.g. split along a predicted border) replaces
        the connected components of `pred_mask` as the predicted objects."""
        pred_mask = np.asarray(pred_mask, bool)
        true_instances = np.asarray(true_instances)
        if valid is not None:
            pred_mask = pred_mask & valid
            true_instances = np.where(valid, true_instances, 0)
            if pred_instances is not None:
                pred_instances = np.where(valid, pred_instances, 0)
        self.pixels.update(pred_mask, true_instances > 0)
        true = true_instances
        if self.min_area:
            ids, counts = np.unique(true[true > 0], return_counts=True)
            true = np.where(np.isin(true, ids[counts < self.min_area]), 0, true)
        if pred_instances is None:
            pred_instances = label_components(pred_mask, self.min_area)
        self.objects.update(pred_instances, true)

    def scores(self) -> dict[str, float]:
        return {**self.pixels.scores(), **self.objects.scores()}


@dataclass
class ClassConfusion:
    """A C x C confusion matrix (rows: truth, columns: prediction) for exclusive classes,
    summed over a split; pixels marked with `ignore` count nowhere."""

    names: tuple[str, ...]
    ignore: int = 255
    matrix: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.matrix = np.zeros((len(self.names), len(self.names)), np.int64)

    def update(self, pred: np.ndarray, true: np.ndarray) -> None:
        pred, true = np.asarray(pred).ravel(), np.asarray(true).ravel()
        keep = true != self.ignore
        c = len(self.names)
        idx = true[keep].astype(np.int64) * c + pred[keep].astype(np.int64)
        self.matrix += np.bincount(idx, minlength=c * c).reshape(c, c)

    def scores(self) -> dict[str, float]:
        """Per-class IoU and F1, their means over the non-background classes (class 0 is
        the background, which would flatter every model), and overall pixel accuracy.
        `pixel_iou` and `f1` are those means, so early stopping reads one name."""
        m = self.matrix
        tp = np.diag(m).astype(float)
        fp, fn = m.sum(0) - tp, m.sum(1) - tp
        out: dict[str, float] = {}
        ious, f1s = [], []
        for i, name in enumerate(self.names):
            iou = _ratio(tp[i], tp[i] + fp[i] + fn[i])
            f1 = _ratio(2 * tp[i], 2 * tp[i] + fp[i] + fn[i])
            out[f"iou_{name}"], out[f"f1_{name}"] = iou, f1
            if i > 0 and tp[i] + fp[i] + fn[i] > 0:  # present in truth or prediction
                ious.append(iou)
                f1s.append(f1)
        out["pixel_iou"] = float(np.mean(ious)) if ious else 0.0
        out["f1"] = float(np.mean(f1s)) if f1s else 0.0
        out["accuracy"] = _ratio(tp.sum(), m.sum())
        return out


def fit_colour_threshold(images: list[np.ndarray], truths: list[np.ndarray]) -> dict:
    """The colour baseline: 'a pixel is a building if its brightness or its redness is
    above a cut', with the rule and cut chosen for the best pixel IoU on training tiles
    (never on validation), so the model is compared with the best simple rule."""
    feats = {"brightness": _brightness, "redness": _redness}
    best: dict[str, Any] = {"rule": "brightness", "threshold": 255.0, "pixel_iou": -1.0}
    for name, fn in feats.items():
        values = np.concatenate([fn(i).ravel() for i in images])
        truth = np.concatenate([np.asarray(t).ravel() > 0 for t in truths])
        for cut in np.quantile(values, np.linspace(0.5, 0.99, 50)):
            counts = PixelCounts()
            counts.update(values >= cut, truth)
            iou = counts.scores()["pixel_iou"]
            if iou > best["pixel_iou"]:
                best = {"rule": name, "threshold": float(cut), "pixel_iou": iou}
    return best


def apply_colour_threshold(image: np.ndarray, rule: dict) -> np.ndarray:
    fn = _brightness if rule["rule"] == "brightness" else _redness
    return fn(image) >= rule["threshold"]


def _brightness(image: np.ndarray) -> np.ndarray:
    return np.asarray(image, np.float32).mean(axis=0)


def _redness(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image, np.float32)
    return img[0] - 0.5 * (img[1] + img[2])
