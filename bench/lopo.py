"""Leave one place out: how the model does on a place it has never seen.

For each of the four RGB places in ../shared/data/buildings, train on the other three with
one fixed schedule and score the left-out place whole. Every choice inside a fold (the
epoch kept, the split) is made on blocks of the training places; the left-out place is
read only to be scored, after training. The chip cache is shared by the folds, so chips
are cut once.

Run: .venv/bin/python bench/lopo.py [--epochs 25] [--width 8] [--places tanzania,dhaka]
     [--out bench/lopo.json]
Prints one row per fold and the mean; --out keeps the table as JSON.
     .venv/bin/python bench/lopo.py --rescore KEPT   # folds kept by --keep KEPT
chooses each fold's threshold and watershed depth on its own validation blocks and scores
the left-out place with them.

Scoring is `tilesight evaluate`'s (training.scoring.score_version): every tile of the place at
the model's zoom, objects split by `split_instances` and matched at IoU 0.5. An area job
stitches chunks and vectorises polygons instead; the two count the same objects on whole
tiles, but polygons are cleaned, so the job path can differ slightly.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import mercantile
import shapely
import shapely.geometry
import torch
from PIL import Image
from torch.utils.data import DataLoader

from tilesight.model.data import Chip, ChipDataset, ChipSpec, block_of
from tilesight.model.export import load_model, read_metadata
from tilesight.model.sources import Tile, load_footprints, open_imagery, prepare_tiles
from tilesight.training.augment import RECIPES
from tilesight.training.loop import TrainConfig
from tilesight.training.pipeline import TrainingPlan, run_training
from tilesight.training.scoring import Cut, choose_cut, score_version, version_chips
from tilesight.training.spec import TrainingSpec

DATA = Path(os.environ.get("TILESIGHT_SHARED_DATA", Path(__file__).resolve().parents[2] /
            "shared" / "data")) / "buildings"  # fmt: skip

# place -> (imagery, labels): chip folders, except atlanta's single UTM GeoTIFF
PLACES = {
    "tanzania": (DATA / "tanzania", DATA / "tanzania" / "labels.geojson"),
    "nairobi": (DATA / "nairobi", DATA / "nairobi" / "labels.geojson"),
    "dhaka": (DATA / "dhaka", DATA / "dhaka" / "labels.geojson"),
    "atlanta-rgb": (
        DATA / "atlanta-rgb" / "atlanta_nadir10_737201_3736839.tif",
        DATA / "atlanta-rgb" / "labels.geojson",
    ),
}
SCORES = ("object_f1", "object_precision", "object_recall", "pixel_iou")


def folds(places: list[str]) -> list[tuple[str, list[str]]]:
    """(left-out place, training places) for each place: the training places never
    include the one scored."""
    return [(out, [p for p in places if p != out]) for out in places]


def thirds(tiles: list[Tile]) -> tuple[list[Tile], list[Tile]]:
    """(about a third of the tiles, the rest), by whole z18 blocks taken in map order, so
    the fine-tune part is one contiguous stretch of the place, as a user would label."""
    blocks: dict[Tile, list[Tile]] = {}
    for t in sorted(tiles):
        blocks.setdefault(block_of(t, 18), []).append(t)
    part: list[Tile] = []
    for block in sorted(blocks):
        if len(part) >= len(tiles) / 3:
            break
        part += blocks[block]
    if len(part) == len(tiles):  # one block: the place is too small to hold a third out
        part = part[: max(1, len(part) // 3)]
    return part, [t for t in tiles if t not in set(part)]


def place_thirds(place: str) -> tuple[list[Tile], list[Tile]]:
    """A place's z19 tiles as (the labelled third a user would give, the rest scored)."""
    imagery, labels = PLACES[place]
    return thirds(prepare_tiles(open_imagery(imagery), load_footprints(labels), 19))


