"""Training chips from imagery plus footprint labels, cached on disk, split by blocks.

Each chip is one Web-Mercator tile at the model's zoom read with extra context around
it, and the footprints rasterised on the same pixel grid as building *instances* (so
metrics can count objects and an optional border class can separate touching roofs).
Train and validation are split by blocks of tiles at a coarser zoom, and training
chips never see pixels of validation tiles (they are blanked and ignored by the loss),
so neighbouring tiles cannot leak labels across the split.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import mercantile
import numpy as np
import shapely
import torch
from torch.utils.data import Dataset

from tilesight.errors import InvalidInput
from tilesight.model.labels import IGNORE, LabelSet, read_labels
from tilesight.model.sources import (
    Tile,
    TileReader,
    open_imagery,
    prepare_tiles,
    rasterize_instances,
)


def border_mask(instances: np.ndarray, width: int = 2) -> np.ndarray:
    """Pixels where two different buildings come within `width` px: the class that
    lets a segmentation model separate touching roofs (SpaceNet winners' 'contact')."""
    k = 2 * width + 1
    pad = np.pad(instances, width)
    win = np.lib.stride_tricks.sliding_window_view(pad, (k, k))
    hi = win.max(axis=(-1, -2))
    lo = np.where(win > 0, win, np.iinfo(np.int32).max).min(axis=(-1, -2))
    return (hi > 0) & (lo != np.iinfo(np.int32).max) & (hi != lo)


@dataclass(frozen=True)
class ChipSpec:
    """How chips are cut; part of the cache key and of the model metadata."""

    zoom: int = 19
    tile_size: int = 256
    buffer: int = 32  # context the model sees each side at inference
    jitter: int = 32  # extra context cached so training can shift the crop
    border: bool = False
    border_width: int = 2
    # Multi-class segmentation: class names, background first; empty means buildings.
    classes: tuple[str, ...] = ()
    class_property: str = "class"  # the polygon property that names a class
    ignore_value: int | None = None  # the label raster's value for "not labelled"

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))
        if self.classes and self.border:
            raise InvalidInput("the border class is for building footprints, not multi-class")

    @property
    def context(self) -> int:
        return self.buffer + self.jitter

    @property
    def multiclass(self) -> bool:
        return bool(self.classes)

    @property
    def label_key(self) -> str:
        """The array of a cached chip that holds its labels: class indices or instance ids."""
        return "classes" if self.multiclass else "instances"


@dataclass
class Chip:
    source: str
    tile: Tile
    path: Path
    buildings: int  # footprints (multi-class: foreground classes) inside the tile proper


def block_of(tile: Tile, block_zoom: int) -> Tile:
    x, y, z = tile
    shift = max(z - block_zoom, 0)
    return (x >> shift, y >> shift, z - shift)


def tiles_holding(geoms: Sequence[shapely.Geometry], zoom: int) -> set[Tile]:
    """The tiles a footprint stands in (by a point inside it): a sliver of a roof across
    a tile's edge does not make a tile one to validate buildings on."""
    points = shapely.point_on_surface(np.asarray(geoms, dtype=object))
    xs, ys = shapely.get_x(points), shapely.get_y(points)
    tiles = (mercantile.tile(*mercantile.lnglat(x, y), zoom) for x, y in zip(xs, ys, strict=True))
    return {(t.x, t.y, t.z) for t in tiles}


