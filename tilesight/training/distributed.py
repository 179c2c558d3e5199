"""One run across torchrun's processes: joining the process group, and what the ranks
share (rank 0's history and best epoch, its best weights, the mean training loss)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from tilesight.errors import InvalidInput


def torchrun_env() -> tuple[int, int]:
    """(rank, world size) that torchrun gave this process, (0, 1) outside it: a command
    launched by torchrun can tell so by itself, and only rank 0 draws progress."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


@contextmanager
def process_group(distributed: bool) -> Iterator[tuple[int, int]]:
    """(rank, world size) while inside. With `distributed`, joins torchrun's process
    group and leaves it on exit, unless a caller joined it already: the outermost
    caller owns it, so run_training and train can both ask for it."""
    if not distributed:
        yield 0, 1
        return
    owner = not dist.is_initialized()
    if owner:
        if "WORLD_SIZE" not in os.environ:
            raise InvalidInput(
                "distributed training needs torchrun to start the processes: "
                "torchrun --standalone --nproc_per_node N -m tilesight.cli train ..."
            )
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    try:
        yield dist.get_rank(), dist.get_world_size()
    finally:
        if owner:
            dist.destroy_process_group()


def from_rank0(values: list[Any], distributed: bool) -> list[Any]:
    """Rank 0's values on every rank (unchanged outside torchrun), so every rank starts
    and stops at the same epoch."""
    if distributed:
        dist.broadcast_object_list(values, src=0)
    return values


def weights_from_rank0(model: nn.Module, distributed: bool) -> None:
    """Only rank 0 holds the best epoch's weights: copy them to every rank."""
    if not distributed:
        return
    for tensor in model.state_dict().values():
        flat = tensor.contiguous()
        dist.broadcast(flat, src=0)
        tensor.copy_(flat)


def mean_over_ranks(losses: list[float], device: torch.device, distributed: bool) -> float:
    """The epoch's training loss over every rank's batches, not rank 0's alone."""
    total = torch.tensor([sum(losses), len(losses)], dtype=torch.float64, device=device)
    if distributed:
        dist.all_reduce(total)
    return float(total[0] / total[1]) if total[1] else 0.0
