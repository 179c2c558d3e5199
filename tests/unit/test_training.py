"""Training on real chips: data lines up, the split is honest, loss falls, resume works."""

from __future__ import annotations

import json
from pathlib import Path

import mercantile
import numpy as np
import pytest
import rasterio
import torch

from tests.unit.chips_support import SPEC
from tests.unit.chips_support import TANZANIA as DATA
from tilesight.errors import InvalidInput
from tilesight.model.data import (
    IGNORE,
    ChipDataset,
    ChipSpec,
    border_mask,
    cache_chips,
    keep_empty,
    prepare,
    split_by_blocks,
    split_small_area,
)
from tilesight.model.sources import ChipFolder, RasterImagery, load_footprints, prepare_tiles
from tilesight.model.unet import SegmentationModel, UNetConfig
from tilesight.training.augment import GEOMETRY_ONLY, Augment, augment, rescale
from tilesight.training.loop import TrainConfig, train
from tilesight.training.losses import segmentation_loss
from tilesight.training.metadata import data_licence
from tilesight.training.scoring import choose_cut


def test_chips_hold_real_pixels_and_aligned_labels(chips: list) -> None:
    assert len(chips) == 4 and all(c.buildings > 0 for c in chips)
    item = ChipDataset(chips, SPEC, train=False)[0]
    image, target = item["image"].numpy(), item["target"][0].numpy()
    assert image.shape == (3, 320, 320) and image.dtype == np.uint8
    core = target[32:-32, 32:-32]
    assert (core != IGNORE).all()  # the tile proper is always imagery
    building = core == 1
    assert 0.02 < building.mean() < 0.6
    # labels line up with the picture: roofs differ in colour from their surroundings
    rgb = image[:, 32:-32, 32:-32].astype(float)
    assert abs(rgb[:, building].mean() - rgb[:, ~building].mean()) > 5


def test_context_outside_the_chips_is_ignored(chips: list) -> None:
    # the 2x2 block has no neighbours, so each chip's outer margins are missing imagery
    target = ChipDataset(chips, SPEC, train=False)[0]["target"][0].numpy()
    assert (target == IGNORE).any() and (target[32:-32, 32:-32] != IGNORE).all()


def test_border_class_marks_only_where_buildings_meet() -> None:
    inst = np.zeros((6, 8), np.int32)
    inst[1:5, 1:4] = 1
    inst[1:5, 4:7] = 2
    border = border_mask(inst, width=1)
    assert border[2, 3] and border[2, 4]
    assert not border[2, 1] and not border[0, 0]


def test_split_keeps_whole_blocks_apart() -> None:
    tiles = [("a", (x, y, 19)) for x in range(8) for y in range(8)]
    train_keys, val_keys = split_by_blocks(tiles, block_zoom=17, val_fraction=0.25, seed=1)
    assert train_keys.isdisjoint(val_keys) and len(train_keys | val_keys) == 64
    blocks = lambda keys: {(t[0] >> 2, t[1] >> 2) for _, t in keys}  # noqa: E731
    assert blocks(train_keys).isdisjoint(blocks(val_keys))
    assert len(val_keys) == 16


def test_prepare_blanks_validation_tiles_in_training_chips(tmp_path: Path) -> None:
    data = prepare([(DATA, DATA / "labels.geojson")], SPEC, tmp_path, block_zoom=19,
                   val_fraction=0.25, empty_ratio=1.0)  # fmt: skip
    assert len(data.val) == 1 and len(data.train) == 3
    (val_tile,) = [c.tile for c in data.val]
    for chip in data.train:
        target = ChipDataset([chip], SPEC, train=False)[0]["target"][0].numpy()
        dx, dy = val_tile[0] - chip.tile[0], val_tile[1] - chip.tile[1]
        r, c = 160 + 140 * dy, 160 + 140 * dx  # a pixel inside the validation neighbour
        assert target[r, c] == IGNORE


