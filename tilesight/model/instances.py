"""From per-pixel probabilities to building instances, using the border class when the
model has one.

A building mask alone merges touching roofs into one blob, which then fails the
IoU >= 0.5 object match twice (one false positive, two misses). Two ways cut it:

- A model trained with the border class also predicts the thin band where two buildings
  meet; removing it cuts the blob into one seed per building, and growing the seeds back
  over the band restores each footprint's full extent.
- Any building model: the probability dips along the wall between two roofs even where
  the whole blob is above the threshold. A watershed from the peaks that stand at least
  `peak_depth` above the saddle to their neighbours splits the blob along those dips.
  A training run chooses the depth on its tune split (`training.scoring.choose_cut`).

Metrics, area jobs and `tilesight evaluate` all call this, so the objects they count are
the objects a user downloads.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage
from skimage.morphology import local_maxima, reconstruction
from skimage.segmentation import watershed

from tilesight.model.metrics import drop_small, label_components

#: depths tried when a run picks its split (None: connected components, no split)
PEAK_DEPTHS: tuple[float | None, ...] = (None, 0.05, 0.1, 0.15, 0.2, 0.3)
#: smoothing before the peaks are found: a roof's texture makes peaks one pixel apart
PEAK_SMOOTHING_PX = 1.0
#: how far the smoothing reaches (scipy's default truncation, 4 sigma), for callers that
#: split blob by blob and must give each blob that much margin
PEAK_REACH_PX = 4


def border_channel(classes: list[dict[str, Any]] | None, channels: int) -> int | None:
    """The index of the 'border' class in a model's outputs, or None without one."""
    for i, c in enumerate(classes or []):
        if str(c.get("name", "")).lower() == "border" and i < channels:
            return i
    return None


def grow(labels: np.ndarray, mask: np.ndarray, steps: int) -> np.ndarray:
    """Spread labels over unlabelled `mask` pixels, one 4-neighbour ring per step."""
    out = labels.copy()
    for _ in range(steps):
        free = mask & (out == 0)
        if not free.any():
            break
        near = np.zeros_like(out)
        np.maximum(near[1:], out[:-1], out=near[1:])
        np.maximum(near[:-1], out[1:], out=near[:-1])
        np.maximum(near[:, 1:], out[:, :-1], out=near[:, 1:])
        np.maximum(near[:, :-1], out[:, 1:], out=near[:, :-1])
        take = free & (near > 0)
        if not take.any():
            break
        out[take] = near[take]
    return out


def split_instances(
    building: np.ndarray,
    border: np.ndarray | None = None,
    threshold: float = 0.5,
    min_area: int = 10,
    grow_steps: int = 6,
    peak_depth: float | None = None,
) -> np.ndarray:
    """int32 instance ids (0 background) for one tile's probabilities.

    Without a border map this is the connected components of `building >= threshold`,
    each split by a watershed from its peaks when `peak_depth` is given.
    With one, seeds are building pixels off the border; each seed grows back over the
    building mask for `grow_steps` px (a border band is ~2x its width wide), and building
    pixels no seed reaches keep components of their own, so nothing the mask found is lost.
    """
    mask = np.asarray(building) >= threshold
    if border is None:
        if peak_depth is None:
            return label_components(mask, min_area)
        return _watershed(np.asarray(building, np.float32), mask, peak_depth, min_area)
    seeds = label_components(mask & (np.asarray(border) < threshold), max(min_area // 2, 1))
    grown = grow(seeds, mask, grow_steps)
    rest = label_components(mask & (grown == 0), min_area)
    grown = np.where(rest > 0, rest + grown.max(), grown)
    return drop_small(grown, min_area)


def _watershed(building: np.ndarray, mask: np.ndarray, depth: float, min_area: int) -> np.ndarray:
    """Blobs of `mask` split along the dips of the (smoothed) probability between peaks
    at least `depth` high. Only mask pixels are smoothed (the background counts as 0), so
    a blob splits the same labelled in its tile as alone in a window PEAK_REACH_PX wider,
    unless another blob comes within that reach of it."""
    smooth = ndimage.gaussian_filter(
        np.where(mask, building, 0).astype(np.float32), PEAK_SMOOTHING_PX, mode="constant"
    )
    # the tops of the h-maxima transform: a dome whose dips are all shallower than
    # `depth` becomes one plateau, so it makes one seed (skimage's h_maxima would mark
    # each of its summits apart)
    tops = reconstruction(smooth - depth, smooth, method="dilation")
    peaks = label_components(local_maxima(tops) & mask)
    labels = watershed(-smooth, peaks, mask=mask).astype(np.int32)
    rest = label_components(mask & (labels == 0))  # blobs without a peak
    labels = np.where(rest > 0, rest + labels.max(), labels)
    return drop_small(labels, min_area)
