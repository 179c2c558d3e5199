"""Hard-negative mining: which empty chips training keeps, and how a model ranks them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.unit.chips_support import SPEC
from tests.unit.chips_support import TANZANIA as DATA
from tilesight.model.data import Chip, keep_empty, prepare
from tilesight.model.export import load_model
from tilesight.training.scoring import hard_negative_ranker

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "model_repo" / "buildings" / "2"  # the committed demo model, buffer 32


def fake_chips(full: int, empty: int) -> list[Chip]:
    return [Chip("s", (i, 0, 19), Path(f"c{i}"), int(i < full)) for i in range(full + empty)]


def test_a_rank_keeps_exactly_the_highest_ranked_empty_chips() -> None:
    chips = fake_chips(4, 16)
    score = {i: (7 * i) % 16 for i in range(4, 20)}  # a known shuffle of 0..15
    asked: list[list[Chip]] = []

    def rank(empty):
        asked.append(list(empty))
        return [score[c.tile[0]] for c in empty]

    for seed in (0, 1):
        kept = keep_empty(chips, ratio=0.75, seed=seed, rank=rank)
        assert kept[:4] == chips[:4]  # every chip with buildings stays
        top3 = sorted(score, key=score.get, reverse=True)[:3]
        assert [c.tile[0] for c in kept[4:]] == top3  # best first, whatever the seed
    assert all(len(a) == 16 and not any(c.buildings for c in a) for a in asked)


def test_without_a_rank_empty_chips_are_a_seeded_random_sample() -> None:
    chips = fake_chips(4, 16)
    samples = []
    for seed in range(6):
        kept = keep_empty(chips, ratio=0.75, seed=seed)
        empty = [c.tile[0] for c in kept if not c.buildings]
        assert len(kept) == 7 and len(set(empty)) == 3 and all(i >= 4 for i in empty)
        assert keep_empty(chips, ratio=0.75, seed=seed) == kept  # reproducible
        samples.append(tuple(sorted(empty)))
    assert len(set(samples)) > 1  # not simply the first empty chips


def predicted_pixels(model: torch.nn.Module, chip: Chip, threshold: float) -> int:
    """The demo model's building pixels in the tile proper, one chip at a time."""
    size, j, b = SPEC.tile_size + 2 * SPEC.buffer, SPEC.jitter, SPEC.buffer
    with np.load(chip.path) as z:
        image = torch.from_numpy(np.ascontiguousarray(z["image"][:, j : j + size, j : j + size]))
    with torch.inference_mode():
        prob = model(image[None])[0, 0].numpy()
    return int((prob[b:-b, b:-b] >= threshold).sum())


def test_the_demo_model_ranks_real_chips_by_its_building_pixels(chips) -> None:
    model, meta = load_model(DEMO)
    scores = hard_negative_ranker(DEMO, SPEC)(chips)
    direct = [predicted_pixels(model, c, meta["threshold"]) for c in chips]
    assert scores == pytest.approx(direct, abs=2)  # batched vs single: a pixel on the edge
    assert min(direct) > 1000 and len(set(direct)) == len(direct)  # these tiles hold roofs
    strict = hard_negative_ranker(DEMO, SPEC, threshold=0.95)(chips)
    assert strict == pytest.approx([predicted_pixels(model, c, 0.95) for c in chips], abs=2)
    assert all(s < d for s, d in zip(strict, scores, strict=True))


def partial_labels(tmp_path: Path) -> Path:
    """Footprints of the north-west and south-east tiles only: the other two tiles of the
    2x2 block fall inside the labelled area but hold no label, so they are 'empty'."""
    doc = json.loads((DATA / "labels.geojson").read_text())
    keep = [doc["features"][i] for i in (1, 3, 4, 37, 74, 12, 14, 16, 24, 25)]
    path = tmp_path / "partial.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": keep}))
    return path


def test_prepare_keeps_the_hard_negatives_and_says_so(tmp_path: Path) -> None:
    labels = partial_labels(tmp_path)
    rank = hard_negative_ranker(DEMO, SPEC)

    def empty_kept(rank_empty, empty_ratio=1.0):
        # seed 1 leaves one chip with buildings and two empty ones in training
        data = prepare([(DATA, labels)], SPEC, tmp_path / "cache", block_zoom=19,
                       val_fraction=0.25, empty_ratio=empty_ratio, seed=1,
                       rank_empty=rank_empty)  # fmt: skip
        return [c for c in data.train if not c.buildings], data.summary

    chips, _ = empty_kept(None, empty_ratio=2.0)
    scores = dict(zip([c.tile for c in chips], rank(chips), strict=True))
    assert len(scores) == 2 and len(set(scores.values())) == 2
    hardest = max(scores, key=scores.get)

    mined, summary = empty_kept(rank)
    assert [c.tile for c in mined] == [hardest]  # the empty tile the demo model gets most wrong
    assert summary["empty_chosen"].startswith("hard negatives")
    assert summary["train_tiles_empty_dropped"] == 1
    easiest, _ = empty_kept(lambda chips: [-s for s in rank(chips)])
    assert [c.tile for c in easiest] == [t for t in scores if t != hardest]  # not luck
    assert empty_kept(None)[1]["empty_chosen"] == "random"