def split_by_blocks(
    tiles: Iterable[tuple[str, Tile]],
    block_zoom: int,
    val_fraction: float,
    seed: int,
    labelled: Collection[tuple[str, Tile]] = (),
) -> tuple[set[tuple[str, Tile]], set[tuple[str, Tile]]]:
    """Assign whole blocks to validation, per source, so every place is evaluated and no
    validation tile has a training tile from its own block.

    The first block to validation is one holding a `labelled` tile (a building) when two
    or more blocks do, and the last such block always trains: a validation split of empty
    yards scores every epoch and every cut 0, so a small fine-tune would choose them
    blind, and a training split without buildings has nothing to learn."""
    if not 0.0 < val_fraction < 1.0:
        raise InvalidInput(f"val_fraction must be in (0, 1), got {val_fraction}")
    by_source: dict[str, dict[Tile, list[Tile]]] = {}
    for source, tile in tiles:
        by_source.setdefault(source, {}).setdefault(block_of(tile, block_zoom), []).append(tile)
    train: set[tuple[str, Tile]] = set()
    val: set[tuple[str, Tile]] = set()
    rng = random.Random(seed)
    for source in sorted(by_source):
        blocks = sorted(by_source[source])
        rng.shuffle(blocks)
        has = {b: any((source, t) in labelled for t in by_source[source][b]) for b in blocks}
        with_labels = [i for i, b in enumerate(blocks) if has[b]]
        if len(with_labels) == 1:  # the only block with buildings trains: last in line
            blocks.append(blocks.pop(with_labels[0]))
        elif with_labels and with_labels[0] > 0:
            blocks.insert(0, blocks.pop(with_labels[0]))
        left = len(with_labels)  # blocks with buildings still left to train on
        total = sum(len(v) for v in by_source[source].values())
        taken = 0
        for i, block in enumerate(blocks):
            member = by_source[source][block]
            to_val = i == 0 or taken + len(member) <= val_fraction * total
            to_val = to_val and len(blocks) > 1 and not (has[block] and left == 1)
            (val if to_val else train).update((source, t) for t in member)
            taken += len(member) if to_val else 0
            left -= int(to_val and has[block])
    return train, val


def split_small_area(
    tiles: Sequence[tuple[str, Tile]],
    block_zoom: int,
    max_zoom: int,
    val_fraction: float,
    seed: int,
    labelled: Collection[tuple[str, Tile]] = (),
) -> tuple[set[tuple[str, Tile]], set[tuple[str, Tile]], int]:
    """`split_by_blocks` at the coarsest zoom, from `block_zoom` to `max_zoom`, that leaves
    something to validate on without taking more than twice `val_fraction` of a source's
    tiles, and that zoom. A fine-tune on a few tiles of a new place fits in one or two
    z18 blocks, and one of two blocks to validation would leave the other to train on
    (the two-tile Nairobi run once trained on 5 buildings and validated on 52); finer
    blocks still keep validation tiles apart from training tiles (their context is
    blanked), so a small area trains on most of its buildings instead of being refused."""
    per_source = Counter(source for source, _ in tiles)
    for zoom in range(block_zoom, max(block_zoom, max_zoom) + 1):
        train, val = split_by_blocks(tiles, zoom, val_fraction, seed, labelled)
        held = Counter(source for source, _ in val)
        if val and all(n <= 2 * val_fraction * per_source[s] for s, n in held.items()):
            return train, val, zoom
    return train, val, zoom


