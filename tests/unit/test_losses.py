"""The training losses on hand-made logits: ignored pixels, class weights, a perfect
prediction."""

from __future__ import annotations

import pytest
import torch

from tilesight.model.labels import IGNORE
from tilesight.training.losses import multiclass_loss, segmentation_loss


def _logits_and_target(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 16, 16, generator=g), torch.randint(0, 3, (2, 16, 16), generator=g)


def test_ignored_pixels_do_not_change_the_loss() -> None:
    logits, target = _logits_and_target()
    target[:, :5] = IGNORE
    other = logits.clone()
    other[:, :, :5] = torch.randn(2, 3, 5, 16) * 50  # anything at all where unlabelled
    weights = torch.tensor([0.5, 1.0, 2.0])
    for w in (None, weights):
        assert multiclass_loss(other, target, class_weights=w) == pytest.approx(
            float(multiclass_loss(logits, target, class_weights=w)), rel=1e-6
        )
    # and the ignored pixels do matter once labelled
    labelled = target.clone()
    labelled[:, :5] = 1
    assert float(multiclass_loss(other, labelled)) > float(multiclass_loss(logits, target)) + 1
    # a batch with no labelled pixel teaches nothing but keeps the graph
    none = torch.full_like(target, IGNORE)
    free = logits.clone().requires_grad_(True)
    loss = multiclass_loss(free, none)
    loss.backward()
    assert float(loss) == 0.0 and free.grad is not None and not free.grad.any()


def test_class_weights_raise_the_cost_of_missing_a_class() -> None:
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[:, :2] = 2  # a quarter of the pixels are yard
    logits = torch.zeros(1, 3, 8, 8)
    logits[:, 0] = 4.0  # background everywhere: right on 48 pixels, wrong on the 16 yard
    plain = float(segmentation_loss(logits, target, dice_weight=0.0))
    heavy = float(
        segmentation_loss(logits, target, dice_weight=0.0, class_weights=torch.tensor([1, 1, 4.0]))
    )
    light = float(
        segmentation_loss(logits, target, dice_weight=0.0, class_weights=torch.tensor([1, 1, 0.25]))
    )
    assert light < plain < heavy
    # weights change nothing when every class is predicted equally well
    perfect = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 4.0
    assert float(
        segmentation_loss(perfect, target, dice_weight=0.0, class_weights=torch.tensor([1, 1, 4.0]))
    ) == pytest.approx(float(segmentation_loss(perfect, target, dice_weight=0.0)), rel=1e-5)


def test_perfect_logits_give_a_small_loss() -> None:
    logits, target = _logits_and_target(1)
    target[0, 0] = IGNORE
    perfect = torch.nn.functional.one_hot(target.clamp(max=2), 3).permute(0, 3, 1, 2) * 20.0
    # an int64 target goes to the multi-class loss (cross-entropy + Dice)
    assert float(segmentation_loss(perfect, target)) < 1e-3
    assert float(segmentation_loss(logits, target)) > 1.0
