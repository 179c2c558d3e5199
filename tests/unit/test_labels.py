"""Multi-class labels (tilesight.model.labels) on real chips: label rasters in a projected
CRS and class-tagged polygons lined up with the real footprints, and a tiny run that
trains on them, exports and evaluates a three-class model.

The labels are built from the real Tanzania footprints: class 1 "building" is the
footprint, class 2 "yard" a 2 m ring around it, class 0 the background.
"""

from __future__ import annotations

import json
from pathlib import Path

import mercantile
import numpy as np
import pyproj
import pytest
import rasterio
import shapely
import torch
from rasterio.features import rasterize
from rasterio.transform import from_origin
from shapely.geometry import mapping, shape

from tilesight.errors import InvalidInput
from tilesight.model.data import Chip, ChipDataset, ChipSpec, cache_chips
from tilesight.model.export import load_model, read_metadata
from tilesight.model.labels import IGNORE, read_labels
from tilesight.model.sources import ChipFolder, load_footprints, prepare_tiles, tile_transform
from tilesight.overlay import Style, hex_rgb, render
from tilesight.training.loop import TrainConfig
from tilesight.training.pipeline import TrainingPlan, run_training
from tilesight.training.scoring import score_version

DATA = Path(__file__).resolve().parents[1] / "data" / "buildings" / "tanzania"
NAMES = ("background", "building", "yard")
SPEC = ChipSpec(zoom=19, buffer=32, jitter=0, classes=NAMES)
UTM = "EPSG:32737"  # UTM 37S: the chips lie at 39.24 E, 6.04 S
RES = 0.15  # metres per label-raster pixel, half a z19 pixel here
MARGIN = 5.0  # metres of raster beyond the 2x2 block: less than the 32 px of context
YARD = 2.0  # metres of yard ring around each building
STRIP = (40.0, 50.0)  # metres below the raster's top edge: the unlabelled strip
UNLABELLED = 99  # the raster's ignore value


def _to(crs_from: str, crs_to: str) -> pyproj.Transformer:
    return pyproj.Transformer.from_crs(crs_from, crs_to, always_xy=True)


def _project(geom: shapely.Geometry, transformer: pyproj.Transformer) -> shapely.Geometry:
    return shapely.transform(
        geom, lambda c: np.column_stack(transformer.transform(c[:, 0], c[:, 1]))
    )


@pytest.fixture(scope="module")
def footprints_utm() -> list[shapely.Geometry]:
    features = json.loads((DATA / "labels.geojson").read_text())["features"]
    to_utm = _to("EPSG:4326", UTM)
    return [_project(shape(f["geometry"]), to_utm) for f in features]


@pytest.fixture(scope="module")
def reader() -> ChipFolder:
    return ChipFolder(DATA)


@pytest.fixture(scope="module")
def building_chips(reader: ChipFolder, tmp_path_factory: pytest.TempPathFactory) -> list[Chip]:
    """The footprint instances on the same tiles and grid, the truth to compare against."""
    geoms = load_footprints(DATA / "labels.geojson")
    spec = ChipSpec(zoom=19, buffer=32, jitter=0)
    tiles = prepare_tiles(reader, geoms, 19)
    return cache_chips(reader, geoms, tiles, spec, tmp_path_factory.mktemp("building-chips"))


def write_label_raster(
    path: Path, reader: ChipFolder, footprints: list[shapely.Geometry], extra: int | None = None
) -> float:
    """A uint8 class raster in UTM over the chips: yard rings drawn first, buildings over
    them, a horizontal strip of UNLABELLED; `extra` paints a 3 m square of that value in
    the middle. Returns the raster's top edge (northing)."""
    to_utm = _to("EPSG:4326", UTM)
    west, south, east, north = _bounds(reader)
    xs, ys = to_utm.transform([west, east, west, east], [south, south, north, north])
    left, top = min(xs) - MARGIN, max(ys) + MARGIN
    width = int((max(xs) + MARGIN - left) / RES)
    height = int((top - (min(ys) - MARGIN)) / RES)
    transform = from_origin(left, top, RES, RES)
    shapes = [(g.buffer(YARD), 2) for g in footprints] + [(g, 1) for g in footprints]
    values = rasterize(shapes, out_shape=(height, width), transform=transform, dtype="uint8")
    northing = top - (np.arange(height) + 0.5) * RES
    values[(northing < top - STRIP[0]) & (northing > top - STRIP[1]), :] = UNLABELLED
    if extra is not None:
        r, c, k = height // 2, width // 2, int(1.5 / RES)
        values[r - k : r + k, c - k : c + k] = extra
    profile = dict(driver="GTiff", width=width, height=height, count=1, dtype="uint8")
    with rasterio.open(path, "w", crs=UTM, transform=transform, **profile) as dst:
        dst.write(values, 1)
    return top