def test_a_small_area_is_split_by_finer_blocks(tmp_path: Path) -> None:
    # the four real tiles are one z18 block: a fine-tune on such an area used to be refused
    data = prepare([(DATA, DATA / "labels.geojson")], SPEC, tmp_path, val_fraction=0.25,
                   empty_ratio=1.0)  # fmt: skip
    assert (len(data.train), len(data.val)) == (3, 1)
    assert data.summary["block_zoom_requested"] == 18 and data.summary["block_zoom"] == 19
    assert {c.tile for c in data.train}.isdisjoint(c.tile for c in data.val)


def test_a_small_area_validates_on_a_building_and_trains_on_one() -> None:
    # the four z19 tiles of one z18 block, buildings on two: a validation tile of empty
    # yard would score every epoch and every cut 0, so the fine-tune would choose blind
    tiles = [("a", (x, y, 19)) for x in range(2) for y in range(2)]
    labelled = {("a", (0, 0, 19)), ("a", (1, 1, 19))}
    for seed in range(8):
        train, val, zoom = split_small_area(tiles, 18, 19, 0.25, seed, labelled)
        assert zoom == 19 and val & labelled and train & labelled, seed
    # with buildings on one tile only, validating on it would leave nothing to learn from
    for seed in range(8):
        train, val, _ = split_small_area(tiles, 18, 19, 0.25, seed, {("a", (0, 0, 19))})
        assert ("a", (0, 0, 19)) in train or len(val) > 1, seed


def test_a_mosaic_with_a_hole_offers_only_the_tiles_with_imagery(tmp_path: Path) -> None:
    # a GeoTIFF over 3 x 2 z19 tiles, one of them nodata: as a mosaic of chips leaves
    # holes, and a nodata tile can neither train nor validate
    x0, y0, z = 315878, 264050, 19
    left, top = mercantile.xy(*mercantile.ul(x0, y0, z))
    right, bottom = mercantile.xy(*mercantile.ul(x0 + 3, y0 + 2, z))
    pixels = np.full((3, 2 * 64, 3 * 64), 120, np.uint8)
    pixels[:, 64:, 64:128] = 0  # tile (x0 + 1, y0 + 1)
    path = tmp_path / "mosaic.tif"
    transform = rasterio.transform.from_bounds(left, bottom, right, top, 192, 128)
    profile = {"driver": "GTiff", "width": 192, "height": 128, "count": 3, "dtype": "uint8",
               "crs": "EPSG:3857", "nodata": 0, "transform": transform}  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(pixels)
    inset = 1e-6  # degrees: the area's edges, not the neighbours beyond them
    w, s = mercantile.lnglat(left, bottom)
    e, n = mercantile.lnglat(right, top)
    tiles = RasterImagery(path).tiles(z, (w + inset, s + inset, e - inset, n - inset))
    everything = {(x0 + dx, y0 + dy, z) for dx in range(3) for dy in range(2)}
    assert set(tiles) == everything - {(x0 + 1, y0 + 1, z)}


def test_one_tile_leaves_nothing_to_validate_on() -> None:
    train_keys, val_keys, zoom = split_small_area([("a", (5, 5, 19))], 18, 19, 0.25, seed=0)
    assert not val_keys and zoom == 19 and len(train_keys) == 1


def test_bad_labels_are_rejected_early(tmp_path: Path) -> None:
    empty = tmp_path / "empty.geojson"
    empty.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    with pytest.raises(InvalidInput, match="no building"):
        load_footprints(empty)
    (tmp_path / "bad.geojson").write_text("{not json")
    with pytest.raises(InvalidInput):
        load_footprints(tmp_path / "bad.geojson")
    far = tmp_path / "far.geojson"
    square = [[[0, 0], [0.0001, 0], [0.0001, 0.0001], [0, 0.0001], [0, 0]]]
    geometry = {"type": "Polygon", "coordinates": square}
    far.write_text(json.dumps({"type": "Feature", "properties": {}, "geometry": geometry}))
    with pytest.raises(InvalidInput, match="do not overlap"):
        prepare_tiles(ChipFolder(DATA), load_footprints(far), 19)
    with pytest.raises(InvalidInput, match="hyperparameters"):
        TrainConfig(lr=5.0)


def test_empty_ratio_is_kept() -> None:
    from tilesight.model.data import Chip

    chips = [Chip("s", (i, 0, 19), Path("x"), int(i < 4)) for i in range(20)]
    kept = keep_empty(chips, ratio=0.5, seed=0)
    assert sum(c.buildings == 0 for c in kept) == 2 and len(kept) == 6


