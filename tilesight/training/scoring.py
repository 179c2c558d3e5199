"""Scores: the loop's validation scores (`validation_scores`), the trivial baselines a
model must beat, a version scored on every tile of a labelled area (`tilesight
evaluate`), and the ranker that picks hard negatives by the false positives of an
earlier version.

Baselines are fitted on training chips only and scored on the same validation chips
as the model, so the metadata says how much the network adds over trivial rules.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader

from tilesight.errors import InvalidInput
from tilesight.model.data import IGNORE, Chip, ChipDataset, ChipSpec, cache_chips
from tilesight.model.export import load_model
from tilesight.model.instances import PEAK_DEPTHS, border_channel, split_instances
from tilesight.model.labels import read_labels
from tilesight.model.metrics import (
    ClassConfusion,
    SegmentationMetrics,
    apply_colour_threshold,
    fit_colour_threshold,
)
from tilesight.model.sources import Tile, open_imagery, prepare_tiles
from tilesight.model.unet import SegmentationModel
from tilesight.settings import get_settings
from tilesight.training.losses import segmentation_loss


def _core(chip: Chip, spec: ChipSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The tile proper of a chip: image, labels (instances or classes), valid pixels."""
    c, s = spec.context, spec.tile_size
    keys = ("image", spec.label_key, "valid")
    with np.load(chip.path) as z:
        image, labels, valid = (z[k][..., c : c + s, c : c + s] for k in keys)
    return image, labels, valid


def baselines(
    train_chips: list[Chip], val_chips: list[Chip], spec: ChipSpec, min_area: int
) -> dict[str, Any]:
    """Scores of 'no buildings anywhere' and of the best colour rule (fitted on train);
    for multi-class, 'background everywhere' and 'the commonest training class everywhere'."""
    if spec.multiclass:
        return _class_baselines(train_chips, val_chips, spec)
    fit = [_core(c, spec) for c in train_chips]
    rule = fit_colour_threshold([i for i, _, _ in fit], [np.where(v, t, 0) for _, t, v in fit])
    empty, colour = SegmentationMetrics(min_area), SegmentationMetrics(min_area)
    for chip in val_chips:
        image, inst, valid = _core(chip, spec)
        empty.update(np.zeros(inst.shape, bool), inst, valid)
        colour.update(apply_colour_threshold(image, rule), inst, valid)
    return {
        "all_background": empty.scores(),
        "colour_threshold": {**colour.scores(), "rule": rule},
    }


def _class_baselines(
    train_chips: list[Chip], val_chips: list[Chip], spec: ChipSpec
) -> dict[str, Any]:
    n = len(spec.classes)
    counts = np.zeros(n, np.int64)
    for chip in train_chips:
        _, labels, valid = _core(chip, spec)
        keep = valid & (labels != IGNORE)
        counts += np.bincount(labels[keep].ravel(), minlength=n)[:n]
    common = int(counts.argmax())
    out = {}
    for name, cls in (("all_background", 0), ("majority_class", common)):
        confusion = ClassConfusion(spec.classes)
        for chip in val_chips:
            _, labels, valid = _core(chip, spec)
            confusion.update(np.full(labels.shape, cls), np.where(valid, labels, IGNORE))
        out[name] = {**confusion.scores(), "class": spec.classes[cls]}
    return out


def positive_share(chips: Sequence[Chip], spec: ChipSpec) -> float:
    """The share of labelled pixels in building footprints over the tiles proper."""
    pos = total = 0
    for chip in chips:
        _, inst, valid = _core(chip, spec)
        pos += int(np.count_nonzero((inst > 0) & valid))
        total += int(np.count_nonzero(valid))
    return pos / total if total else 0.0


def hard_negative_ranker(
    version_dir: Path, spec: ChipSpec, threshold: float | None = None
) -> Callable[[Sequence[Chip]], list[float]]:
    """Scores empty chips by the pixels the model at `version_dir` calls building there:
    every such pixel is a false positive, so the highest scores are the hard negatives."""
    model, meta = load_model(version_dir)
    if model.config.activation == "softmax" or spec.multiclass:
        raise InvalidInput("hard negatives are mined for building models, not multi-class ones")
    cut = threshold if threshold is not None else meta["threshold"]

    def rank(chips: Sequence[Chip]) -> list[float]:
        loader = DataLoader(ChipDataset(chips, spec, train=False), batch_size=8)
        scores: list[float] = []
        for logits, _ in _predicted(model, loader):
            prob = torch.sigmoid(logits[:, 0].float())[_core_of(spec.buffer)]
            scores += (prob >= cut).flatten(1).sum(1).float().tolist()
        return scores

    return rank


