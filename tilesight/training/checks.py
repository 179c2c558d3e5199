"""What a training request's fields must agree on, checked before a run is stored, and
how a refusal is put in the user's terms (no server path reaches the client).

Split from the service so it reads as the run's life (submit, follow, cancel,
execute) and these rules can be read, and tested, on their own.
"""

from __future__ import annotations

import contextlib
import math
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tilesight.errors import Conflict, InvalidInput, NotFound, TilesightError
from tilesight.imagery.register import local_path
from tilesight.model.repository import METADATA, version_dir
from tilesight.settings import Settings

if TYPE_CHECKING:
    from tilesight.training.spec import RunRequest


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


def check_init_version(settings: Settings, req: RunRequest) -> None:
    """The version a fine-tune starts from exists and has the network shape asked for."""
    from tilesight.training.transfer import check_init_from

    assert req.init_from_version is not None
    folder = version_dir(settings.model_repo, req.model, req.init_from_version)
    if not (folder / METADATA).exists():
        raise NotFound(f"model {req.model!r} has no version {req.init_from_version}")
    check_init_from(folder, req.width, req.depth, architecture=req.architecture)


def inline_labels_file(settings: Settings, run_id: uuid.UUID) -> Path:
    """Where a run's inline labels are written, to be read like any labels file."""
    return settings.home / "labels" / f"{run_id}.geojson"


def server_paths(settings: Settings, req: RunRequest, run_id: uuid.UUID) -> dict[str, str]:
    """The server's own paths an error may hold, each with the words a user knows it by."""
    label = "the inline `labels`" if req.labels is not None else f"`{req.labels_path}`"
    paths = {str(inline_labels_file(settings, run_id)): label}
    if req.labels_path is not None:
        with contextlib.suppress(OSError, ValueError):
            paths[str(local_path(settings, req.labels_path))] = label
    for root in settings.data_roots:
        paths[str(root)] = "<data root>"
        with contextlib.suppress(OSError, ValueError):
            paths[str(root.resolve())] = "<data root>"
    paths[str(settings.model_repo)] = "<model repository>"
    paths[str(settings.home)] = "<server home>"
    return paths


def in_users_terms(exc: TilesightError, paths: dict[str, str]) -> None:
    """Rewrite a refusal's message and details in place, longest path first (a labels
    file lies under the home folder), so no server path reaches the client."""
    ordered = sorted(paths.items(), key=lambda item: len(item[0]), reverse=True)

    def scrub(value: Any) -> Any:
        if isinstance(value, str):
            for path, words in ordered:
                value = value.replace(path, words)
            return value
        if isinstance(value, list | tuple):
            return [scrub(v) for v in value]
        if isinstance(value, dict):
            return {k: scrub(v) for k, v in value.items()}
        return value

    exc.message = scrub(exc.message)
    exc.detail = scrub(exc.detail)
    exc.args = (exc.message,)