def _bounds(reader: ChipFolder) -> tuple[float, float, float, float]:
    boxes = [mercantile.bounds(*t) for t in reader.index]
    return (
        min(b.west for b in boxes),
        min(b.south for b in boxes),
        max(b.east for b in boxes),
        max(b.north for b in boxes),
    )


def _class_map(chip: Chip) -> np.ndarray:
    with np.load(chip.path) as z:
        return z["classes"]


def _instances(chip: Chip) -> np.ndarray:
    with np.load(chip.path) as z:
        return z["instances"]


def _agreement(classes: np.ndarray, instances: np.ndarray) -> tuple[float, float]:
    """(share of footprint pixels labelled building, share of building pixels inside a
    footprint), over the labelled pixels."""
    labelled = classes != IGNORE
    ours, truth = (classes == 1) & labelled, (instances > 0) & labelled
    both = (ours & truth).sum()
    return both / truth.sum(), both / ours.sum()


# --- a label raster in a projected CRS --------------------------------------------------


@pytest.fixture(scope="module")
def raster_chips(
    reader: ChipFolder,
    footprints_utm: list[shapely.Geometry],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[list[Chip], float]:
    folder = tmp_path_factory.mktemp("raster")
    top = write_label_raster(folder / "classes.tif", reader, footprints_utm)
    labels = read_labels(folder / "classes.tif", NAMES, ignore_value=UNLABELLED)
    assert labels.multiclass and labels.raster is not None
    tiles = prepare_tiles(reader, labels.extent(), 19)
    return cache_chips(reader, labels, tiles, SPEC, folder / "chips"), top


def test_label_raster_lines_up_with_the_footprints(
    raster_chips: tuple[list[Chip], float], building_chips: list[Chip]
) -> None:
    chips, _ = raster_chips
    assert [c.tile for c in chips] == [c.tile for c in building_chips] and len(chips) == 4
    for chip, truth in zip(chips, building_chips, strict=True):
        classes = _class_map(chip)
        assert classes.shape == (320, 320) and classes.dtype == np.uint8
        recall, precision = _agreement(classes, _instances(truth))
        assert recall >= 0.95 and precision >= 0.95, (chip.tile, recall, precision)
        core = classes[32:-32, 32:-32]
        assert set(np.unique(core)) <= {0, 1, 2, IGNORE}
        assert (core == 2).sum() > 1000  # the yard rings came through
        assert chip.buildings == 2  # foreground classes present in the tile proper


def test_label_raster_strip_and_outside_are_ignored(
    raster_chips: tuple[list[Chip], float],
) -> None:
    chips, top = raster_chips
    to_utm = _to("EPSG:3857", UTM)
    seen_strip = 0
    for chip in chips:
        classes = _class_map(chip)
        # each chip pixel's centre in UTM, to say where it falls on the raster
        transform = tile_transform(chip.tile, 256, SPEC.context)
        cols, rows = np.meshgrid(np.arange(320) + 0.5, np.arange(320) + 0.5)
        x, y = transform * (cols, rows)
        _, northing = to_utm.transform(x, y)
        below_top = top - northing
        inside = (below_top > STRIP[0] + 0.5) & (below_top < STRIP[1] - 0.5)
        outside = ((below_top < STRIP[0] - 0.5) | (below_top > STRIP[1] + 0.5)) & (below_top > 0.5)
        seen_strip += int(inside.sum())
        assert (classes[inside] == IGNORE).all()
        # off the strip, only pixels beyond the raster's edges are unlabelled
        ignored = (classes == IGNORE) & outside
        assert ignored[32:-32, 32:-32].sum() == 0
        assert (classes[below_top < -0.5] == IGNORE).all()  # north of the raster
    assert seen_strip > 10_000


def test_label_raster_value_beyond_the_classes_is_refused(
    reader: ChipFolder, footprints_utm: list[shapely.Geometry], tmp_path: Path
) -> None:
    write_label_raster(tmp_path / "seven.tif", reader, footprints_utm, extra=7)
    labels = read_labels(tmp_path / "seven.tif", NAMES, ignore_value=UNLABELLED)
    tiles = prepare_tiles(reader, labels.extent(), 19)
    with pytest.raises(InvalidInput, match=r"\[7\]") as raised:
        cache_chips(reader, labels, tiles, SPEC, tmp_path / "chips")
    assert raised.value.detail["values"] == [7] and "3 classes" in raised.value.message
    # the same raster is read once eight classes (0..7) are named
    eight = (*NAMES, "c3", "c4", "c5", "c6", "seven")
    labels = read_labels(tmp_path / "seven.tif", eight, ignore_value=UNLABELLED)
    spec = ChipSpec(zoom=19, buffer=32, jitter=0, classes=eight)
    chips = cache_chips(reader, labels, tiles, spec, tmp_path / "eight")
    assert any((_class_map(c) == 7).any() for c in chips)


def test_a_raster_that_is_not_a_class_raster_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "float.tif"
    profile = dict(driver="GTiff", width=4, height=4, count=1, dtype="float32", crs=UTM)
    with rasterio.open(path, "w", transform=from_origin(526800, 9332100, 1, 1), **profile) as d:
        d.write(np.zeros((1, 4, 4), np.float32))
    with pytest.raises(InvalidInput, match="integer class values"):
        read_labels(path, NAMES)
    with pytest.raises(InvalidInput, match="at least two classes"):
        read_labels(path, ("background",))


# --- class-tagged polygons --------------------------------------------------------------


def write_class_polygons(path: Path, footprints: list[shapely.Geometry]) -> None:
    """Buildings first and yards after them in the file, so the file order alone would
    bury every building under its yard; plus features of a class nobody asked for."""
    to_ll = _to(UTM, "EPSG:4326")
    features = [("Building", g) for g in footprints] + [
        ("yard", g.buffer(YARD)) for g in footprints
    ]
    features += [("car", footprints[0].centroid.buffer(1.0))]
    path.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "properties": {"class": name, "osm_id": i},
                        "geometry": mapping(_project(geom, to_ll)),
                    }  # fmt: skip
                    for i, (name, geom) in enumerate(features)
                ],
            }
        )
    )


