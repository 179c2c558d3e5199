"""Transfer learning on real chips: a run seeded from the demo model starts ahead, a
frozen encoder stays put (weights and BatchNorm statistics) until it thaws, a building
model seeds a building + border model, and a model of another shape is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.unit.chips_support import SPEC
from tests.unit.chips_support import TANZANIA as DATA
from tilesight.errors import InvalidInput
from tilesight.model.data import ChipDataset, ChipSpec
from tilesight.model.export import load_model
from tilesight.model.unet import SegmentationModel, UNetConfig
from tilesight.training.loop import Progress, TrainConfig, train
from tilesight.training.pipeline import TrainingPlan, run_training
from tilesight.training.transfer import build_model

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "model_repo" / "buildings" / "2"  # the shipped demo: width 8, depth 4


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("run-chips")


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_frozen_encoder_keeps_weights_and_statistics_then_trains(
    chips: list, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model = SegmentationModel(UNetConfig(width=4, depth=2))
    encoder, decoder = model.net.encoder, model.net.decoder
    before_enc, before_dec = _state(encoder), _state(decoder)
    after_frozen: dict[str, dict[str, torch.Tensor]] = {}

    def snapshot(p: Progress) -> None:
        if p.phase == "epoch" and p.epoch == 1:
            after_frozen.update(encoder=_state(encoder), decoder=_state(decoder))

    config = TrainConfig(epochs=2, batch_size=2, lr=1e-2, warmup_steps=1, weight_decay=0.1,
                         freeze_encoder_epochs=1, select_best=False, run_dir=tmp_path,
                         bf16=False)  # fmt: skip
    ds = ChipDataset(chips, SPEC, train=True)
    result = train(model, ds, ChipDataset(chips[:1], SPEC, False), config, SPEC.buffer, snapshot)

    # weights, BatchNorm running statistics and batch counters all untouched while frozen,
    # even with weight decay on; the decoder learnt meanwhile
    assert _same(after_frozen["encoder"], before_enc)
    assert not _same(after_frozen["decoder"], before_dec)
    # once thawed the encoder trains, and the returned model can be fine-tuned again
    assert not _same(_state(result.model.net.encoder), before_enc)
    assert all(p.requires_grad for p in result.model.parameters())
    assert [h["encoder_frozen"] for h in result.history] == [True, False]


def _run(tmp: Path, cache: Path, **kw: object) -> TrainingPlan:
    loop = TrainConfig(epochs=1, batch_size=2, max_steps_per_epoch=1, run_dir=tmp / "run",
                       resume=False, bf16=False)  # fmt: skip
    return TrainingPlan(sources=[(DATA, DATA / "labels.geojson")], model_repo=tmp / "repo",
                       chips=ChipSpec(zoom=19, buffer=32), width=8, depth=4, loop=loop,
                       cache_dir=cache, block_zoom=19, val_fraction=0.25,
                       tune_fraction=0.25, export=False, **kw)  # fmt: skip


def test_demo_model_gives_a_run_a_head_start(tmp_path: Path, cache: Path) -> None:
    """One warm-up step (lr 1e-4) barely moves either model, so the validation tile
    scores what each started from. The demo saw these tiles in training: this shows its
    weights arrive and are used, not how well it generalises."""
    _, scratch = run_training(_run(tmp_path / "a", cache))
    _, seeded = run_training(_run(tmp_path / "b", cache, init_from=DEMO))
    a, b = scratch["metrics"], seeded["metrics"]
    assert b["pixel_iou"] > a["pixel_iou"] + 0.2, (a, b)
    assert b["loss"] < a["loss"] - 0.3, (a, b)
    record = seeded["hyperparameters"]["init_from"]
    assert record["version_dir"] == str(DEMO) and record["version"] == 2
    assert record["tensors_fresh"] == [] and record["tensors_loaded"] > 50
    assert scratch["hyperparameters"]["init_from"] is None


def test_building_model_seeds_a_border_model_with_its_building_channel() -> None:
    model, record = build_model((), border=True, width=8, depth=4, init_from=DEMO)
    demo, _ = load_model(DEMO)
    theirs, ours = demo.state_dict(), model.state_dict()
    assert model.config.classes == 2 and ours["net.head.weight"].shape[0] == 2
    assert record["tensors_fresh"] == ["net.head.bias", "net.head.weight"]
    assert record["head_classes_kept"] == ["building"]
    body = [k for k in theirs if not k.startswith("net.head.")]
    assert body and all(torch.equal(ours[k], theirs[k]) for k in body)
    # the building channel is the base's; the border channel is fresh, not a copy of it
    head, bias = ours["net.head.weight"], ours["net.head.bias"]
    assert torch.equal(head[0], theirs["net.head.weight"][0])
    assert torch.equal(bias[0], theirs["net.head.bias"][0])
    assert not torch.equal(head[1], head[0]) and head[1].abs().sum() > 0
    assert model.config.mean == demo.config.mean and model.config.std == demo.config.std
    # so before any training the new model finds the base's buildings, pixel for pixel
    image = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    with torch.inference_mode():
        assert torch.allclose(model.eval()(image)[:, :1], demo.eval()(image), atol=1e-6)


def test_another_width_is_refused_before_any_chips_are_cut(tmp_path: Path) -> None:
    run = _run(tmp_path, tmp_path / "chips", init_from=DEMO)
    run.width = 16
    with pytest.raises(InvalidInput, match="width 8, this run asks for width 16") as err:
        run_training(run)
    assert "train with width 8 and depth 4" in err.value.message
    assert not (tmp_path / "chips").exists()
    with pytest.raises(InvalidInput, match="depth"):
        build_model((), border=False, width=8, depth=3, init_from=DEMO)
