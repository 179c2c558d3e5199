"""A whole training run, as the CLI and the Celery task start it: chips, baselines,
training, final evaluation, export. Also `evaluate_version` for any labelled area.

Baselines are fitted on training chips only and scored on the same validation chips
as the model, so the metadata says how much the network adds over trivial rules.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
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
from tilesight.model.labels import load_labels
from tilesight.model.metrics import (
    ClassConfusion,
    SegmentationMetrics,
    apply_colour_threshold,
    fit_colour_threshold,
)
from tilesight.model.sources import Tile, open_imagery, prepare_tiles
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
#: Colours for common land-cover names; other classes take the next of PALETTE.
KNOWN_COLOURS = {
    "building": "#ff3b30", "water": "#1f78b4", "tree": "#1b7837", "trees": "#1b7837",
    "forest": "#1b7837", "grass": "#a6dba0", "impervious": "#8c8c8c", "road": "#8c8c8c",
    "bare": "#d9b38c", "cropland": "#fee08b",
}  # fmt: skip
PALETTE = ["#e41a1c", "#377eb8", "#4daf4a", "#984ea3", "#ff7f00", "#a65628", "#f781bf"]


def class_entries(spec: ChipSpec) -> list[dict[str, str]]:
    """The `classes` of metadata.json: names and colours the overlay draws them in."""
    if not spec.multiclass:
        return BUILDING_CLASSES + ([BORDER_CLASS] if spec.border else [])
    known = ["#000000"] + [KNOWN_COLOURS.get(n.lower(), "") for n in spec.classes[1:]]
    # spare colours unlike the known ones first (PALETTE's red beside the building red
    # would make two classes one on the map), the rest only when classes outnumber them
    distinct = [c for c in PALETTE if all(_colour_gap(c, k) > 100 for k in known if k)]
    spare = iter((distinct + [c for c in PALETTE if c not in distinct]) * 4)
    pairs = zip(spec.classes, known, strict=True)
    return [{"name": n, "color": k or next(spare)} for n, k in pairs]


def _colour_gap(a: str, b: str) -> float:
    """Euclidean distance of two #rrggbb colours in RGB (0..441)."""
    return sum((int(a[i : i + 2], 16) - int(b[i : i + 2], 16)) ** 2 for i in (1, 3, 5)) ** 0.5


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
    hard_negatives_from: Path | None = None  # a version folder whose false positives pick
    export: bool = True


def _core(chip: Chip, spec: ChipSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The tile proper of a chip: image, labels (instances or classes), valid pixels."""
    c, s = spec.context, spec.tile_size
    keys = ("image", spec.label_key, "valid")
    with np.load(chip.path) as z:
        return tuple(z[k][..., c : c + s, c : c + s] for k in keys)


def baselines(train_chips: list[Chip], val_chips: list[Chip], spec: ChipSpec, min_area: int):
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


def _class_baselines(train_chips: list[Chip], val_chips: list[Chip], spec: ChipSpec) -> dict:
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


def hard_negative_ranker(version_dir: Path, spec: ChipSpec, threshold: float | None = None):
    """Scores empty chips by the pixels the model at `version_dir` calls building there:
    every such pixel is a false positive, so the highest scores are the hard negatives."""
    model, meta = load_model(version_dir)
    if model.config.activation == "softmax" or spec.multiclass:
        raise InvalidInput("hard negatives are mined for building models, not multi-class ones")
    cut = threshold if threshold is not None else meta["threshold"]
    b = spec.buffer

    def rank(chips: Sequence[Chip]) -> list[float]:
        loader = DataLoader(ChipDataset(chips, spec, train=False), batch_size=8)
        scores: list[float] = []
        with torch.inference_mode():
            for batch in loader:
                prob = model(batch["image"])[:, 0, b : -b or None, b : -b or None]
                scores += (prob >= cut).flatten(1).sum(1).float().tolist()
        return scores

    return rank


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
    classes = len(class_entries(run.chips))
    activation = "softmax" if run.chips.multiclass else "sigmoid"
    config = UNetConfig(classes=classes, width=run.width, depth=run.depth, activation=activation)
    model = SegmentationModel(config)
    if run.init_from is None:
        return model, None
    names = [c["name"] for c in class_entries(run.chips)]
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
        result = _train_and_export(run, on_progress, process_rank)
        if run.loop.distributed:
            # Leave together: a rank that tore down its gloo group while rank 0 was still
            # exporting was seen to abort ("terminate called without an active exception").
            dist.barrier()
        return result


def _train_and_export(
    run: TrainingRun, on_progress: ProgressCallback | None, process_rank: int
) -> tuple[Path | None, dict[str, Any]]:
    spec = run.chips
    torch.manual_seed(run.loop.seed)
    rank = None
    if run.hard_negatives_from is not None:
        rank = hard_negative_ranker(run.hard_negatives_from, spec)  # at its own threshold
    if run.loop.distributed and process_rank > 0:
        dist.barrier()  # rank 0 cuts and caches the chips; the others then read its cache
    data = prepare(
        run.sources, spec, Path(run.cache_dir), run.block_zoom, run.val_fraction,
        run.empty_ratio, run.loop.seed, run.tune_fraction, rank,
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
    weights = run.loop.class_weights
    final = evaluate_model(
        result.model, loader, spec.buffer, run.loop.threshold, run.loop.min_area,
        class_names=spec.classes,
        class_weights=torch.tensor(weights, dtype=torch.float32) if weights else None,
    )  # fmt: skip
    classes = class_entries(spec)
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
            + (
                "class argmax, means over non-background classes"
                if spec.multiclass
                else f"components >= {run.loop.min_area} px, object match IoU >= 0.5"
                + (", objects split along the predicted border" if spec.border else "")
            ),
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
            "hard_negatives_from": str(run.hard_negatives_from)
            if run.hard_negatives_from
            else None,
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
    only_tiles: Collection[Tile] | None = None,
) -> dict[str, float]:
    """Score a model version on every tile of a labelled area at the model's zoom (or on
    `only_tiles` of it, the part a fine-tune did not see), with the labels read the way
    it was trained (footprints, or its classes)."""
    model, meta = load_model(version_dir)
    chips_meta = meta.get("hyperparameters", {}).get("chips", {})
    multiclass = model.config.activation == "softmax"
    spec = ChipSpec(
        zoom=meta["zoom"], tile_size=meta["tile_size"], buffer=meta["buffer"], jitter=0,
        classes=tuple(c["name"] for c in meta["classes"]) if multiclass else (),
        class_property=chips_meta.get("class_property", "class"),
        ignore_value=chips_meta.get("ignore_value"),
    )  # fmt: skip
    reader = open_imagery(imagery)
    found = load_labels(labels, spec.classes, spec.class_property, spec.ignore_value)
    tiles = prepare_tiles(reader, found.extent(), spec.zoom)
    if only_tiles is not None:
        keep = set(only_tiles)
        tiles = [t for t in tiles if t in keep]
    chips = cache_chips(reader, found, tiles, spec, cache_dir)
    loader = DataLoader(ChipDataset(chips, spec, train=False), batch_size=8)
    thr = threshold if threshold is not None else meta["threshold"]
    scores = evaluate_model(model, loader, spec.buffer, thr, min_area, class_names=spec.classes)
    return {**scores, "tiles": len(chips), "ignore_value": IGNORE}


def _rounded(d: dict) -> dict:
    return {k: _rounded(v) if isinstance(v, dict) else _r(v) for k, v in d.items()}


def _r(v: Any) -> Any:
    return round(v, 4) if isinstance(v, float) else v
