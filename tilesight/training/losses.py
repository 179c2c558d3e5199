"""The losses the loop minimises: BCE + soft Dice for building layers, cross-entropy +
Dice for exclusive classes. Pixels marked IGNORE (no imagery, a held-out neighbour, no
label) count in neither term."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from tilesight.model.labels import IGNORE


def segmentation_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    dice_weight: float = 1.0,
    class_weights: torch.Tensor | None = None,
    positive_weight: float = 1.0,
) -> torch.Tensor:
    """BCE for per-pixel calibration plus soft Dice, which keeps small, rare buildings
    from being drowned by background; pixels marked IGNORE count in neither.

    `positive_weight` > 1 weighs building pixels up in the BCE: a fine-tune on a few
    tiles holds few of them, and an unweighted loss learns to say 'background'.
    A class-index target (int64 [B, H, W]) means exclusive classes: cross-entropy with
    `class_weights` against imbalance, plus Dice over the foreground classes."""
    logits = logits.float()
    if not target.is_floating_point():
        return multiclass_loss(logits, target, dice_weight, class_weights)
    valid = (target != IGNORE).float()
    target = target.clamp(0, 1) * valid
    weight = valid * (1 + (positive_weight - 1) * target) if positive_weight != 1 else valid
    bce = F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="sum")
    bce = bce / weight.sum().clamp_min(1)
    dice = 1 - soft_dice(torch.sigmoid(logits) * valid, target).mean()
    return bce + dice_weight * dice


def soft_dice(prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft Dice of each class [C] over a batch of [B, C, H, W]; the +1 keeps a class
    absent from both at 1 instead of 0/0."""
    inter = (prob * target).sum(dim=(0, 2, 3))
    denom = prob.sum(dim=(0, 2, 3)) + target.sum(dim=(0, 2, 3))
    return (2 * inter + 1) / (denom + 1)


def multiclass_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    dice_weight: float = 1.0,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy plus Dice over the foreground classes for a class-index target."""
    valid = target != IGNORE
    if not valid.any():  # a batch of unlabelled pixels teaches nothing
        return logits.sum() * 0.0
    weight = class_weights.to(logits.device) if class_weights is not None else None
    ce = F.cross_entropy(logits, target, weight=weight, ignore_index=IGNORE)
    prob = torch.softmax(logits, dim=1) * valid.unsqueeze(1)
    onehot = F.one_hot(torch.where(valid, target, 0), logits.shape[1]).permute(0, 3, 1, 2)
    onehot = onehot.float() * valid.unsqueeze(1)
    dice = 1 - soft_dice(prob, onehot)[1:].mean() if logits.shape[1] > 1 else 0.0
    return ce + dice_weight * dice
