"""What a training request's fields must agree on, checked before a run is stored.

Split from `training_runs` so the service module reads as the run's life (submit,
follow, cancel, execute) and these rules can be read, and tested, on their own.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tilesight.errors import Conflict, InvalidInput
from tilesight.settings import Settings

if TYPE_CHECKING:
    from tilesight.training_runs import RunRequest


def check_classes(req: RunRequest) -> None:
    """What the class fields must agree on, with each other and with `border`."""
    from tilesight.overlay import BACKGROUND_NAMES

    names = req.classes
    if not names:
        extra = [k for k in ("class_weights", "ignore_value") if getattr(req, k) is not None]
        if extra:
            raise InvalidInput(
                f"{' and '.join(extra)} belong to a multi-class run: give `classes` "
                "(background first) as well, or leave them out for a building model",
                fields=extra,
            )
        return
    if not 2 <= len(names) <= 32 or not all(names):
        raise InvalidInput("give 2 to 32 non-empty class names, background first")
    lower = [n.lower() for n in names]
    twice = sorted({n for n in lower if lower.count(n) > 1})
    if twice:
        raise InvalidInput(f"class names must differ (case aside): {twice} appear twice")
    if lower[0] not in BACKGROUND_NAMES:
        raise InvalidInput(
            f"the first class is the background (pixels no polygon covers, raster value 0), "
            f"which metrics and the overlay leave out: name it 'background', not {names[0]!r}",
            background_names=sorted(BACKGROUND_NAMES),
        )
    if req.border:
        raise InvalidInput(
            "the border class separates touching building footprints: leave out `border` "
            "for a multi-class run"
        )
    weights = req.class_weights
    if weights is not None:
        if len(weights) != len(names):
            raise InvalidInput(
                f"{len(weights)} class_weights for {len(names)} classes: give one weight per "
                "class, in the order of `classes`",
                classes=list(names),
            )
        if not all(0 <= w <= 1000 for w in weights) or not any(w > 0 for w in weights):
            raise InvalidInput("class_weights are 0..1000 and at least one is above 0")
    value = req.ignore_value
    if value is not None:
        if not 0 <= value <= 255:
            raise InvalidInput("ignore_value is a label raster value, 0..255")
        if value < len(names):
            raise InvalidInput(
                f"ignore_value {value} is the value of class {names[value]!r}: give the value "
                f"the raster uses for unlabelled pixels, one no class uses (e.g. 255)"
            )


def check_model_predicts_the_same(settings: Settings, req: RunRequest) -> None:
    """A run adds a version to `req.model`, and a promoted version replaces the overlay
    and the area jobs' model: every version of one model predicts the same classes."""
    from tilesight.registry import model_metadata, version_dirs

    versions = version_dirs(settings, req.model)
    if not versions:
        return
    meta = model_metadata(settings, req.model, max(versions))
    multiclass = meta.get("architecture", {}).get("activation") == "softmax"
    have = [str(c.get("name")) for c in meta.get("classes", [])]
    if req.classes and (not multiclass or have != list(req.classes)):
        raise Conflict(
            f"model {req.model!r} predicts {have}; a run with classes {list(req.classes)} "
            "makes another model: give it a `model` name of its own",
            model=req.model,
            classes=have,
        )
    if not req.classes and multiclass:
        raise Conflict(
            f"model {req.model!r} predicts the classes {have}: give them as `classes` with "
            "its labels, or another `model` name for a building model",
            model=req.model,
            classes=have,
        )


def check_raster_values(path: Path, classes: int, ignore_value: int | None) -> None:
    """Refuse a label raster with values beyond the named classes at submission, not
    after its chips are cut. Read decimated (nearest, at most 2048 px a side), so a rare
    stray value can still stop the run later, with the same message."""
    import rasterio
    from rasterio.enums import Resampling

    with rasterio.open(path) as src:
        scale = max(1.0, max(src.width, src.height) / 2048)
        shape = (math.ceil(src.height / scale), math.ceil(src.width / scale))
        band = src.read(1, out_shape=shape, resampling=Resampling.nearest, masked=True)
    values = np.unique(np.ma.compressed(band)).astype(np.int64)
    bad = [int(v) for v in values if v != ignore_value and not 0 <= v < classes]
    if bad:
        raise InvalidInput(
            f"label raster {path.name} holds class value(s) {bad[:10]} but {classes} classes "
            f"(0..{classes - 1}) were named: name every class in order, or give the value "
            "of unlabelled pixels as `ignore_value`",
            values=bad[:10],
        )
