"""A whole training run, as the CLI and the Celery task start it: chips, baselines,
training, final scoring, export. The steps read in `_train_and_export`'s order.

A `TrainingPlan` is a `TrainingSpec` (the hyperparameters a user chose) made concrete
for one machine: the imagery and label files, the model repository, the chip cache and
the run folder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from tilesight.model.data import ChipDataset, ChipSpec, Prepared, prepare
from tilesight.model.export import export_model, read_metadata
from tilesight.settings import get_settings
from tilesight.training.distributed import process_group
from tilesight.training.loop import (
    ProgressCallback,
    TrainConfig,
    TrainResult,
    train,
)
from tilesight.training.metadata import version_metadata
from tilesight.training.scoring import (
    baselines,
    choose_cut,
    hard_negative_ranker,
    positive_share,
    validation_scores,
)
from tilesight.training.spec import TrainingSpec
from tilesight.training.transfer import build_model, check_init_from

_SPEC = TrainingSpec()
FINE_TUNE_WARMUP_STEPS = 2


@dataclass
class TrainingPlan:
    """Everything that defines a model version; stored (as text) in its metadata."""

    sources: list[tuple[Path, Path]]  # (imagery, labels) pairs
    model_repo: Path
    model_name: str = "buildings"
    chips: ChipSpec = field(default_factory=ChipSpec)
    architecture: str = _SPEC.architecture
    width: int = _SPEC.width
    depth: int = _SPEC.depth
    loop: TrainConfig = field(default_factory=TrainConfig)
    cache_dir: Path = field(default_factory=lambda: get_settings().home / "chips")
    block_zoom: int = _SPEC.block_zoom
    val_fraction: float = _SPEC.val_fraction
    empty_ratio: float = _SPEC.empty_ratio
    tune_fraction: float = 0.2  # of training blocks, for early stopping; 0: see `validation`
    init_from: Path | None = None  # a version folder to fine-tune from
    hard_negatives_from: Path | None = None  # a version folder whose false positives pick
    export: bool = True
    positive_weight: float | str = 1.0  # "auto": from the training chips' building share

    @classmethod
    def from_spec(
        cls,
        spec: TrainingSpec,
        sources: list[tuple[Path, Path]],
        model_repo: Path,
        model_name: str,
        run_dir: Path,
        cache_dir: Path | None = None,
        init_from: Path | None = None,
        **loop: Any,
    ) -> TrainingPlan:
        """The plan of a spec on this machine; `loop` holds the machine's own loop
        settings (workers, compile, distributed, resume). A run with `init_from` takes
        the fine-tune defaults for what the spec leaves unset."""
        fine_tune = init_from is not None
        s = spec.resolved(fine_tune=fine_tune)
        if fine_tune:  # a few tiles make a few steps an epoch: a short warm-up
            loop.setdefault("warmup_steps", FINE_TUNE_WARMUP_STEPS)
        chips = ChipSpec(
            zoom=s.zoom, buffer=s.buffer, border=s.border, classes=tuple(s.classes),
            class_property=s.class_property, ignore_value=s.ignore_value,
        )  # fmt: skip
        config = TrainConfig(
            epochs=int(s.epochs or 0), batch_size=s.batch_size, lr=float(s.lr or 0),
            patience=int(s.patience or 0),
            monitor=s.monitor, augmentation=s.augmentation, seed=s.seed,
            freeze_encoder_epochs=int(s.freeze_encoder_epochs or 0),
            freeze_batchnorm=bool(s.freeze_batchnorm),
            max_steps_per_epoch=s.max_steps_per_epoch, score_start=fine_tune,
            class_weights=tuple(s.class_weights) if s.class_weights else None,
            run_dir=run_dir, **loop,
        )  # fmt: skip
        return cls(
            sources=sources, model_repo=model_repo, model_name=model_name, chips=chips,
            architecture=s.architecture, width=s.width, depth=s.depth, loop=config,
            cache_dir=cache_dir or get_settings().home / "chips", block_zoom=s.block_zoom,
            val_fraction=s.val_fraction, empty_ratio=s.empty_ratio,
            tune_fraction=s.tune_fraction or 0.0, init_from=init_from,
            positive_weight=s.positive_weight or 1.0,
        )  # fmt: skip


def run_training(
    plan: TrainingPlan, on_progress: ProgressCallback | None = None
) -> tuple[Path | None, dict[str, Any]]:
    """Train, score and export one version; returns (version folder, metadata).

    Under torchrun every rank calls it: rank 0 cuts the chips while the others wait,
    all train, and rank 0 alone scores and exports; the others return (None, {})."""
    if plan.init_from is not None:  # a shape mismatch is refused before any work
        check_init_from(plan.init_from, plan.width, plan.depth, architecture=plan.architecture)
    with process_group(plan.loop.distributed) as (process_rank, _):
        result = _train_and_export(plan, on_progress, process_rank)
        if plan.loop.distributed:
            # Leave together: a rank that tore down its gloo group while rank 0 was still
            # exporting was seen to abort ("terminate called without an active exception").
            dist.barrier()
        return result


def _train_and_export(
    plan: TrainingPlan, on_progress: ProgressCallback | None, process_rank: int
) -> tuple[Path | None, dict[str, Any]]:
    torch.manual_seed(plan.loop.seed)
    data = _cut_chips(plan, process_rank)
    base = {}
    if process_rank == 0:
        base = baselines(data.train, data.val, plan.chips, plan.loop.min_area)
    loop, validation = _loop_for(plan, data)
    result, transfer = _fit(plan, data, loop, on_progress)
    if process_rank != 0:  # one version per run: rank 0 scores and exports it
        return None, {}
    (threshold, depth), validation["threshold"] = _cut_for(plan, data, result, loop.threshold)
    loop = replace(loop, threshold=threshold)
    final = _final_scores(plan, data, result, threshold, depth)
    metadata = version_metadata(plan, data, result, final, base, validation, loop, transfer)
    if not plan.export:
        return None, metadata
    version_dir = export_model(result.model, metadata, plan.model_repo, plan.model_name)
    return version_dir, metadata


def _cut_chips(plan: TrainingPlan, process_rank: int) -> Prepared:
    """Rank 0 cuts and caches the chips; the other ranks then read its cache."""
    rank = None
    if plan.hard_negatives_from is not None:
        rank = hard_negative_ranker(plan.hard_negatives_from, plan.chips)  # its own threshold
    if plan.loop.distributed and process_rank > 0:
        dist.barrier()
    data = prepare(
        plan.sources, plan.chips, Path(plan.cache_dir), plan.block_zoom, plan.val_fraction,
        plan.empty_ratio, plan.loop.seed, plan.tune_fraction, rank,
    )  # fmt: skip
    if plan.loop.distributed and process_rank == 0:
        dist.barrier()
    return data


def _loop_for(plan: TrainingPlan, data: Prepared) -> tuple[TrainConfig, dict[str, Any]]:
    """The loop's configuration for these chips, and a record of what chose the epoch.

    The per-epoch scores drive early stopping and the best epoch, so they come from the
    tune split. Without one, a fine-tune (scored from its starting weights on) picks on
    the validation split, which it says, and a run from scratch keeps its last epoch."""
    loop = plan.loop
    if plan.positive_weight == "auto":
        loop = replace(loop, positive_weight=auto_positive_weight(data, plan.chips))
    elif isinstance(plan.positive_weight, int | float) and plan.positive_weight != 1.0:
        loop = replace(loop, positive_weight=float(plan.positive_weight))
    if data.tune:
        chosen_on = "tune split"
    elif loop.score_start:
        chosen_on = (
            "validation split (a small area leaves no tune split; its scores are "
            "those of the chosen epoch, the starting weights among the candidates)"
        )
    else:
        loop, chosen_on = replace(loop, select_best=False), "none: the last epoch is kept"
    validation = {
        "split": data.summary["method"],
        "block_zoom": data.summary["block_zoom"],
        "val_tiles": data.summary["val_tiles"],
        "tune_tiles": data.summary["tune_tiles"],
        "train_tiles": data.summary["train_tiles"],
        "val_buildings": data.summary["val_buildings"],
        "train_buildings": data.summary["train_buildings"],
        "best_epoch_chosen_on": chosen_on,
    }
    return loop, validation


def auto_positive_weight(data: Prepared, spec: ChipSpec) -> float:
    """The BCE weight of building pixels for a few-positive area: the square root of
    background to building pixels, 1..5 (a weight of the full ratio made the model
    paint yards)."""
    if spec.multiclass:
        return 1.0
    share = positive_share(data.train, spec)
    if share <= 0:
        return 1.0
    return round(min(max(math.sqrt((1 - share) / share), 1.0), 5.0), 3)


def _fit(
    plan: TrainingPlan, data: Prepared, loop: TrainConfig, on_progress: ProgressCallback | None
) -> tuple[TrainResult, dict[str, Any] | None]:
    """The trained model, and what it took from `plan.init_from` (None: fresh)."""
    spec = plan.chips
    model, transfer = build_model(
        spec.classes, spec.border, plan.width, plan.depth, plan.init_from, plan.architecture
    )
    train_set = ChipDataset(data.train, spec, train=True, seed=loop.seed)
    watch = ChipDataset(data.tune or data.val, spec, train=False)
    return train(model, train_set, watch, loop, spec.buffer, on_progress), transfer


def _cut_for(
    plan: TrainingPlan, data: Prepared, result: TrainResult, default: float
) -> tuple[tuple[float, float | None], dict[str, Any]]:
    """The version's building threshold and watershed depth (`model.instances`), and how
    they were chosen: the best object F1 on the tune split, never on validation (its
    scores would then flatter the version). A fine-tune of a small area has no tune split
    and chooses on its validation split, as it chooses its epoch there, and says so: the
    starting version's cut does not fit the tuned weights (on a third of each left-out
    place, keeping it gave the other two thirds object F1 0.164, choosing on the few
    validation tiles 0.235; model_repo/README.md)."""
    if plan.chips.multiclass:
        return (default, None), {"value": default, "chosen_on": "none: classes are an argmax"}
    if data.tune:
        chips, chosen_on = data.tune, "tune split"
    elif plan.init_from is not None and positive_share(data.val, plan.chips) > 0:
        chips = data.val
        chosen_on = (
            "validation split (a small area leaves no tune split; the version's validation "
            "scores are then optimistic)"
        )
    elif plan.init_from is not None:  # no building to choose by: every cut scores 0
        start = read_metadata(plan.init_from)
        cut, depth = float(start["threshold"]), start.get("peak_depth")
        chosen_on = "the starting version's (no tune split, no building in validation)"
        return (cut, depth), {"value": cut, "peak_depth": depth, "chosen_on": chosen_on}
    else:
        return (default, None), {"value": default, "chosen_on": "none: no tune split"}
    loader = DataLoader(ChipDataset(chips, plan.chips, train=False), batch_size=8)
    chosen = choose_cut(result.model, loader, plan.chips.buffer, plan.loop.min_area)
    return (chosen.threshold, chosen.peak_depth), {
        "value": chosen.threshold,
        "peak_depth": chosen.peak_depth,
        "chosen_on": chosen_on,
        "object_f1_by_threshold": chosen.by_threshold,
        "object_f1_by_peak_depth": chosen.by_peak_depth,
    }


def _final_scores(
    plan: TrainingPlan,
    data: Prepared,
    result: TrainResult,
    threshold: float,
    peak_depth: float | None,
) -> dict[str, float]:
    val_set = ChipDataset(data.val, plan.chips, train=False)
    loader = DataLoader(val_set, batch_size=plan.loop.batch_size)
    weights = plan.loop.class_weights
    return validation_scores(
        result.model, loader, plan.chips.buffer, threshold, plan.loop.min_area,
        class_names=plan.chips.classes,
        class_weights=torch.tensor(weights, dtype=torch.float32) if weights else None,
        peak_depth=peak_depth,
    )  # fmt: skip