def finetune_area(place: str, tiles: list[Tile], work: Path) -> tuple[Path, Path]:
    """The fine-tune third as its own chip folder and labels: nothing of the other two
    thirds is readable during the fine-tune, not even as context."""
    imagery, labels = PLACES[place]
    reader = open_imagery(imagery)
    folder = work / f"finetune-{place}"
    folder.mkdir(parents=True, exist_ok=True)
    for x, y, z in tiles:
        pixels, _ = reader.read((x, y, z), 0)
        Image.fromarray(pixels.transpose(1, 2, 0)).save(folder / f"OAM-{x}-{y}-{z}.png")
    area = shapely.union_all([shapely.box(*mercantile.bounds(*t)) for t in tiles])
    features = json.loads(Path(labels).read_text())["features"]
    inside = [f for f in features if shapely.geometry.shape(f["geometry"]).intersects(area)]
    part = folder / "labels.geojson"
    part.write_text(json.dumps({"type": "FeatureCollection", "features": inside}))
    return folder, part


def finetune(
    out: str, version: Path, args: argparse.Namespace, work: Path, cut: Cut | None = None
) -> dict:
    """Fine-tune the fold's model on a third of the left-out place; score the other two
    thirds before (at the fold version's own cut, or at `cut`, chosen in-place by
    --rescore) and after (at the cut the fine-tune chose for itself, as a job would),
    with the defaults a small-area fine-tune uses."""
    how: dict[str, Any] = {"threshold": cut.threshold, "peak_depth": cut.peak_depth} if cut else {}
    imagery, labels = PLACES[out]
    part, rest = place_thirds(out)
    folder, part_labels = finetune_area(out, part, work)
    before = score_version(version, imagery, labels, cache_dir=args.cache, only_tiles=rest, **how)
    spec = TrainingSpec(
        architecture=args.architecture, border=args.border, width=args.width,
        depth=args.depth, epochs=args.ft_epochs, lr=args.ft_lr,
        freeze_encoder_epochs=args.ft_freeze, batch_size=4, empty_ratio=1.0,
        augmentation=args.augment, val_fraction=0.25,
        **({"monitor": args.ft_monitor} if args.ft_monitor else {}),
    )  # fmt: skip
    run = TrainingPlan.from_spec(
        spec, sources=[(folder, part_labels)], model_repo=work / f"repo-{out}",
        model_name="buildings", run_dir=work / f"ft-{out}", cache_dir=work / f"ft-chips-{out}",
        init_from=version, resume=False,
    )  # fmt: skip
    start = time.perf_counter()
    tuned, _ = run_training(run)
    seconds = time.perf_counter() - start
    assert tuned is not None  # one process is rank 0, which exports
    after = score_version(tuned, imagery, labels, cache_dir=args.cache, only_tiles=rest)
    return {
        "ft_tiles": len(part),
        "ft_buildings": len(json.loads(part_labels.read_text())["features"]),
        "ft_s": round(seconds, 1),
        "rest_tiles": len(rest),
        "rest_f1_before": round(float(before["object_f1"]), 4),
        "rest_f1_after": round(float(after["object_f1"]), 4),
        "rest_iou_before": round(float(before["pixel_iou"]), 4),
        "rest_iou_after": round(float(after["pixel_iou"]), 4),
    }


def run_fold(out: str, train_on: list[str], args: argparse.Namespace, work: Path) -> dict:
    """Train on the other places and score the left-out one whole; with --with-third,
    train on a third of it too and score the other two thirds (the fine-tune's split)."""
    sources = [(Path(i), Path(lab)) for i, lab in (PLACES[p] for p in train_on)]
    imagery, labels = PLACES[out]
    rest = None
    if args.with_third:
        part, rest = place_thirds(out)
        sources.append(finetune_area(out, part, work))
    run = TrainingPlan(
        sources=sources,
        model_repo=work / f"repo-{out}",
        chips=ChipSpec(zoom=19, buffer=32, jitter=32, border=args.border),
        architecture=args.architecture,
        width=args.width,
        depth=args.depth,
        loop=TrainConfig(
            epochs=args.epochs,
            batch_size=8,
            lr=args.lr,
            seed=args.seed,
            patience=args.epochs,
            run_dir=work / f"run-{out}",
            resume=False,
            max_steps_per_epoch=args.max_steps,
            augmentation=args.augment,
        ),  # fmt: skip
        cache_dir=args.cache,
        val_fraction=0.2,  # an in-place tune split: blocks of the training places
        tune_fraction=0.2,  # early stopping and the best epoch, on training places only
    )
    start = time.perf_counter()
    version, meta = run_training(run)
    trained_s = time.perf_counter() - start
    assert version is not None  # one process is rank 0, which exports
    scored = score_version(version, imagery, labels, cache_dir=args.cache, only_tiles=rest)
    tuned = finetune(out, version, args, work) if args.finetune else {}
    return {
        **tuned,
        "left_out": out,
        "trained_on": train_on,
        "train_s": round(trained_s, 1),
        "best_epoch": meta["metrics"].get("best_epoch"),
        "in_place_val_object_f1": meta.get("metrics", {}).get("object_f1"),
        **{k: round(float(scored[k]), 4) for k in SCORES},
        "tiles": scored["tiles"],
    }


