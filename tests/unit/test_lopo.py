"""bench/lopo.py keeps places apart: no fold trains on the place it scores, and the
fine-tune third of a place is disjoint from the part scored after it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from PIL import Image

from tilesight.model.data import block_of
from tilesight.model.sources import ChipFolder

LOPO = Path(__file__).resolve().parents[2] / "bench" / "lopo.py"
spec = importlib.util.spec_from_file_location("lopo", LOPO)
assert spec and spec.loader
lopo = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lopo)


def test_no_fold_trains_on_the_place_it_scores() -> None:
    places = list(lopo.PLACES)
    folds = lopo.folds(places)
    assert [out for out, _ in folds] == places
    for out, train_on in folds:
        assert out not in train_on and sorted([out, *train_on]) == sorted(places)


def test_thirds_are_whole_blocks_and_disjoint() -> None:
    tiles = [(x, y, 19) for x in range(100, 106) for y in range(200, 204)]  # 6 z18 blocks
    part, rest = lopo.thirds(tiles)
    assert sorted(part + rest) == sorted(tiles) and not set(part) & set(rest)
    assert len(part) == 8  # two of the six blocks: a third
    assert not {block_of(t, 18) for t in part} & {block_of(t, 18) for t in rest}


@pytest.mark.skipif(not lopo.PLACES["dhaka"][0].is_dir(), reason="needs ../shared/data")
def test_the_finetune_area_holds_only_its_own_tiles(tmp_path: Path) -> None:
    tiles = [(393753, 226409, 19), (393753, 226410, 19)]
    folder, labels = lopo.finetune_area("dhaka", tiles, tmp_path)
    assert sorted(ChipFolder(folder).index) == sorted(tiles)
    with Image.open(next(folder.glob("*.png"))) as im:
        assert im.size == (256, 256) and im.getextrema()[0][1] > 0  # real pixels
    features = json.loads(labels.read_text())["features"]
    everything = json.loads(lopo.PLACES["dhaka"][1].read_text())["features"]
    assert 0 < len(features) < len(everything)
