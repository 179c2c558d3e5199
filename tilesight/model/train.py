"""The training loop: one function that a CLI, a Celery task and torchrun all call.

Everything a run needs to continue after being killed (model, optimiser, schedule,
epoch, history, best score) goes into `last.pt` at the end of every epoch, so a
re-delivered task resumes instead of starting over. Progress is reported through a
callback so the caller decides how to show it (a rich bar, a Celery state update).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from tilesight.errors import InvalidInput
from tilesight.model.augment import RECIPES, Augment, augment
from tilesight.model.data import IGNORE
from tilesight.model.instances import split_instances
from tilesight.model.metrics import ClassConfusion, SegmentationMetrics
from tilesight.model.unet import SegmentationModel


@dataclass
class TrainConfig:
    """Hyperparameters of the loop; validated before any compute is spent."""

    epochs: int = 40
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    dice_weight: float = 1.0
    patience: int = 10  # epochs without a better `monitor` before stopping
    monitor: str = "pixel_iou"
    select_best: bool = True  # False: no early stopping, keep the last epoch's weights
    threshold: float = 0.5
    min_area: int = 10  # pixels; specks smaller than this are not buildings
    workers: int = 0
    seed: int = 0
    channels_last: bool = True
    compile: bool = False
    bf16: bool | None = None  # None: on for CUDA, off on CPU
    device: str = "auto"
    distributed: bool = False  # set when launched under torchrun
    freeze_encoder_epochs: int = 0
    max_steps_per_epoch: int | None = None  # tests and benchmarks cut epochs short
    class_weights: tuple[float, ...] | None = None  # multi-class: loss weight per class
    augmentation: str = "basic"  # a recipe of tilesight.model.augment
    run_dir: Path = field(default_factory=lambda: Path("runs/latest"))
    resume: bool = True

    def __post_init__(self) -> None:
        checks = {
            "epochs": 1 <= self.epochs <= 10_000,
            "batch_size": 1 <= self.batch_size <= 4096,
            "lr": 0 < self.lr < 1,
            "weight_decay": 0 <= self.weight_decay < 1,
            "threshold": 0 < self.threshold < 1,
            "patience": self.patience >= 1,
            "workers": 0 <= self.workers <= 64,
            "monitor": self.monitor in {"pixel_iou", "f1", "object_f1", "loss"},
            "augmentation": self.augmentation in RECIPES,
            "class_weights": self.class_weights is None
            or (len(self.class_weights) > 0 and all(0 <= w <= 1000 for w in self.class_weights)),
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise InvalidInput(f"hyperparameters out of range: {', '.join(bad)}", fields=bad)
        self.run_dir = Path(self.run_dir)


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


def segmentation_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    dice_weight: float = 1.0,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """BCE for per-pixel calibration plus soft Dice, which keeps small, rare buildings
    from being drowned by background; pixels marked IGNORE count in neither.

    A class-index target (int64 [B, H, W]) means exclusive classes: cross-entropy with
    `class_weights` against imbalance, plus Dice over the foreground classes."""
    logits = logits.float()
    if not target.is_floating_point():
        return multiclass_loss(logits, target, dice_weight, class_weights)
    valid = (target != IGNORE).float()
    target = target.clamp(0, 1) * valid
    bce = F.binary_cross_entropy_with_logits(logits, target, weight=valid, reduction="sum")
    bce = bce / valid.sum().clamp_min(1)
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


def evaluate_model(
    model: SegmentationModel,
    loader: DataLoader,
    buffer: int,
    threshold: float = 0.5,
    min_area: int = 10,
    device: torch.device | None = None,
    autocast: Any = None,
    class_names: tuple[str, ...] = (),
    class_weights: torch.Tensor | None = None,
) -> dict[str, float]:
    """Loss and metrics on the tile proper (context pixels are for the model only).

    Buildings: pixel and object scores, objects split along the predicted border when
    the model has that class. Multi-class: per-class IoU/F1 and their means, from the
    argmax of the class probabilities (`class_names` given)."""
    device = device or next(model.parameters()).device
    metrics: SegmentationMetrics | ClassConfusion
    metrics = ClassConfusion(class_names) if class_names else SegmentationMetrics(min_area)
    has_border = model.config.classes > 1 and not class_names
    losses, model_was_training = [], model.training
    model.eval()
    core = (Ellipsis, slice(buffer, -buffer or None), slice(buffer, -buffer or None))
    with torch.inference_mode(), autocast or nullcontext():
        for batch in loader:
            logits = model.logits(batch["image"].to(device))
            target = batch["target"].to(device)
            losses.append(float(segmentation_loss(logits, target, class_weights=class_weights)))
            if isinstance(metrics, ClassConfusion):
                pred = logits.float().argmax(dim=1).cpu().numpy()
                metrics.update(pred[core], batch["target"].numpy()[core])
                continue
            prob = torch.sigmoid(logits.float()).cpu().numpy()[core]
            inst = batch["instances"].numpy()[core]
            valid = batch["target"][:, 0].numpy()[core] != IGNORE
            for p, t, v in zip(prob, inst, valid, strict=True):
                objects = split_instances(p[0], p[1], threshold, min_area) if has_border else None
                metrics.update(p[0] >= threshold, t, v, objects)
    model.train(model_was_training)
    return {"loss": float(np.mean(losses)) if losses else 0.0, **metrics.scores()}


def _better(monitor: str, new: float, old: float | None) -> bool:
    if old is None:
        return True
    return new < old if monitor == "loss" else new > old


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
        return _fit(model, train_set, val_set, config, buffer, on_progress, rank, world)


def _fit(
    model: SegmentationModel,
    train_set: Dataset,
    val_set: Dataset,
    config: TrainConfig,
    buffer: int,
    on_progress: ProgressCallback | None,
    rank: int,
    world: int,
) -> TrainResult:
    # A seed per rank: each process draws its own flips, crops and colour changes (DDP
    # copies rank 0's weights to the others when it wraps the model, so they start equal).
    torch.manual_seed(config.seed + rank)
    np.random.seed(config.seed + rank)
    device = resolve_device(config.device)
    if config.distributed and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    use_bf16 = config.bf16 if config.bf16 is not None else device.type == "cuda"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    how = Augment.recipe(config.augmentation)
    model = model.to(device=device, memory_format=memory_format)  # type: ignore[call-overload]
    spec = getattr(train_set, "spec", None)  # a ChipDataset knows the class names
    class_names: tuple[str, ...] = spec.classes if spec is not None else ()
    class_weights = None
    if config.class_weights is not None:
        if len(config.class_weights) != model.config.classes:
            raise InvalidInput(
                f"{len(config.class_weights)} class weights for {model.config.classes} classes"
            )
        class_weights = torch.tensor(config.class_weights, dtype=torch.float32, device=device)

    # Each rank draws a disjoint share of equal length (the tail is dropped, not padded
    # with repeats), so all ranks take the same number of steps and no collective hangs.
    sampler: DistributedSampler[Any] | None = None
    if config.distributed:
        sampler = DistributedSampler(train_set, seed=config.seed, drop_last=True)
    share = len(sampler) if sampler is not None else len(train_set)  # type: ignore[arg-type]
    effective_batch = min(config.batch_size, share) * world
    pin = device.type == "cuda"
    loader = DataLoader(
        train_set, batch_size=config.batch_size, shuffle=sampler is None, sampler=sampler,
        num_workers=config.workers, drop_last=share >= config.batch_size,
        pin_memory=pin, persistent_workers=config.workers > 0,
    )  # fmt: skip
    val_loader = DataLoader(val_set, batch_size=config.batch_size, num_workers=config.workers)
    steps = len(loader)
    if config.max_steps_per_epoch:
        steps = min(steps, config.max_steps_per_epoch)
    if steps == 0:
        chips = len(train_set)  # type: ignore[arg-type]
        raise InvalidInput(
            f"no training batches: {chips} training chips for {world} process(es); "
            "label a larger area or start fewer processes"
        )
    total = steps * config.epochs
    # Linear scaling rule: each process keeps its batch, so the effective batch and the
    # learning rate both grow with the number of processes.
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=config.lr * world, weight_decay=config.weight_decay
    )

    def schedule(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        t = (step - config.warmup_steps) / max(total - config.warmup_steps, 1)
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, schedule)
    history: list[dict[str, Any]] = []
    best: dict[str, float] = {}
    best_epoch, start_epoch, best_state = 0, 1, None
    last, best_path = config.run_dir / "last.pt", config.run_dir / "best.pt"
    if config.resume and last.exists():
        ckpt = torch.load(last, map_location=device, weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimiser.load_state_dict(ckpt["optimiser"])
        scheduler.load_state_dict(ckpt["scheduler"])
        history, best, best_epoch = ckpt["history"], ckpt["best"], ckpt["best_epoch"]
        start_epoch = ckpt["epoch"] + 1
        if best_path.exists():
            best_state = torch.load(best_path, map_location="cpu", weights_only=True)
    if config.distributed:  # rank 0's checkpoint says where every rank starts
        shared: list[Any] = [history, best, best_epoch, start_epoch]
        dist.broadcast_object_list(shared, src=0)
        history, best, best_epoch, start_epoch = shared
    net: nn.Module = model
    net_frozen: bool | None = None  # the encoder state `net` was built for

    stopped_early = False
    for epoch in range(start_epoch, config.epochs + 1):
        if config.select_best and _stale(history, best_epoch, config.patience):
            stopped_early = True
            break
        if sampler is not None:
            sampler.set_epoch(epoch)
        frozen = epoch <= config.freeze_encoder_epochs
        if frozen != net_frozen:
            net, net_frozen = _wrap(model, frozen, config, device), frozen
        net.train()
        if frozen:  # a frozen encoder keeps its BatchNorm statistics as well as its weights
            for module in model.net.encoder.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        started, losses = time.perf_counter(), []
        for step, batch in enumerate(loader, start=1):
            if step > steps:
                break
            image, target = augment(batch["image"].to(device), batch["target"].to(device), how)
            image = image.contiguous(memory_format=memory_format)
            with autocast:
                logits = net(image, return_logits=True)
                loss = segmentation_loss(logits, target, config.dice_weight, class_weights)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            if on_progress and rank == 0:
                on_progress(Progress("train", epoch, config.epochs, step, steps, losses[-1]))
        seconds = time.perf_counter() - started
        record: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": _mean_over_ranks(losses, device, config.distributed),
            "lr": optimiser.param_groups[0]["lr"],
            "effective_batch": effective_batch,
            "encoder_frozen": frozen,
            "seconds": round(seconds, 2),
            "samples_per_s": round(len(losses) * effective_batch / seconds, 2),
        }
        if rank == 0:
            scores = evaluate_model(
                model, val_loader, buffer, config.threshold, config.min_area, device, autocast,
                class_names, class_weights,
            )  # fmt: skip
            record["val"] = scores
            if _better(config.monitor, scores.get(config.monitor, 0.0), best.get(config.monitor)):
                best, best_epoch = scores, epoch
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                config.run_dir.mkdir(parents=True, exist_ok=True)
                torch.save(best_state, best_path)
            history.append(record)
            _save(last, model, optimiser, scheduler, epoch, history, best, best_epoch, config)
            if on_progress:
                on_progress(Progress("epoch", epoch, config.epochs, steps, steps, None, scores))
        if config.distributed:  # rank 0's record, so every rank stops at the same epoch
            shared_epoch: list[Any] = [history, best, best_epoch]
            dist.broadcast_object_list(shared_epoch, src=0)
            history, best, best_epoch = shared_epoch
    if best_state is not None and config.select_best:
        model.load_state_dict(best_state)
    model.requires_grad_(True)
    if config.distributed:  # only rank 0 holds the best epoch's weights
        for tensor in model.state_dict().values():
            flat = tensor.contiguous()
            dist.broadcast(flat, src=0)
            tensor.copy_(flat)
    model = model.to("cpu").eval()
    return TrainResult(model, history, best, best_epoch, stopped_early, world, effective_batch)


def _wrap(
    model: SegmentationModel, frozen: bool, config: TrainConfig, device: torch.device
) -> nn.Module:
    """The module the loop calls, built for one encoder state. DDP reduces the gradients
    of the parameters that required them when it was built, so it is rebuilt when the
    encoder thaws (cheaper than find_unused_parameters on every step)."""
    for p in model.net.encoder_parameters():
        p.requires_grad_(not frozen)
    net: nn.Module = model
    if config.compile:
        net = torch.compile(net)  # type: ignore[assignment]
    if config.distributed:
        ids = [device.index] if device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(net, device_ids=ids)
    return net


def _mean_over_ranks(losses: list[float], device: torch.device, distributed: bool) -> float:
    """The epoch's training loss over every rank's batches, not rank 0's alone."""
    total = torch.tensor([sum(losses), len(losses)], dtype=torch.float64, device=device)
    if distributed:
        dist.all_reduce(total)
    return float(total[0] / total[1]) if total[1] else 0.0


def _stale(history: Sequence[dict], best_epoch: int, patience: int) -> bool:
    return bool(history) and history[-1]["epoch"] - best_epoch >= patience


def _save(path: Path, model, optimiser, scheduler, epoch, history, best, best_epoch, config):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "optimiser": optimiser.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "history": history,
            "best": best,
            "best_epoch": best_epoch,
            "config": {k: str(v) for k, v in asdict(config).items()},
        },
        tmp,
    )
    os.replace(tmp, path)  # a kill mid-write never leaves a torn checkpoint