def val_tiles(version: Path, place: str) -> list[Tile]:
    """The place's tiles in the fold's own validation blocks (inside its training
    places), as the version's metadata lists them."""
    meta = read_metadata(version)
    imagery, labels = PLACES[place]
    name = imagery.stem if imagery.is_file() else imagery.name
    blocks = {b.split(":", 1)[1] for b in meta["split"]["val_blocks"] if b.startswith(name + ":")}
    tiles = prepare_tiles(open_imagery(imagery), load_footprints(labels), meta["zoom"])
    return [t for t in tiles if str(block_of(t, meta["split"]["block_zoom"])) in blocks]


def rescore_fold(out: str, train_on: list[str], args: argparse.Namespace) -> dict:
    """A kept fold model: the threshold, then the watershed depth, with the best object
    F1 over its training places' validation blocks (`choose_cut`, as a training run
    chooses on its tune split; the left-out place is not read for it), then the left-out
    place scored three ways side by side: at 0.5 unsplit (how the fold was trained), at
    the chosen threshold unsplit, and at both chosen."""
    repo = args.rescore / f"repo-{out}" / "buildings"
    version = max((v for v in repo.iterdir() if v.name.isdigit()), key=lambda v: int(v.name))
    model, meta = load_model(version)
    chips: list[Chip] = []
    for p in train_on:
        imagery, labels = PLACES[p]
        spec, found = version_chips(model, meta, imagery, labels, args.cache, val_tiles(version, p))
        chips += found
    loader = DataLoader(ChipDataset(chips, spec, train=False), batch_size=8)
    cut = choose_cut(model, loader, spec.buffer)
    imagery, labels = PLACES[out]
    ways = {"at_0.5": (0.5, None), "threshold": (cut.threshold, None),
            "split": (cut.threshold, cut.peak_depth)}  # fmt: skip
    at = {name: score_version(version, imagery, labels, cache_dir=args.cache, threshold=t,
                              peak_depth=d) for name, (t, d) in ways.items()}  # fmt: skip
    work = args.rescore / "finetune"
    tuned = finetune(out, version, args, work, cut) if args.finetune else {}
    return {
        **tuned,
        "left_out": out,
        "tune_f1_by_threshold": cut.by_threshold,
        "tune_f1_by_peak_depth": cut.by_peak_depth,
        "chosen_threshold": cut.threshold,
        "chosen_peak_depth": cut.peak_depth,
        **{f"{k}_{name}": round(float(at[name][k]), 4) for name in ways for k in SCORES},
    }