@pytest.fixture(scope="module")
def polygon_labels(
    footprints_utm: list[shapely.Geometry], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    path = tmp_path_factory.mktemp("polygons") / "classes.geojson"
    write_class_polygons(path, footprints_utm)
    return path


def test_class_polygons_line_up_and_smaller_paint_over_larger(
    reader: ChipFolder, polygon_labels: Path, building_chips: list[Chip], tmp_path: Path
) -> None:
    labels = read_labels(polygon_labels, NAMES)
    assert labels.classes is not None and set(labels.classes) == {1, 2}  # "car" skipped
    tiles = prepare_tiles(reader, labels.extent(), 19)
    chips = cache_chips(reader, labels, tiles, SPEC, tmp_path)
    for chip, truth in zip(chips, building_chips, strict=True):
        classes, instances = _class_map(chip), _instances(truth)
        recall, precision = _agreement(classes, instances)
        assert recall >= 0.95 and precision >= 0.95, (chip.tile, recall, precision)
        assert (classes != IGNORE).all()  # polygons label every pixel: 0 where none
        # yard pixels ring the buildings: right outside footprints, never far from one
        yard = classes == 2
        assert yard.sum() > 1000 and not (yard & (instances > 0)).sum() > 0.05 * yard.sum()
    # the target a model trains on: class indices with IGNORE where there is no imagery
    target = ChipDataset(chips, SPEC, train=False)[0]["target"]
    assert target.dtype == torch.int64 and target.shape == (320, 320)
    assert set(torch.unique(target).tolist()) <= {0, 1, 2, IGNORE}


def test_polygons_of_unknown_classes_only_are_refused(
    footprints_utm: list[shapely.Geometry], tmp_path: Path
) -> None:
    path = tmp_path / "landcover.geojson"
    to_ll = _to(UTM, "EPSG:4326")
    features = [
        {
            "type": "Feature",
            "properties": {"class": name},
            "geometry": mapping(_project(g.buffer(3), to_ll)),
        }  # fmt: skip
        for name, g in zip(["water", "Trees", "water"], footprints_utm, strict=False)
    ]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    with pytest.raises(InvalidInput) as raised:
        read_labels(path, NAMES)
    assert "['trees', 'water']" in raised.value.message and "class" in raised.value.message
    # the same polygons under another property name are not read at all
    with pytest.raises(InvalidInput, match=r"`kind`.*values found: \[\]"):
        read_labels(path, ("background", "water"), prop="kind")
    assert read_labels(path, ("background", "water", "trees")).classes == [1, 2, 1]


# --- a tiny run: train, export, evaluate, serve -----------------------------------------


@pytest.fixture(scope="module")
def tiny_run(polygon_labels: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    tmp = tmp_path_factory.mktemp("run")
    loop = TrainConfig(epochs=8, batch_size=1, lr=1e-2, warmup_steps=1, run_dir=tmp / "ckpt",
                       resume=False, bf16=False, class_weights=(0.5, 1.0, 2.0),
                       seed=0)  # fmt: skip
    run = TrainingPlan(
        sources=[(DATA, polygon_labels)], model_repo=tmp / "repo", model_name="landcover",
        chips=ChipSpec(zoom=19, buffer=32, classes=NAMES), width=4, depth=2, loop=loop,
        cache_dir=tmp / "chips", block_zoom=19, val_fraction=0.25, tune_fraction=0.0,
        empty_ratio=1.0,
    )  # fmt: skip
    version_dir, _ = run_training(run)
    assert version_dir is not None
    return version_dir, read_metadata(version_dir), tmp


def test_tiny_multiclass_run_learns_and_exports_its_classes(tiny_run: tuple) -> None:
    version_dir, meta, _ = tiny_run
    history = meta["metrics"]["history"]
    losses = [h["train_loss"] for h in history]
    print("train loss per epoch:", [round(v, 3) for v in losses])
    assert len(losses) == 8 and losses[-1] < 0.8 * losses[0], losses
    assert meta["architecture"]["activation"] == "softmax"
    assert meta["architecture"]["classes"] == 3
    assert [c["name"] for c in meta["classes"]] == list(NAMES)
    colours = [c["color"] for c in meta["classes"]]
    assert colours[0] == "#000000" and colours[1] == "#ff3b30"
    assert len(set(colours)) == 3 and all(hex_rgb(c) for c in colours)
    metrics = meta["metrics"]
    for name in NAMES:
        assert 0.0 <= metrics[f"iou_{name}"] <= 1.0 and 0.0 <= metrics[f"f1_{name}"] <= 1.0
    assert metrics["pixel_iou"] == pytest.approx(
        (metrics["iou_building"] + metrics["iou_yard"]) / 2, abs=1e-3
    )
    base = metrics["baselines"]
    assert base["all_background"]["pixel_iou"] == 0.0
    assert base["majority_class"]["class"] == "background"  # the commonest pixel here
    assert 0.0 < base["all_background"]["accuracy"] < 1.0
    assert meta["hyperparameters"]["chips"]["classes"] == list(NAMES)
    assert meta["hyperparameters"]["loop"]["class_weights"] == [0.5, 1.0, 2.0]


def test_tiny_multiclass_run_beats_background_and_evaluates_per_class(
    tiny_run: tuple, polygon_labels: Path
) -> None:
    version_dir, meta, tmp = tiny_run
    scores = score_version(version_dir, DATA, polygon_labels, tmp / "eval-chips")
    assert scores["tiles"] == 4
    assert {f"iou_{n}" for n in NAMES} <= set(scores) and "accuracy" in scores
    # read with the version's own class names: a few steps already find buildings
    assert scores["iou_building"] > 0.2, scores
    assert scores["pixel_iou"] > 0.0


def test_exported_multiclass_model_gives_a_distribution_and_an_overlay(
    tiny_run: tuple, polygon_labels: Path
) -> None:
    version_dir, meta, tmp = tiny_run
    model, loaded = load_model(version_dir)
    assert loaded["classes"] == meta["classes"]
    chips = cache_chips(
        ChipFolder(DATA), read_labels(polygon_labels, NAMES), [(319294, 270961, 19)],
        ChipSpec(zoom=19, buffer=32, jitter=0, classes=NAMES), tmp / "one",
    )  # fmt: skip
    image = ChipDataset(chips, SPEC, train=False)[0]["image"][None]
    with torch.inference_mode():
        probs = model(image)
    assert probs.shape == (1, 3, 320, 320)
    assert torch.allclose(probs.sum(dim=1), torch.ones(1, 320, 320), atol=1e-5)
    # the overlay paints each foreground class in its metadata colour, background clear
    p = probs[0, :, 32:-32, 32:-32].numpy()
    rgba = np.asarray(render(p, meta["classes"], Style(), meta["threshold"]))
    drawn = rgba[..., 3] > 0
    assert drawn.any() and not drawn.all()
    allowed = {hex_rgb(c["color"]) for c in meta["classes"][1:]}
    assert {tuple(v) for v in rgba[drawn][:, :3]} <= allowed
    assert not drawn[p.argmax(0) == 0].any()