def test_augment_moves_image_and_target_together() -> None:
    image = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    image[:, :, 0, 0] = 255
    target = torch.zeros(4, 1, 8, 8)
    target[:, :, 0, 0] = 1
    out, tgt = augment(image, target, GEOMETRY_ONLY)
    for i in range(4):
        hot = (out[i].mean(0) == out[i].mean(0).max()).nonzero().tolist()
        assert hot == tgt[i, 0].nonzero().tolist()


def test_rescale_keeps_labels_on_their_pixels_and_ignores_the_padding() -> None:
    image = torch.zeros(3, 40, 40)
    image[:, 16:24, 16:24] = 255  # a bright roof in the middle
    layers = (image[:1] > 0).float()
    classes = (image[0] > 0).long()
    for factor in (0.5, 1.5):
        im, tg = rescale(image, layers, factor)
        _, cm = rescale(image, classes, factor)
        assert im.shape == image.shape and tg.shape == layers.shape and cm.shape == (40, 40)
        roof = im[0] > 127
        assert roof.sum() == pytest.approx(64 * factor**2, rel=0.3)
        assert torch.equal(roof, tg[0] == 1) and torch.equal(roof, cm == 1)
    im, tg = rescale(image, layers, 0.5)
    assert (tg[0, :5] == IGNORE).all() and (im[:, :5] == 0).all()  # padding is not background


def test_full_recipe_varies_colour_but_not_labels() -> None:
    torch.manual_seed(0)
    image = torch.full((8, 3, 16, 16), 120, dtype=torch.uint8)
    target = torch.zeros(8, 1, 16, 16)
    out, tgt = augment(image, target, Augment.recipe("full"))
    assert out.dtype == torch.float32 and out.min() >= 0 and out.max() <= 255
    assert out.mean(dim=(2, 3)).std() > 1  # channels and samples differ after colour jitter
    assert set(tgt.unique().tolist()) <= {0.0, float(IGNORE)}
    with pytest.raises(ValueError, match="basic, full"):
        Augment.recipe("heavy")


def test_scale_recipe_shows_the_same_roof_at_other_ground_resolutions() -> None:
    torch.manual_seed(0)
    image = torch.zeros(16, 3, 40, 40, dtype=torch.uint8)
    image[:, :, 16:24, 16:24] = 255  # an 8 x 8 px roof in the middle
    target = (image[:, :1] > 0).float()

    def roof_sizes(recipe: str) -> set[int]:
        _, tgt = augment(image, target, Augment.recipe(recipe))
        return {int((tgt[i, 0] == 1).sum()) for i in range(16)}

    assert roof_sizes("basic") == {64}
    sizes = roof_sizes("scale")
    assert len(sizes) > 3 and min(sizes) < 64 < max(sizes)


