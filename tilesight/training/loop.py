"""The training loop: one function that a CLI, a Celery task and torchrun all call.

Everything a run needs to continue after being killed goes into its run folder at the
end of every epoch (tilesight.training.checkpoints), so a re-delivered task resumes
instead of starting over. Progress is reported through a callback so the caller decides
how to show it (a rich bar, a row of the training_runs table).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from tilesight.errors import InvalidInput
from tilesight.model.unet import SegmentationModel
from tilesight.settings import get_settings
from tilesight.training import checkpoints
from tilesight.training.augment import Augment, augment
from tilesight.training.checkpoints import LoopState
from tilesight.training.distributed import (
    from_rank0,
    mean_over_ranks,
    process_group,
    weights_from_rank0,
)
from tilesight.training.losses import segmentation_loss
from tilesight.training.scoring import validation_scores
from tilesight.training.spec import FROM_SCRATCH, TrainingSpec
from tilesight.training.transfer import batchnorms, encoder_parameters

_SPEC = TrainingSpec()
#: The loop's fields whose default and bound are the spec's (checked through it).
SPEC_FIELDS = (
    "epochs", "batch_size", "lr", "patience", "monitor", "augmentation", "seed",
    "freeze_encoder_epochs", "max_steps_per_epoch",
)  # fmt: skip


@dataclass
class TrainConfig:
    """Hyperparameters of the loop; validated before any compute is spent. The fields a
    user sets take their defaults and bounds from `TrainingSpec`; the rest are the
    loop's own."""

    epochs: int = FROM_SCRATCH["epochs"]
    batch_size: int = _SPEC.batch_size
    lr: float = FROM_SCRATCH["lr"]
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    dice_weight: float = 1.0
    patience: int = FROM_SCRATCH["patience"]  # epochs without a better `monitor`
    monitor: str = _SPEC.monitor
    select_best: bool = True  # False: no early stopping, keep the last epoch's weights
    score_start: bool = False  # the starting weights compete as epoch 0 (fine-tunes)
    threshold: float = 0.5
    min_area: int = 10  # pixels; specks smaller than this are not buildings
    workers: int = 0
    seed: int = _SPEC.seed
    channels_last: bool = True
    compile: bool = False
    bf16: bool | None = None  # None: on for CUDA, off on CPU
    device: str = "auto"
    distributed: bool = False  # set when launched under torchrun
    freeze_encoder_epochs: int = FROM_SCRATCH["freeze_encoder_epochs"]
    freeze_batchnorm: bool = FROM_SCRATCH["freeze_batchnorm"]
    positive_weight: float = FROM_SCRATCH["positive_weight"]
    max_steps_per_epoch: int | None = None  # tests and benchmarks cut epochs short
    class_weights: tuple[float, ...] | None = None  # multi-class: loss weight per class
    augmentation: str = _SPEC.augmentation  # a recipe of tilesight.training.augment
    run_dir: Path = field(default_factory=lambda: get_settings().home / "runs" / "latest")
    resume: bool = True

    def __post_init__(self) -> None:
        bad = _out_of_spec({k: getattr(self, k) for k in SPEC_FIELDS})
        checks = {
            "weight_decay": 0 <= self.weight_decay < 1,
            "threshold": 0 < self.threshold < 1,
            "workers": 0 <= self.workers <= 64,
            "positive_weight": 1 <= self.positive_weight <= 100,
            "class_weights": self.class_weights is None
            or (len(self.class_weights) > 0 and all(0 <= w <= 1000 for w in self.class_weights)),
        }
        bad += [k for k, ok in checks.items() if not ok]
        if bad:
            raise InvalidInput(f"hyperparameters out of range: {', '.join(bad)}", fields=bad)
        self.run_dir = Path(self.run_dir)


def _out_of_spec(values: dict[str, Any]) -> list[str]:
    try:
        TrainingSpec.model_validate(values)
    except ValidationError as exc:
        return sorted({str(e["loc"][0]) for e in exc.errors() if e["loc"]})
    return []


@dataclass
class Progress:
    """One report from the loop; `fraction` runs 0..1 over the whole run."""

    phase: str  # "train", "validate" or "epoch"
    epoch: int
    epochs: int
    step: int
    steps: int
    loss: float | None = None
    metrics: dict[str, float] | None = None

    @property
    def fraction(self) -> float:
        done = self.epoch - 1 + (self.step / self.steps if self.steps else 1.0)
        return min(max(done / self.epochs, 0.0), 1.0)


ProgressCallback = Callable[[Progress], None]