def score_version(
    version_dir: Path,
    imagery: Path,
    labels: Path,
    cache_dir: Path | None = None,
    threshold: float | None = None,
    min_area: int = 10,
    only_tiles: Collection[Tile] | None = None,
    peak_depth: float | None | Literal["version"] = "version",
) -> dict[str, float]:
    """Score a model version on every tile of a labelled area at the model's zoom (or on
    `only_tiles` of it, the part a fine-tune did not see), with the labels read the way
    it was trained (footprints, or its classes), its objects cut as the version's
    metadata says unless `threshold` or `peak_depth` say otherwise."""
    model, meta = load_model(version_dir)
    spec, chips = version_chips(model, meta, imagery, labels, cache_dir, only_tiles)
    loader = DataLoader(ChipDataset(chips, spec, train=False), batch_size=8)
    thr = threshold if threshold is not None else meta["threshold"]
    depth = meta.get("peak_depth") if peak_depth == "version" else peak_depth
    scores = validation_scores(
        model, loader, spec.buffer, thr, min_area, class_names=spec.classes, peak_depth=depth
    )
    return {**scores, "tiles": len(chips), "ignore_value": IGNORE}


def version_chips(
    model: SegmentationModel,
    meta: dict[str, Any],
    imagery: Path,
    labels: Path,
    cache_dir: Path | None = None,
    only_tiles: Collection[Tile] | None = None,
) -> tuple[ChipSpec, list[Chip]]:
    """A labelled area's chips as a loaded version reads them: its zoom, context and
    classes; every tile of the area, or `only_tiles` of it."""
    chips_meta = meta.get("hyperparameters", {}).get("chips", {})
    multiclass = model.config.activation == "softmax"
    spec = ChipSpec(
        zoom=meta["zoom"], tile_size=meta["tile_size"], buffer=meta["buffer"], jitter=0,
        classes=tuple(c["name"] for c in meta["classes"]) if multiclass else (),
        border=not multiclass and border_channel(meta["classes"], model.config.classes) is not None,
        class_property=chips_meta.get("class_property", "class"),
        ignore_value=chips_meta.get("ignore_value"),
    )  # fmt: skip
    reader = open_imagery(imagery)
    found = read_labels(labels, spec.classes, spec.class_property, spec.ignore_value)
    tiles = prepare_tiles(reader, found.extent(), spec.zoom)
    if only_tiles is not None:
        keep = set(only_tiles)
        tiles = [t for t in tiles if t in keep]
    cache = cache_dir if cache_dir is not None else get_settings().home / "chips"
    return spec, cache_chips(reader, found, tiles, spec, cache)


def validation_scores(
    model: SegmentationModel,
    loader: DataLoader,
    buffer: int,
    threshold: float = 0.5,
    min_area: int = 10,
    device: torch.device | None = None,
    autocast: Any = None,
    class_names: tuple[str, ...] = (),
    class_weights: torch.Tensor | None = None,
    peak_depth: float | None = None,
) -> dict[str, float]:
    """Loss and metrics on the tile proper (context pixels are for the model only).

    Buildings: pixel and object scores, objects split along the predicted border when
    the model has that class, or at probability dips `peak_depth` deep. Multi-class:
    per-class IoU/F1 and their means, from the argmax of the class probabilities
    (`class_names` given)."""
    metrics: SegmentationMetrics | ClassConfusion
    metrics = ClassConfusion(class_names) if class_names else SegmentationMetrics(min_area)
    has_border = model.config.classes > 1 and not class_names
    losses = []
    for logits, batch in _predicted(model, loader, device, autocast):
        target = batch["target"].to(logits.device)
        losses.append(float(segmentation_loss(logits, target, class_weights=class_weights)))
        if isinstance(metrics, ClassConfusion):
            core = _core_of(buffer)
            pred = logits.float().argmax(dim=1).cpu().numpy()
            metrics.update(pred[core], batch["target"].numpy()[core])
            continue
        for p, t, v in _building_tiles(logits, batch, buffer):
            objects = _objects(p, has_border, threshold, min_area, peak_depth)
            metrics.update(p[0] >= threshold, t, v, objects)
    return {"loss": float(np.mean(losses)) if losses else 0.0, **metrics.scores()}