def test_loss_falls_when_training_on_chips(chips: list, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = SegmentationModel(UNetConfig(width=4, depth=2))
    batch = next(iter(torch.utils.data.DataLoader(ChipDataset(chips, SPEC, True), batch_size=4)))
    with torch.no_grad():
        before = float(segmentation_loss(model.logits(batch["image"]), batch["target"]))
    config = TrainConfig(epochs=8, batch_size=4, lr=2e-2, warmup_steps=1, run_dir=tmp_path,
                         min_area=0, patience=100, monitor="loss")  # fmt: skip
    result = train(model, ChipDataset(chips, SPEC, True), ChipDataset(chips, SPEC, False),
                   config, SPEC.buffer)  # fmt: skip
    with torch.no_grad():
        after = float(segmentation_loss(result.model.logits(batch["image"]), batch["target"]))
    assert after < 0.93 * before
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.best["pixel_iou"] > 0.2


def test_resume_continues_from_the_saved_epoch(chips: list, tmp_path: Path) -> None:
    seen: list[int] = []
    cfg = dict(batch_size=4, warmup_steps=1, run_dir=tmp_path, patience=100)
    ds, val = ChipDataset(chips, SPEC, True), ChipDataset(chips[:1], SPEC, False)
    model = SegmentationModel(UNetConfig(width=4, depth=2))
    train(model, ds, val, TrainConfig(epochs=2, **cfg), SPEC.buffer)
    assert (tmp_path / "last.pt").exists()
    # a 're-delivered' run with a higher epoch budget picks up at epoch 3
    model = SegmentationModel(UNetConfig(width=4, depth=2))
    result = train(model, ds, val, TrainConfig(epochs=3, **cfg), SPEC.buffer,
                   on_progress=lambda p: seen.append(p.epoch))  # fmt: skip
    assert set(seen) == {3}
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    # and one whose epochs are all done trains nothing more
    seen.clear()
    train(model, ds, val, TrainConfig(epochs=3, **cfg), SPEC.buffer,
          on_progress=lambda p: seen.append(p.epoch))  # fmt: skip
    assert seen == []


def test_tune_split_comes_out_of_training_blocks(tmp_path: Path) -> None:
    data = prepare([(DATA, DATA / "labels.geojson")], SPEC, tmp_path, block_zoom=19,
                   val_fraction=0.25, empty_ratio=1.0, tune_fraction=0.25)  # fmt: skip
    val, tune, train_ = ({c.tile for c in chips} for chips in (data.val, data.tune, data.train))
    assert (len(val), len(tune), len(train_)) == (1, 1, 2)
    assert val.isdisjoint(tune) and train_.isdisjoint(val | tune)
    # the validation split does not move when a tune split is added
    plain = prepare([(DATA, DATA / "labels.geojson")], SPEC, tmp_path, block_zoom=19,
                    val_fraction=0.25, empty_ratio=1.0)  # fmt: skip
    assert {c.tile for c in plain.val} == val


def test_the_same_labels_reuse_their_cached_chips(tmp_path: Path) -> None:
    """A second run (another process, or another DDP rank) over the same footprints finds
    the chips the first one cut instead of cutting them again."""
    reader = ChipFolder(DATA)
    first = load_footprints(DATA / "labels.geojson")
    tiles = prepare_tiles(reader, first, SPEC.zoom)
    paths = [c.path for c in cache_chips(reader, first, tiles, SPEC, tmp_path)]
    again = load_footprints(DATA / "labels.geojson")  # equal polygons, new objects
    assert [c.path for c in cache_chips(reader, again, tiles, SPEC, tmp_path)] == paths
    assert len(list(tmp_path.glob("*.npz"))) == len(tiles)


def test_a_places_own_attribution_wins_over_a_shared_readme(tmp_path: Path) -> None:
    """A README for several places lists several credits, the first maybe another's."""
    (tmp_path / "README.md").write_text(
        '- Map attribution text: "Imagery: SpaceNet (CC BY-SA 4.0)".\n'
        '- Map attribution text: "Imagery © OpenAerialMap contributors (CC BY 4.0)".\n'
    )
    (tmp_path / "dhaka").mkdir()
    (tmp_path / "dhaka" / "ATTRIBUTION.md").write_text(
        "Imagery: OAM chips.\n  Attribution: © OpenAerialMap contributors, CC BY 4.0.\n"
        "Labels: OSM.\n  Attribution: © OpenStreetMap contributors, ODbL 1.0.\n"
    )
    (tmp_path / "atlanta").mkdir()
    (tmp_path / "atlanta" / "ATTRIBUTION.md").write_text("SpaceNet, no credit line here.\n")
    own = data_licence(tmp_path / "dhaka")
    assert own["attribution"] == (
        "© OpenAerialMap contributors, CC BY 4.0; © OpenStreetMap contributors, ODbL 1.0"
    )
    assert data_licence(tmp_path / "atlanta")["attribution"] == "Imagery: SpaceNet (CC BY-SA 4.0)"


class _Painted(torch.nn.Module):
    """A 'model' whose building logit is a fixed picture, so a cut's effect is known."""

    def __init__(self, prob: np.ndarray) -> None:
        super().__init__()
        self.config = UNetConfig(width=4, depth=2)
        self.logit = torch.nn.Parameter(torch.logit(torch.from_numpy(prob)), requires_grad=False)

    def logits(self, image: torch.Tensor) -> torch.Tensor:
        return self.logit.expand(image.shape[0], 1, *self.logit.shape)


def _one_batch(truth: np.ndarray) -> dict[str, torch.Tensor]:
    return {
        "image": torch.zeros((1, 3, *truth.shape), dtype=torch.uint8),
        "target": torch.zeros((1, 1, *truth.shape)),
        "instances": torch.from_numpy(truth[None]),
    }


def _three_roofs(wall: float) -> tuple[np.ndarray, np.ndarray]:
    """Three roofs 0.9 sure in a row, joined by `wall`-sure bands where they touch."""
    prob = np.full((32, 32), 0.01, np.float32)
    prob[8:24, 2:30] = 0.9
    prob[8:24, 10:12] = prob[8:24, 20:22] = wall
    truth = np.zeros((32, 32), np.int32)
    truth[8:24, 2:11], truth[8:24, 11:21], truth[8:24, 21:30] = 1, 2, 3
    return prob, truth


def test_the_threshold_is_chosen_by_object_f1() -> None:
    """Walls at 0.6: a cut at 0.6 or below makes one blob (object F1 0), a higher one
    three buildings (F1 1); the cut of those nearest 0.5 wins, and no split is needed."""
    prob, truth = _three_roofs(0.6)
    cut = choose_cut(_Painted(prob), [_one_batch(truth)], buffer=0, min_area=10)  # type: ignore[arg-type]
    assert cut.threshold == 0.65 and cut.peak_depth is None
    curve = cut.by_threshold
    assert curve["0.5"] == curve["0.6"] == 0.0 and curve["0.65"] == curve["0.7"] == 1.0
    assert cut.by_peak_depth["none"] == 1.0


def test_the_split_depth_is_chosen_by_object_f1_where_no_threshold_parts_the_roofs() -> None:
    """Walls at 0.75, above every threshold tried: only the watershed parts the roofs, at
    depths the smoothed dip (about 0.1) exceeds; the shallowest such depth wins."""
    prob, truth = _three_roofs(0.75)
    cut = choose_cut(_Painted(prob), [_one_batch(truth)], buffer=0, min_area=10)  # type: ignore[arg-type]
    assert set(cut.by_threshold.values()) == {0.0} and cut.threshold == 0.5
    assert cut.by_peak_depth["none"] == 0.0 and cut.by_peak_depth["0.05"] == 1.0
    assert cut.by_peak_depth["0.3"] == 0.0
    assert cut.peak_depth == 0.05


def test_a_fine_tune_with_no_building_to_validate_on_keeps_its_base_s_cut(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retrain whose validation tiles hold no building (a reviewed box of empty yards)
    cannot rank cuts (every one scores 0), so it keeps the starting version's instead of
    falling to the first candidate; with buildings there, it chooses on them."""
    from types import SimpleNamespace

    from tilesight.training import pipeline

    base = tmp_path / "7"
    base.mkdir()
    (base / "metadata.json").write_text(json.dumps({"threshold": 0.65, "peak_depth": 0.15}))
    prob, truth = _three_roofs(0.75)
    chips = ChipSpec(buffer=0, jitter=0)  # the painted picture is all core
    plan = SimpleNamespace(chips=chips, init_from=base, loop=SimpleNamespace(min_area=10))
    data = SimpleNamespace(tune=[], val=["a validation chip"])
    result = SimpleNamespace(model=_Painted(prob))
    monkeypatch.setattr(pipeline, "positive_share", lambda chips, spec: 0.0)
    (cut, depth), record = pipeline._cut_for(plan, data, result, 0.5)  # type: ignore[arg-type]
    assert (cut, depth) == (0.65, 0.15) and record["chosen_on"].startswith("the starting")

    monkeypatch.setattr(pipeline, "positive_share", lambda chips, spec: 0.3)
    monkeypatch.setattr(pipeline, "DataLoader", lambda chips, batch_size: [_one_batch(truth)])
    monkeypatch.setattr(pipeline, "ChipDataset", lambda chips, spec, train: chips)
    (cut, depth), record = pipeline._cut_for(plan, data, result, 0.5)  # type: ignore[arg-type]
    assert (cut, depth) == (0.5, 0.05) and record["chosen_on"].startswith("validation split")
