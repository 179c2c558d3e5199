"""The metadata a trained version carries: what it scored, against which baselines,
how its data was split and validated, where its data came from and under which licence,
and the hyperparameters that made it."""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tilesight.overlay import class_entries

if TYPE_CHECKING:
    from tilesight.model.data import Prepared
    from tilesight.training.loop import TrainConfig, TrainResult
    from tilesight.training.pipeline import TrainingPlan


def data_licence(imagery: Path) -> dict[str, str]:
    """Licence and attribution lines from the README that ships with the data (the
    nearest one above the imagery), so they travel into the model metadata.

    A place's own ATTRIBUTION.md comes first: a README that describes several places
    holds several attribution lines, and its first one may be another place's."""
    place = Path(imagery).resolve()
    own = (place if place.is_dir() else place.parent) / "ATTRIBUTION.md"
    text = own.read_text() if own.is_file() else ""
    credits = re.findall(r"Attribution:\s*(.+)", text)
    if credits:  # else the README's lines, which name the map credit
        licence = [ln.strip() for ln in text.splitlines() if "licen" in ln.lower()]
        return {
            "readme": str(own),
            "attribution": "; ".join(c.strip().rstrip(".") for c in credits),
            "licence": " ".join(licence)[:500],
        }
    for folder in [place, *place.parents][:4]:
        readme = folder / "README.md"
        if readme.is_file():
            text = readme.read_text()
            attribution = re.findall(r'attribution text:\s*"([^"]+)"', text)
            licences = [ln.strip("- ").strip() for ln in text.splitlines() if "CC BY" in ln]
            return {
                "readme": str(readme),
                "attribution": " ".join(attribution[0].split()) if attribution else "",
                "licence": " ".join(licences[:2]),
            }
    return {"readme": "", "attribution": "", "licence": "unknown"}


def version_metadata(
    plan: TrainingPlan,
    data: Prepared,
    result: TrainResult,
    final: dict[str, float],
    base: dict[str, Any],
    validation: dict[str, Any],
    loop: TrainConfig,
    transfer: dict[str, Any] | None,
) -> dict[str, Any]:
    """The metadata.json of the version `result` becomes (export adds its own keys)."""
    spec = plan.chips
    licences = [data_licence(imagery) for imagery, _ in plan.sources]
    return {
        "classes": class_entries(spec.classes, spec.border),
        "zoom": spec.zoom,
        "tile_size": spec.tile_size,
        "buffer": spec.buffer,
        "threshold": loop.threshold,
        # touching roofs split at probability dips this deep (model.instances); None: not
        "peak_depth": validation.get("threshold", {}).get("peak_depth"),
        "metrics": _metrics(plan, data, result, final, base, validation),
        "validation": validation,
        "training_data": {
            "sources": [str(i) for i, _ in plan.sources],
            "labels": [str(lb) for _, lb in plan.sources],
            "licence": licences[0]["licence"] if licences else "unknown",
            "attribution": licences[0]["attribution"] if licences else "",
            "per_source": licences,
        },
        "split": data.summary,
        "hyperparameters": {
            "chips": asdict(spec),
            "loop": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(loop).items()},
            "init_from": transfer,
            "world_size": result.world_size,
            "effective_batch_size": result.effective_batch,
            "effective_lr": loop.lr * result.world_size,  # linear scaling rule
            "hard_negatives_from": str(plan.hard_negatives_from)
            if plan.hard_negatives_from
            else None,
        },
    }


def _metrics(
    plan: TrainingPlan,
    data: Prepared,
    result: TrainResult,
    final: dict[str, float],
    base: dict[str, Any],
    validation: dict[str, Any],
) -> dict[str, Any]:
    spec = plan.chips
    if spec.multiclass:
        how = "class argmax, means over non-background classes"
    else:
        how = f"components >= {plan.loop.min_area} px, object match IoU >= 0.5"
        how += ", objects split along the predicted border" if spec.border else ""
    if data.tune:
        history_split = "tune"
    elif validation["best_epoch_chosen_on"].startswith("validation"):
        history_split = "validation (also chose the best epoch)"
    else:
        history_split = "validation (not used for choices)"
    return {
        **{k: round(v, 4) for k, v in final.items()},
        "evaluated_on": f"validation split: {len(data.val)} tiles, core 256 px, {how}",
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "baselines": _rounded(base),
        "history_split": history_split,
        "history": result.history,
    }


def _rounded(d: dict) -> dict:
    return {k: _rounded(v) if isinstance(v, dict) else _r(v) for k, v in d.items()}


def _r(v: Any) -> Any:
    return round(v, 4) if isinstance(v, float) else v
