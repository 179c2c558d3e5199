"""What a run needs to continue after being killed, in its run folder: `last.pt` (model,
optimiser, schedule, epoch, history, best score) after every epoch and `best.pt` (the
best epoch's weights). A re-delivered task resumes from them instead of starting over."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

LAST = "last.pt"
BEST = "best.pt"


@dataclass
class LoopState:
    """Where the loop stands: the epoch to start at, the history and the best so far."""

    start_epoch: int = 1
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, float] = field(default_factory=dict)
    best_epoch: int = 0
    best_weights: dict[str, torch.Tensor] | None = None


def resume(
    run_dir: Path,
    model: nn.Module,
    optimiser: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
) -> LoopState:
    """The state of the last finished epoch, loaded into model, optimiser and schedule;
    a fresh state when the folder holds no checkpoint."""
    last, best = run_dir / LAST, run_dir / BEST
    if not last.exists():
        return LoopState()
    ckpt = torch.load(last, map_location=device, weights_only=False)
    model.load_state_dict(ckpt["model"])
    optimiser.load_state_dict(ckpt["optimiser"])
    scheduler.load_state_dict(ckpt["scheduler"])
    weights = torch.load(best, map_location="cpu", weights_only=True) if best.exists() else None
    return LoopState(ckpt["epoch"] + 1, ckpt["history"], ckpt["best"], ckpt["best_epoch"], weights)


def save_best(run_dir: Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the weights, also written as `best.pt`."""
    weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.save(weights, run_dir / BEST)
    return weights


def save_last(
    run_dir: Path,
    model: nn.Module,
    optimiser: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    epoch: int,
    state: LoopState,
    config: Any,
) -> None:
    """`last.pt` after `epoch`, written beside and renamed into place: a kill mid-write
    never leaves a torn checkpoint."""
    path = run_dir / LAST
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "optimiser": optimiser.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "history": state.history,
            "best": state.best,
            "best_epoch": state.best_epoch,
            "config": {k: str(v) for k, v in asdict(config).items()},
        },
        tmp,
    )
    os.replace(tmp, path)