def rescore(places: list[str], args: argparse.Namespace) -> None:
    rows = []
    for out, train_on in folds(places):
        rows.append(rescore_fold(out, train_on, args))
        print(json.dumps(rows[-1]), flush=True)
    print("\n| left out | threshold, depth chosen in-place | object F1 at 0.5 | at the threshold "
          "| split too |")  # fmt: skip
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['left_out']} | {r['chosen_threshold']}, {r['chosen_peak_depth']} | "
            f"{r['object_f1_at_0.5']} | {r['object_f1_threshold']} | {r['object_f1_split']} |"
        )
    mean = {k: round(sum(r[k] for r in rows) / len(rows), 4)
            for k in ("object_f1_at_0.5", "object_f1_threshold", "object_f1_split")}  # fmt: skip
    print(
        f"| **mean** | | {mean['object_f1_at_0.5']} | {mean['object_f1_threshold']} "
        f"| {mean['object_f1_split']} |"
    )
    if args.finetune:
        for k in ("rest_f1_before", "rest_f1_after"):
            mean[k] = round(sum(r[k] for r in rows) / len(rows), 4)
        print(f"fine-tune on a third: mean F1 of the rest {mean['rest_f1_before']} -> "
              f"{mean['rest_f1_after']}; per fold " + ", ".join(
                  f"{r['left_out']} {r['rest_f1_before']} -> {r['rest_f1_after']} "
                  f"({r['ft_s']} s)" for r in rows))  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps({"folds": rows, "mean": mean}, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--places", default=",".join(PLACES))
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--architecture", default="unet", help="a name in model.unet.NETWORKS")
    parser.add_argument("--border", action="store_true", help="train a border class too")
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument(
        "--seed", type=int, default=0, help="the run's seed: initial weights, draws, and split"
    )
    parser.add_argument("--augment", default="basic", choices=RECIPES)
    parser.add_argument("--finetune", action="store_true", help="also fine-tune on a third")
    parser.add_argument(
        "--with-third", action="store_true",
        help="train on a third of the left-out place too; score the other two thirds",
    )  # fmt: skip
    # fine-tune: None takes the spec's fine-tune default (tilesight.training.spec)
    parser.add_argument("--ft-epochs", type=int)
    parser.add_argument("--ft-lr", type=float)
    parser.add_argument("--ft-freeze", type=int, help="epochs with a frozen encoder")
    parser.add_argument("--ft-monitor", help="the score that picks the fine-tune's epoch")
    parser.add_argument("--max-steps", type=int, help="cut epochs short (a smoke run)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=Path(".tilesight/chips-lopo"))
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--keep", type=Path, help="keep each fold's model repository here (repo-<left out>/)"
    )
    parser.add_argument(
        "--rescore", type=Path, metavar="KEPT",
        help="train nothing: choose each kept fold's threshold on its own validation blocks "
        "and score the left-out place at it and at 0.5 (with --finetune, also fine-tune "
        "each kept fold on a third of its left-out place)",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    places = args.places.split(",")
    if args.rescore:
        rescore(places, args)
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="lopo-") as tmp:
        work = args.keep or Path(tmp)
        for out, train_on in folds(places):
            row = run_fold(out, train_on, args, work)
            rows.append(row)
            print(json.dumps(row), flush=True)
    mean = {k: round(sum(r[k] for r in rows) / len(rows), 4) for k in SCORES}
    schedule = (
        f"{args.architecture} width {args.width} depth {args.depth}"
        f"{', border class' if args.border else ''}, z19 chips, {args.epochs} epochs max, "
        f"batch 8, lr {args.lr}, augmentation {args.augment}, seed {args.seed}, best epoch "
        "on a tune split of the training places"
        + ("; a third of the left-out place trained on, the other two thirds scored"
           if args.with_third else "")
    )  # fmt: skip
    print(f"\n| left out | {' | '.join(SCORES)} | train s |")
    print(f"|---|{'---|' * (len(SCORES) + 1)}")
    for r in rows:
        print(f"| {r['left_out']} | {' | '.join(str(r[k]) for k in SCORES)} | {r['train_s']} |")
    print(f"| **mean** | {' | '.join(str(mean[k]) for k in SCORES)} | |")
    if args.finetune:
        schedule += (
            f"; fine-tune: {args.ft_epochs or 'default'} epochs, lr {args.ft_lr or 'default'}, "
            f"encoder frozen for {args.ft_freeze or 'default'} (tilesight.training.spec "
            "FINE_TUNE), batch 4, on about a third of the place (whole z18 blocks)"
        )
        print("\n| left out | tiles / buildings tuned on | F1 before | F1 after | fine-tune s |")
        print("|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['left_out']} | {r['ft_tiles']} / {r['ft_buildings']} | "
                  f"{r['rest_f1_before']} | {r['rest_f1_after']} | {r['ft_s']} |")  # fmt: skip
        for k in ("rest_f1_before", "rest_f1_after"):
            mean[k] = round(sum(r[k] for r in rows) / len(rows), 4)
    print(f"\nschedule: {schedule}")
    if args.out:
        args.out.write_text(
            json.dumps({"schedule": schedule, "folds": rows, "mean": mean}, indent=1)
        )


if __name__ == "__main__":
    main()
