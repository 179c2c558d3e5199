"""A whole training run, as the CLI and the Celery task start it: chips, baselines,
training, final evaluation, export. Also `evaluate_version` for any labelled area.

Baselines are fitted on training chips only and scored on the same validation chips
as the model, so the metadata says how much the network adds over trivial rules.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from tilesight.errors import InvalidInput
from tilesight.model.data import IGNORE, Chip, ChipDataset, ChipSpec, cache_chips, prepare
from tilesight.model.export import export_model, load_model, read_metadata
from tilesight.model.metrics import (
    SegmentationMetrics,
    apply_colour_threshold,
    fit_colour_threshold,
)
from tilesight.model.sources import load_footprints, open_imagery, prepare_tiles
from tilesight.model.train import (
    ProgressCallback,
    TrainConfig,
    evaluate_model,
    process_group,
    train,
)
from tilesight.model.unet import SegmentationModel, UNetConfig

BUILDING_CLASSES = [{"name": "building", "color": "#ff3b30"}]
BORDER_CLASS = {"name": "border", "color": "#ffd60a"}


@dataclass
class TrainingRun:
    """Everything that defines a model version; stored (as text) in its metadata."""

    sources: list[tuple[Path, Path]]  # (imagery, labels GeoJSON) pairs
    model_repo: Path
    model_name: str = "buildings"
    chips: ChipSpec = field(default_factory=ChipSpec)
    width: int = 16
    depth: int = 4
    loop: TrainConfig = field(default_factory=TrainConfig)
    cache_dir: Path = Path(".tilesight/chips")
    block_zoom: int = 18
    val_fraction: float = 0.25
    empty_ratio: float = 0.25
    tune_fraction: float = 0.2  # of training blocks, for early stopping; 0: last epoch
    init_from: Path | None = None  # a version folder to fine-tune from
    export: bool = True


def _core(chip: Chip, spec: ChipSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    c, s = spec.context, spec.tile_size
    with np.load(chip.path) as z:
        return tuple(z[k][..., c : c + s, c : c + s] for k in ("image", "instances", "valid"))


def baselines(train_chips: list[Chip], val_chips: list[Chip], spec: ChipSpec, min_area: int):
    """Scores of 'no buildings anywhere' and of the best colour rule (fitted on train)."""
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


def data_licence(imagery: Path) -> dict[str, str]:
    """Licence and attribution lines from the README that ships with the data (the
    nearest one above the imagery), so they travel into the model metadata."""
    for folder in [Path(imagery).resolve(), *Path(imagery).resolve().parents][:4]:
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


def check_init_from(
    version_dir: Path, width: int, depth: int, in_channels: int = 3
) -> dict[str, Any]:
    """The metadata of the version a run would start from, once its U-Net has the shape
    the run asks for: across another width, depth or input, no layer but the head could
    transfer, so such a run is refused before any chips are cut."""
    meta = read_metadata(version_dir)
    arch = meta.get("architecture", {})
    want = {"name": "unet", "width": width, "depth": depth, "in_channels": in_channels}
    differ = [k for k, v in want.items() if arch.get(k) != v]
    if differ:
        has = ", ".join(f"{k} {arch.get(k)}" for k in differ)
        asks = ", ".join(f"{k} {want[k]}" for k in differ)
        raise InvalidInput(
            f"cannot start from {version_dir}: its U-Net has {has}, this run asks for {asks}; "
            "weights transfer only within one architecture: train with width "
            f"{arch.get('width')} and depth {arch.get('depth')}, or from scratch",
            fields=differ,
        )
    return meta


def transfer_weights(
    config: UNetConfig, version_dir: Path, class_names: list[str]
) -> tuple[SegmentationModel, dict[str, Any]]:
    """A model of `config` seeded from the version at `version_dir`: every tensor whose
    name and shape match is copied, the rest start fresh, so a building model seeds all
    of a building + border model but its head. A head of the same shape is kept only
    when it predicts the same classes. The input scaling is the base's, which its
    weights expect. Returns the model and what was loaded, for the metadata."""
    meta = check_init_from(version_dir, config.width, config.depth, config.in_channels)
    base, _ = load_model(version_dir)
    model = SegmentationModel(replace(config, mean=base.config.mean, std=base.config.std))
    base_classes = [c["name"] for c in meta["classes"]]
    same_head = base_classes == class_names and base.config.activation == config.activation
    own = model.state_dict()
    loaded = {
        k: v
        for k, v in base.state_dict().items()
        if k in own and v.shape == own[k].shape and (same_head or not k.startswith("net.head."))
    }
    model.load_state_dict(loaded, strict=False)
    return model, {
        "version_dir": str(version_dir),
        "name": meta.get("name"),
        "version": meta.get("version"),
        "classes": base_classes,
        "tensors_loaded": len(loaded),
        "tensors_fresh": sorted(set(own) - set(loaded)),
    }


def build_model(run: TrainingRun) -> tuple[SegmentationModel, dict[str, Any] | None]:
    """The model a run trains, and what it took from `run.init_from` (None: fresh)."""
    classes = 2 if run.chips.border else 1
    model = SegmentationModel(UNetConfig(classes=classes, width=run.width, depth=run.depth))
    if run.init_from is None:
        return model, None
    names = [c["name"] for c in BUILDING_CLASSES + ([BORDER_CLASS] if run.chips.border else [])]
    return transfer_weights(model.config, run.init_from, names)


def run_training(
    run: TrainingRun, on_progress: ProgressCallback | None = None
) -> tuple[Path | None, dict[str, Any]]:
    """Train, evaluate and export one version; returns (version folder, metadata).

    Under torchrun every rank calls it: rank 0 cuts the chips while the others wait,
    all train, and rank 0 alone scores and exports; the others return (None, {})."""
    if run.init_from is not None:  # a shape mismatch is refused before any work
        check_init_from(run.init_from, run.width, run.depth)
    with process_group(run.loop.distributed) as (process_rank, _):
        return _train_and_export(run, on_progress, process_rank)


def _train_and_export(
    run: TrainingRun, on_progress: ProgressCallback | None, process_rank: int
) -> tuple[Path | None, dict[str, Any]]:
    spec = run.chips
    torch.manual_seed(run.loop.seed)
    if run.loop.distributed and process_rank > 0:
        dist.barrier()  # rank 0 cuts and caches the chips; the others then read its cache
    data = prepare(
        run.sources, spec, Path(run.cache_dir), run.block_zoom, run.val_fraction,
        run.empty_ratio, run.loop.seed, run.tune_fraction,
    )  # fmt: skip
    if run.loop.distributed and process_rank == 0:
        dist.barrier()
    base = baselines(data.train, data.val, spec, run.loop.min_area) if process_rank == 0 else {}
    model, transfer = build_model(run)
    train_set = ChipDataset(data.train, spec, train=True, seed=run.loop.seed)
    val_set = ChipDataset(data.val, spec, train=False)
    # The loop's per-epoch scores drive early stopping and the best epoch, so they come
    # from the tune split; without one, no epoch is chosen and the last one is kept.
    loop = run.loop if data.tune else replace(run.loop, select_best=False)
    watch = ChipDataset(data.tune, spec, train=False) if data.tune else val_set
    result = train(model, train_set, watch, loop, spec.buffer, on_progress)
    if process_rank != 0:  # one version per run: rank 0 scores and exports it
        return None, {}
    loader = DataLoader(val_set, batch_size=run.loop.batch_size)
    final = evaluate_model(result.model, loader, spec.buffer, run.loop.threshold, run.loop.min_area)
    classes = BUILDING_CLASSES + ([BORDER_CLASS] if spec.border else [])
    licences = [data_licence(imagery) for imagery, _ in run.sources]
    metadata = {
        "classes": classes,
        "zoom": spec.zoom,
        "tile_size": spec.tile_size,
        "buffer": spec.buffer,
        "threshold": run.loop.threshold,
        "metrics": {
            **{k: round(v, 4) for k, v in final.items()},
            "evaluated_on": f"validation split: {len(data.val)} tiles, core 256 px, "
            f"components >= {run.loop.min_area} px, object match IoU >= 0.5",
            "best_epoch": result.best_epoch,
            "epochs_run": len(result.history),
            "baselines": _rounded(base),
            "history_split": "tune" if data.tune else "validation (not used for choices)",
            "history": result.history,
        },
        "training_data": {
            "sources": [str(i) for i, _ in run.sources],
            "labels": [str(lb) for _, lb in run.sources],
            "licence": licences[0]["licence"] if licences else "unknown",
            "attribution": licences[0]["attribution"] if licences else "",
            "per_source": licences,
        },
        "split": data.summary,
        "hyperparameters": {
            "chips": asdict(spec),
            "loop": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(run.loop).items()},
            "init_from": transfer,
            "world_size": result.world_size,
            "effective_batch_size": result.effective_batch,
            "effective_lr": run.loop.lr * result.world_size,  # linear scaling rule
        },
    }
    if not run.export:
        return None, metadata
    version_dir = export_model(result.model, metadata, run.model_repo, run.model_name)
    return version_dir, metadata


def evaluate_version(
    version_dir: Path,
    imagery: Path,
    labels: Path,
    cache_dir: Path = Path(".tilesight/chips"),
    threshold: float | None = None,
    min_area: int = 10,
) -> dict[str, float]:
    """Score a model version on every tile of a labelled area at the model's zoom."""
    model, meta = load_model(version_dir)
    spec = ChipSpec(zoom=meta["zoom"], tile_size=meta["tile_size"], buffer=meta["buffer"], jitter=0)
    reader, geoms = open_imagery(imagery), load_footprints(labels)
    chips = cache_chips(reader, geoms, prepare_tiles(reader, geoms, spec.zoom), spec, cache_dir)
    loader = DataLoader(ChipDataset(chips, spec, train=False), batch_size=8)
    thr = threshold if threshold is not None else meta["threshold"]
    scores = evaluate_model(model, loader, spec.buffer, thr, min_area)
    return {**scores, "tiles": len(chips), "ignore_value": IGNORE}


def _rounded(d: dict) -> dict:
    return {k: _rounded(v) if isinstance(v, dict) else _r(v) for k, v in d.items()}


def _r(v: Any) -> Any:
    return round(v, 4) if isinstance(v, float) else v