@dataclass
class TrainResult:
    model: SegmentationModel
    history: list[dict[str, Any]]
    best: dict[str, float]
    best_epoch: int
    stopped_early: bool
    world_size: int = 1  # processes that trained it (torchrun)
    effective_batch: int = 0  # samples per optimiser step, over all processes


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def train(
    model: SegmentationModel,
    train_set: Dataset,
    val_set: Dataset,
    config: TrainConfig,
    buffer: int,
    on_progress: ProgressCallback | None = None,
) -> TrainResult:
    """Fit `model`; returns it with the weights of its best epoch on `val_set` (pass a
    tune split, not the validation split, when the validation scores must stay honest),
    or of its last epoch when `config.select_best` is off.

    Under torchrun (`config.distributed`) every rank calls it with the same arguments:
    rank 0 alone evaluates and writes checkpoints, and every rank returns its weights."""
    with process_group(config.distributed) as (rank, world):
        fit = _Fit(model, train_set, val_set, config, buffer, on_progress, rank, world)
        return fit.run()


class _Fit:
    """One call of `train`: its device, loaders, optimiser and state, in named steps."""

    def __init__(
        self,
        model: SegmentationModel,
        train_set: Dataset,
        val_set: Dataset,
        config: TrainConfig,
        buffer: int,
        on_progress: ProgressCallback | None,
        rank: int,
        world: int,
    ) -> None:
        # A seed per rank: each process draws its own flips, crops and colour changes (DDP
        # copies rank 0's weights to the others when it wraps the model, so they start equal).
        torch.manual_seed(config.seed + rank)
        np.random.seed(config.seed + rank)
        self.config, self.buffer, self.on_progress = config, buffer, on_progress
        self.rank, self.world = rank, world
        self.device = resolve_device(config.device)
        if config.distributed and self.device.type == "cuda":
            self.device = torch.device("cuda", torch.cuda.current_device())
        use_bf16 = config.bf16 if config.bf16 is not None else self.device.type == "cuda"
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_bf16)
        self.memory_format = (
            torch.channels_last if config.channels_last else torch.contiguous_format
        )
        self.how = Augment.recipe(config.augmentation)
        self.model = model.to(device=self.device, memory_format=self.memory_format)  # type: ignore[call-overload]
        spec = getattr(train_set, "spec", None)  # a ChipDataset knows the class names
        self.class_names: tuple[str, ...] = spec.classes if spec is not None else ()
        self.class_weights = self._class_weights()
        self._loaders(train_set, val_set)
        self._optimiser()

    def _class_weights(self) -> torch.Tensor | None:
        weights, classes = self.config.class_weights, self.model.config.classes
        if weights is None:
            return None
        if len(weights) != classes:
            raise InvalidInput(f"{len(weights)} class weights for {classes} classes")
        return torch.tensor(weights, dtype=torch.float32, device=self.device)

    def _loaders(self, train_set: Dataset, val_set: Dataset) -> None:
        """Each rank draws a disjoint share of equal length (the tail is dropped, not
        padded with repeats), so all ranks take the same steps and no collective hangs."""
        config = self.config
        self.sampler: DistributedSampler[Any] | None = None
        if config.distributed:
            self.sampler = DistributedSampler(train_set, seed=config.seed, drop_last=True)
        share = len(self.sampler) if self.sampler is not None else len(train_set)  # type: ignore[arg-type]
        self.effective_batch = min(config.batch_size, share) * self.world
        self.loader = DataLoader(
            train_set, batch_size=config.batch_size, shuffle=self.sampler is None,
            sampler=self.sampler, num_workers=config.workers,
            drop_last=share >= config.batch_size, pin_memory=self.device.type == "cuda",
            persistent_workers=config.workers > 0,
        )  # fmt: skip
        self.val_loader = DataLoader(
            val_set, batch_size=config.batch_size, num_workers=config.workers
        )
        self.steps = len(self.loader)
        if config.max_steps_per_epoch:
            self.steps = min(self.steps, config.max_steps_per_epoch)
        if self.steps == 0:
            chips = len(train_set)  # type: ignore[arg-type]
            raise InvalidInput(
                f"no training batches: {chips} training chips for {self.world} process(es); "
                "label a larger area or start fewer processes"
            )

    def _optimiser(self) -> None:
        """AdamW on a warm-up then cosine schedule. Linear scaling rule: each process
        keeps its batch, so the effective batch and the learning rate both grow with the
        number of processes."""
        config = self.config
        total = self.steps * config.epochs
        self.optimiser = torch.optim.AdamW(
            self.model.parameters(), lr=config.lr * self.world, weight_decay=config.weight_decay
        )

        def schedule(step: int) -> float:
            if step < config.warmup_steps:
                return (step + 1) / config.warmup_steps
            t = (step - config.warmup_steps) / max(total - config.warmup_steps, 1)
            return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimiser, schedule)

    def run(self) -> TrainResult:
        config = self.config
        state = LoopState()
        if config.resume:
            state = checkpoints.resume(
                config.run_dir, self.model, self.optimiser, self.scheduler, self.device
            )
        shared = [state.history, state.best, state.best_epoch, state.start_epoch]
        state.history, state.best, state.best_epoch, state.start_epoch = from_rank0(
            shared, config.distributed
        )  # rank 0's checkpoint says where every rank starts
        if config.score_start and state.start_epoch == 1 and self.rank == 0:
            self._judge(0, state, self._scores())  # the starting weights as epoch 0
        stopped_early, net, net_frozen = False, self.model, None
        for epoch in range(state.start_epoch, config.epochs + 1):
            if config.select_best and _stale(state.history, state.best_epoch, config.patience):
                stopped_early = True
                break
            frozen = epoch <= config.freeze_encoder_epochs
            if frozen != net_frozen:  # the module the loop calls, for this encoder state
                net, net_frozen = _wrap(self.model, frozen, config, self.device), frozen
            record = self._train_epoch(net, epoch, frozen)
            if self.rank == 0:
                self._end_epoch(epoch, record, state)
            shared = [state.history, state.best, state.best_epoch]
            state.history, state.best, state.best_epoch = from_rank0(shared, config.distributed)
        return self._finish(state, stopped_early)

    def _train_epoch(self, net: nn.Module, epoch: int, frozen: bool) -> dict[str, Any]:
        config, model = self.config, self.model
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        net.train()
        if frozen or config.freeze_batchnorm:  # a kept encoder keeps its statistics too
            for module in batchnorms(model, encoder_only=not config.freeze_batchnorm):
                module.eval()
        started, losses = time.perf_counter(), []
        for step, batch in enumerate(self.loader, start=1):
            if step > self.steps:
                break
            losses.append(self._step(net, batch))
            if self.on_progress and self.rank == 0:
                self.on_progress(
                    Progress("train", epoch, config.epochs, step, self.steps, losses[-1])
                )
        seconds = time.perf_counter() - started
        return {
            "epoch": epoch,
            "train_loss": mean_over_ranks(losses, self.device, config.distributed),
            "lr": self.optimiser.param_groups[0]["lr"],
            "effective_batch": self.effective_batch,
            "encoder_frozen": frozen,
            "seconds": round(seconds, 2),
            "samples_per_s": round(len(losses) * self.effective_batch / seconds, 2),
        }

    def _step(self, net: nn.Module, batch: dict[str, torch.Tensor]) -> float:
        config = self.config
        image = batch["image"].to(self.device)
        image, target = augment(image, batch["target"].to(self.device), self.how)
        image = image.contiguous(memory_format=self.memory_format)
        with self.autocast:
            logits = net(image, return_logits=True)
            loss = segmentation_loss(
                logits, target, config.dice_weight, self.class_weights, config.positive_weight
            )
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        self.optimiser.step()
        self.scheduler.step()
        return float(loss.detach())

    def _scores(self) -> dict[str, float]:
        config = self.config
        return validation_scores(
            self.model, self.val_loader, self.buffer, config.threshold, config.min_area,
            self.device, self.autocast, self.class_names, self.class_weights,
        )  # fmt: skip

    def _judge(self, epoch: int, state: LoopState, scores: dict[str, float]) -> None:
        """Keep the weights of `epoch` when they score best so far."""
        monitor = self.config.monitor
        if _better(monitor, scores.get(monitor, 0.0), state.best.get(monitor)):
            state.best, state.best_epoch = scores, epoch
            state.best_weights = checkpoints.save_best(self.config.run_dir, self.model)

    def _end_epoch(self, epoch: int, record: dict[str, Any], state: LoopState) -> None:
        """Rank 0 scores the epoch, keeps it if best, checkpoints and reports it."""
        config = self.config
        scores = self._scores()
        record["val"] = scores
        self._judge(epoch, state, scores)
        state.history.append(record)
        checkpoints.save_last(
            config.run_dir, self.model, self.optimiser, self.scheduler, epoch, state, config
        )
        if self.on_progress:
            self.on_progress(
                Progress("epoch", epoch, config.epochs, self.steps, self.steps, None, scores)
            )

    def _finish(self, state: LoopState, stopped_early: bool) -> TrainResult:
        model = self.model
        if state.best_weights is not None and self.config.select_best:
            model.load_state_dict(state.best_weights)
        model.requires_grad_(True)
        weights_from_rank0(model, self.config.distributed)
        model = model.to("cpu").eval()
        return TrainResult(
            model, state.history, state.best, state.best_epoch, stopped_early,
            self.world, self.effective_batch,
        )  # fmt: skip


def _better(monitor: str, new: float, old: float | None) -> bool:
    if old is None:
        return True
    return new < old if monitor == "loss" else new > old


def _wrap(
    model: SegmentationModel, frozen: bool, config: TrainConfig, device: torch.device
) -> nn.Module:
    """The module the loop calls, built for one encoder state. DDP reduces the gradients
    of the parameters that required them when it was built, so it is rebuilt when the
    encoder thaws (cheaper than find_unused_parameters on every step)."""
    for p in encoder_parameters(model):
        p.requires_grad_(not frozen)
    net: nn.Module = model
    if config.compile:
        net = torch.compile(net)  # type: ignore[assignment]
    if config.distributed:
        ids = [device.index] if device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(net, device_ids=ids)
    return net


def _stale(history: Sequence[dict], best_epoch: int, patience: int) -> bool:
    return bool(history) and history[-1]["epoch"] - best_epoch >= patience
