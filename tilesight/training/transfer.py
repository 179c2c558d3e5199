"""The model a run trains: fresh, or seeded from an earlier version (a fine-tune).

`fresh_model` is the one place training builds a network, so a new architecture plugs
in there; weights move between versions only within one architecture and shape."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tilesight.errors import InvalidInput
from tilesight.model.export import load_model, read_metadata
from tilesight.model.unet import NETWORKS, SegmentationModel, UNetConfig
from tilesight.overlay import class_entries


def fresh_model(
    classes: int, width: int, depth: int, activation: str = "sigmoid", architecture: str = "unet"
) -> SegmentationModel:
    """A newly initialised network of the given head, width and depth."""
    check_architecture(architecture)
    config = UNetConfig(
        name=architecture, classes=classes, width=width, depth=depth, activation=activation
    )
    return SegmentationModel(config)


def check_architecture(name: str) -> None:
    """A network name the model code registers, refused by name before any work."""
    if name not in NETWORKS:
        raise InvalidInput(
            f"no architecture {name!r}: choose one of {', '.join(sorted(NETWORKS))}",
            architectures=sorted(NETWORKS),
        )


def check_init_from(
    version_dir: Path, width: int, depth: int, in_channels: int = 3, architecture: str = "unet"
) -> dict[str, Any]:
    """The metadata of the version a run would start from, once its network has the
    shape the run asks for: across another architecture, width, depth or input, no layer
    but the head could transfer, so such a run is refused before any chips are cut."""
    meta = read_metadata(version_dir)
    arch = {"name": "unet", **meta.get("architecture", {})}  # unnamed versions are U-Nets
    want = {"name": architecture, "width": width, "depth": depth, "in_channels": in_channels}
    differ = [k for k, v in want.items() if arch.get(k) != v]
    if differ:
        has = ", ".join(f"{k} {arch.get(k)}" for k in differ)
        asks = ", ".join(f"{k} {want[k]}" for k in differ)
        raise InvalidInput(
            f"cannot start from {version_dir}: its U-Net has {has}, this run asks for {asks}; "
            "weights transfer only within one architecture: train with width "
            f"{arch.get('width')} and depth {arch.get('depth')} ({arch.get('name')}), "
            "or from scratch",
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
    meta = check_init_from(version_dir, config.width, config.depth, config.in_channels, config.name)
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
    rows = [] if same_head else _keep_head_rows(model, base, base_classes, class_names)
    return model, {
        "version_dir": str(version_dir),
        "name": meta.get("name"),
        "version": meta.get("version"),
        "classes": base_classes,
        "tensors_loaded": len(loaded),
        "tensors_fresh": sorted(set(own) - set(loaded)),
        "head_classes_kept": rows,
    }


def _keep_head_rows(
    model: SegmentationModel, base: SegmentationModel, base_classes: list[str], names: list[str]
) -> list[str]:
    """Copy the head's output channels of the classes both models predict (a building
    model's building channel into a building + border model), so a fine-tune that adds a
    class starts from the base's buildings instead of from nothing: a fresh head, with
    the encoder frozen and a fine-tune's few steps, ended at object F1 0 on the three
    places tried (model_repo/README.md). Only sigmoid heads: a softmax row means nothing
    without its siblings."""
    if base.config.activation != "sigmoid" or model.config.activation != "sigmoid":
        return []
    ours, theirs = model.net.head, base.net.head  # type: ignore[union-attr]
    if not isinstance(ours, nn.Conv2d) or not isinstance(theirs, nn.Conv2d):
        return []
    if ours.weight.shape[1:] != theirs.weight.shape[1:]:
        return []
    kept = []
    with torch.no_grad():
        for j, name in enumerate(names):
            if name in base_classes and j < ours.out_channels:
                i = base_classes.index(name)
                ours.weight[j] = theirs.weight[i]
                if ours.bias is not None and theirs.bias is not None:
                    ours.bias[j] = theirs.bias[i]
                kept.append(name)
    return kept


def build_model(
    classes: tuple[str, ...],
    border: bool,
    width: int,
    depth: int,
    init_from: Path | None = None,
    architecture: str = "unet",
) -> tuple[SegmentationModel, dict[str, Any] | None]:
    """The model a run trains, and what it took from `init_from` (None: fresh).
    `classes` empty means buildings (with a border class when `border`)."""
    names = [c["name"] for c in class_entries(classes, border)]
    activation = "softmax" if classes else "sigmoid"
    model = fresh_model(len(names), width, depth, activation, architecture)
    if init_from is None:
        return model, None
    return transfer_weights(model.config, init_from, names)


def encoder_parameters(model: SegmentationModel) -> list[nn.Parameter]:
    """What every registered network names its encoder: frozen first in a fine-tune."""
    params: list[nn.Parameter] = model.net.encoder_parameters()  # type: ignore[operator]
    return params


def batchnorms(model: SegmentationModel, encoder_only: bool) -> list[nn.Module]:
    """The BatchNorm layers of the model, or of its encoder alone."""
    ids = {id(p) for p in encoder_parameters(model)} if encoder_only else None
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        and (ids is None or all(id(p) in ids for p in m.parameters(recurse=False)))
    ]