def _cache_key(*parts: object) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cache_chips(
    reader: TileReader,
    labels: LabelSet | Sequence[shapely.Geometry],
    tiles: Sequence[Tile],
    spec: ChipSpec,
    cache_dir: Path,
    exclude: frozenset[Tile] = frozenset(),
) -> list[Chip]:
    """Read and rasterise each tile once; later runs load the .npz files instead.

    Building chips hold footprint instance ids; multi-class chips a class map."""
    if not isinstance(labels, LabelSet):
        labels = LabelSet(list(labels))
    if labels.multiclass != spec.multiclass:
        raise InvalidInput("class names are given but the labels are footprints, or vice versa")
    cache_dir.mkdir(parents=True, exist_ok=True)
    chips = []
    c, s = spec.context, spec.tile_size
    fingerprint = labels.fingerprint()
    for tile in tiles:
        near = sorted(t for t in exclude if max(abs(t[0] - tile[0]), abs(t[1] - tile[1])) <= 1)
        key = _cache_key(reader.name, tile, asdict(spec), near, fingerprint)
        path = cache_dir / f"{reader.name}-{tile[2]}-{tile[0]}-{tile[1]}-{key}.npz"
        if not path.exists():
            image, valid = reader.read(tile, c, exclude)
            if spec.multiclass:
                target = labels.class_map(tile, s, c)
            else:
                hits = [labels.geoms[i] for i in labels.near(tile, s, c)]
                target = rasterize_instances(hits, tile, s, c)
            # unique per process: torchrun ranks or two jobs may cache the same chip at once
            tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
            arrays = {"image": image, "valid": valid, spec.label_key: target}
            np.savez_compressed(tmp, **arrays)  # type: ignore[arg-type]
            tmp.rename(path)
        with np.load(path) as z:
            core = z[spec.label_key][c : c + s, c : c + s]
        labelled = (core > 0) & (core != IGNORE) if spec.multiclass else core > 0
        found = np.unique(core[labelled])  # instance id 255 is a building, not IGNORE
        chips.append(Chip(reader.name, tile, path, int(len(found))))
    return chips


#: Scores empty chips for hard-negative mining: higher = more wrongly predicted pixels.
EmptyRanker = Callable[[Sequence[Chip]], Sequence[float]]


def keep_empty(
    chips: list[Chip], ratio: float, seed: int, rank: EmptyRanker | None = None
) -> list[Chip]:
    """All chips with buildings plus at most `ratio` empty chips per non-empty one.

    Empty chips are drawn at random, or with `rank` (hard-negative mining) the ones a
    model gets most wrong come first: bright roads, bare soil and shadows that look like
    roofs teach more than a hundredth field of grass."""
    full = [c for c in chips if c.buildings]
    empty = [c for c in chips if not c.buildings]
    random.Random(seed).shuffle(empty)
    if rank is not None and empty:
        scores = list(rank(empty))
        order = sorted(range(len(empty)), key=lambda i: -scores[i])
        empty = [empty[i] for i in order]
    return full + empty[: int(round(ratio * len(full)))]


class ChipDataset(Dataset):
    """Chips as tensors: uint8 image [3, S, S], target (buildings: float [C, S, S];
    multi-class: int64 class index [S, S]; IGNORE where the pixel has no imagery or no
    label), int32 instances [S, S]. S = tile_size + 2 * buffer; training crops at a random
    offset within the cached jitter, evaluation crops the centre."""

    def __init__(self, chips: Sequence[Chip], spec: ChipSpec, train: bool, seed: int = 0):
        self.chips, self.spec, self.train = list(chips), spec, train
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.chips)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        spec = self.spec
        with np.load(self.chips[i].path) as z:
            image, valid = z["image"], z["valid"]
            inst = z[spec.label_key]
        size = spec.tile_size + 2 * spec.buffer
        if self.train and spec.jitter:
            r, c = self.rng.integers(0, 2 * spec.jitter + 1, size=2)
        else:
            r = c = spec.jitter
        image = image[:, r : r + size, c : c + size]
        valid = valid[r : r + size, c : c + size]
        inst = inst[r : r + size, c : c + size]
        if spec.multiclass:  # class indices, long [S, S]
            target = np.where(valid, inst, IGNORE).astype(np.int64)
            inst = np.zeros(inst.shape, np.int32)
        else:  # one float layer per class, [C, S, S]
            layers = [inst > 0] + ([border_mask(inst, spec.border_width)] if spec.border else [])
            target = np.stack(layers).astype(np.float32)
            target[:, ~valid] = IGNORE
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image)),
            "target": torch.from_numpy(target),
            "instances": torch.from_numpy(np.ascontiguousarray(inst)),
        }


@dataclass
class Prepared:
    """The chips of one training run and a record of how they were chosen."""

    train: list[Chip]
    val: list[Chip]
    tune: list[Chip]  # blocks held out of training for early stopping; may be empty
    summary: dict