def _predicted(
    model: SegmentationModel,
    loader: DataLoader,
    device: torch.device | None = None,
    autocast: Any = None,
) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """The model's logits for each batch, in eval mode without gradients; a model that
    was training is put back to training when the batches run out."""
    device = device or next(model.parameters()).device
    model_was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), autocast or nullcontext():
            for batch in loader:
                yield model.logits(batch["image"].to(device)), batch
    finally:
        model.train(model_was_training)


def _core_of(buffer: int) -> tuple[Any, slice, slice]:
    return (Ellipsis, slice(buffer, -buffer or None), slice(buffer, -buffer or None))


def _building_tiles(
    logits: torch.Tensor, batch: dict[str, torch.Tensor], buffer: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per tile proper of a building model's batch: probabilities [C, S, S], labelled
    instances and valid pixels (context pixels are for the model only)."""
    core = _core_of(buffer)
    prob = torch.sigmoid(logits.float()).cpu().numpy()[core]
    inst = batch["instances"].numpy()[core]
    valid = batch["target"][:, 0].numpy()[core] != IGNORE
    yield from zip(prob, inst, valid, strict=True)


def _objects(
    prob: np.ndarray, has_border: bool, cut: float, min_area: int, peak_depth: float | None
) -> np.ndarray | None:
    """One tile's predicted instances, or None where they are the mask's components (the
    metrics label those themselves)."""
    if has_border:
        return split_instances(prob[0], prob[1], cut, min_area)
    if peak_depth is not None:
        return split_instances(prob[0], None, cut, min_area, peak_depth=peak_depth)
    return None


#: cuts tried when a run picks its threshold; the ends stay away from 0 and 1, where
#: a tune split of a few tiles would pick a cut that only fits those tiles
THRESHOLDS = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7)


@dataclass(frozen=True)
class Cut:
    """How a version turns probabilities into buildings, and the tune-split object F1
    of every candidate it was chosen from."""

    threshold: float
    peak_depth: float | None
    by_threshold: dict[str, float]
    by_peak_depth: dict[str, float]


def choose_cut(
    model: SegmentationModel,
    loader: DataLoader,
    buffer: int,
    min_area: int = 10,
    thresholds: Sequence[float] = THRESHOLDS,
    depths: Sequence[float | None] = PEAK_DEPTHS,
) -> Cut:
    """The building threshold, then the watershed depth at it, with the best object F1
    on these chips (a tune split); ties go to the cut nearest 0.5 and to no split.

    Object F1 is what a user gets, and both move it more than pixel IoU: a higher cut
    parts touching roofs and drops faint blobs, a lower one joins a roof's fragments; the
    split parts roofs whose wall the probability only dips along. Two passes of the
    model, every candidate of a pass counted on the same probabilities batch by batch, so
    a tune split of any size costs no memory beyond one batch, and the watershed runs
    only at the chosen threshold. A border model splits along its border instead."""
    has_border = model.config.classes > 1
    by_threshold = _object_f1(
        model, loader, buffer, min_area, {f"{t:g}": (t, None) for t in thresholds}, has_border
    )
    best = max(thresholds, key=lambda t: (by_threshold[f"{t:g}"], -abs(t - 0.5)))
    if has_border:
        return Cut(float(best), None, by_threshold, {})
    split = {f"{d:g}": (best, d) for d in depths if d is not None}
    by_depth = {"none": by_threshold[f"{best:g}"]}
    by_depth |= _object_f1(model, loader, buffer, min_area, split, False)
    depth = max(depths, key=lambda d: (by_depth["none" if d is None else f"{d:g}"], d is None))
    return Cut(float(best), depth, by_threshold, by_depth)


def _object_f1(
    model: SegmentationModel,
    loader: DataLoader,
    buffer: int,
    min_area: int,
    candidates: Mapping[str, tuple[float, float | None]],
    has_border: bool,
) -> dict[str, float]:
    """Object F1 of each (threshold, peak depth) candidate, on one run of the model."""
    counts = {name: SegmentationMetrics(min_area) for name in candidates}
    for logits, batch in _predicted(model, loader):
        for p, t, v in _building_tiles(logits, batch, buffer):
            for name, (cut, depth) in candidates.items():
                objects = _objects(p, has_border, cut, min_area, depth)
                counts[name].update(p[0] >= cut, t, v, objects)
    return {name: round(float(m.scores()["object_f1"]), 4) for name, m in counts.items()}