def prepare(
    sources: Sequence[tuple[str | Path, str | Path]],
    spec: ChipSpec,
    cache_dir: Path,
    block_zoom: int = 18,
    val_fraction: float = 0.25,
    empty_ratio: float = 0.25,
    seed: int = 0,
    tune_fraction: float = 0.0,
    rank_empty: EmptyRanker | None = None,
) -> Prepared:
    """Cover each (imagery, labels) pair's labelled area with tiles, split by blocks,
    and cache chips; training chips are read with held-out tiles blanked out.

    With `tune_fraction`, a further share of the *training* blocks becomes a tune split
    for early stopping and picking the best epoch, so validation is looked at once."""
    readers, footprints, tiles = {}, {}, []
    labelled: set[tuple[str, Tile]] = set()  # tiles a building stands in
    for imagery, labels in sources:
        reader = open_imagery(imagery)
        if reader.name in readers:
            raise InvalidInput(f"two sources are named {reader.name}; rename one folder")
        found_labels = read_labels(labels, spec.classes, spec.class_property, spec.ignore_value)
        found = prepare_tiles(reader, found_labels.extent(), spec.zoom)
        readers[reader.name], footprints[reader.name] = reader, found_labels
        tiles += [(reader.name, t) for t in found]
        if found_labels.raster is None:  # a class raster's extent is all labelled
            labelled.update((reader.name, t) for t in tiles_holding(found_labels.geoms, spec.zoom))
    requested = block_zoom
    train_keys, val_keys, block_zoom = split_small_area(
        tiles, block_zoom, spec.zoom, val_fraction, seed, labelled
    )
    if not val_keys:
        raise InvalidInput(
            f"the labelled area is {len(tiles)} tile(s) of zoom {spec.zoom}, so nothing is left "
            "to validate on; label at least two tiles",
            tiles=len(tiles),
        )
    tune_keys: set[tuple[str, Tile]] = set()
    if tune_fraction:
        train_keys, tune_keys = split_by_blocks(
            train_keys, block_zoom, tune_fraction, seed + 1, labelled
        )
    train, val, tune = [], [], []
    for name, reader in readers.items():
        t_tiles = sorted(t for src, t in train_keys if src == name)
        v_tiles = sorted(t for src, t in val_keys if src == name)
        u_tiles = sorted(t for src, t in tune_keys if src == name)
        sub, fn = cache_dir / f"z{spec.zoom}", footprints[name]
        train += cache_chips(reader, fn, t_tiles, spec, sub, frozenset(v_tiles + u_tiles))
        tune += cache_chips(reader, fn, u_tiles, spec, sub, frozenset(v_tiles))
        val += cache_chips(reader, fn, v_tiles, spec, sub)
    kept = keep_empty(train, empty_ratio, seed, rank_empty)
    summary = {
        "method": f"blocks of tiles at zoom {block_zoom}, whole blocks to validation per "
        f"source, a block holding a building first (seed {seed}, target fraction "
        f"{val_fraction}); training chips read with "
        "held-out tiles blanked and ignored by the loss"
        + (f"; tune split: {tune_fraction} of training blocks (seed {seed + 1})" if tune else ""),
        "block_zoom": block_zoom,
        "block_zoom_requested": requested,
        "seed": seed,
        "val_fraction": val_fraction,
        "empty_ratio": empty_ratio,
        "empty_chosen": "hard negatives (most false positives first)" if rank_empty else "random",
        "train_tiles": len(kept),
        "train_tiles_empty_dropped": len(train) - len(kept),
        "val_tiles": len(val),
        "tune_tiles": len(tune),
        "val_blocks": sorted({f"{s}:{block_of(t, block_zoom)}" for s, t in val_keys}),
        "train_buildings": sum(c.buildings for c in kept),
        "val_buildings": sum(c.buildings for c in val),
    }
    return Prepared(kept, val, tune, summary)
