"""`tilesight train` and `tilesight evaluate`: parse options, call tilesight.model, draw bars."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from tilesight.errors import TilesightError
from tilesight.model.data import ChipSpec
from tilesight.model.job import TrainingRun, evaluate_version, run_training
from tilesight.model.train import Progress as TrainProgress
from tilesight.model.train import TrainConfig, torchrun_env

app = typer.Typer(no_args_is_help=True, help="Train and evaluate building models.")
console = Console()


def _pairs(imagery: list[Path], labels: list[Path]) -> list[tuple[Path, Path]]:
    if len(imagery) != len(labels):
        raise typer.BadParameter("give one --labels per --imagery, in the same order")
    return list(zip(imagery, labels, strict=True))


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def _weights(text: str) -> tuple[float, ...] | None:
    try:
        return tuple(float(w) for w in _names(text)) or None
    except ValueError as exc:
        raise typer.BadParameter(f"class weights are numbers, got {text!r}") from exc


@app.command()
def train(
    imagery: list[Path] = typer.Option(..., "--imagery", "-i", help="chip folder or raster"),
    labels: list[Path] = typer.Option(
        ...,
        "--labels",
        "-l",
        help="footprints: GeoJSON (any CRS) or an OSM extract (.osm.pbf)",
    ),
    model_repo: Path = typer.Option(Path("model_repo"), help="Triton model repository"),
    name: str = typer.Option("buildings", help="model name in the repository"),
    zoom: int = typer.Option(19, help="the model's native Web-Mercator zoom"),
    buffer: int = typer.Option(32, help="context pixels each side of a tile"),
    border: bool = typer.Option(False, help="add a border class between touching buildings"),
    classes: str = typer.Option(
        "", help="multi-class: comma-separated class names, background first (default: buildings)"
    ),
    class_property: str = typer.Option(
        "class", help="multi-class polygons: property naming the class"
    ),
    class_weights: str = typer.Option(
        "", help="multi-class: comma-separated loss weight per class"
    ),
    ignore_value: int | None = typer.Option(None, help="label raster value for unlabelled pixels"),
    hard_negatives_from: Path | None = typer.Option(
        None, help="version folder whose false positives choose the empty tiles kept"
    ),
    monitor: str = typer.Option("pixel_iou", help="tune-split score for early stopping"),
    width: int = typer.Option(8, help="U-Net channels at full resolution"),
    depth: int = typer.Option(4, help="U-Net levels (input must be a multiple of 2**depth)"),
    epochs: int = typer.Option(40),
    batch_size: int = typer.Option(8),
    lr: float = typer.Option(2e-3),
    patience: int = typer.Option(10, help="early stopping: epochs without improvement"),
    workers: int = typer.Option(0, help="DataLoader worker processes"),
    seed: int = typer.Option(0),
    block_zoom: int = typer.Option(18, help="split train/validation by tiles of this zoom"),
    val_fraction: float = typer.Option(0.25),
    empty_ratio: float = typer.Option(0.25, help="empty tiles kept per tile with buildings"),
    tune_fraction: float = typer.Option(
        0.2, help="training blocks held out for early stopping (0: keep the last epoch)"
    ),
    init_from: Path | None = typer.Option(None, help="version folder to fine-tune from"),
    freeze_encoder_epochs: int = typer.Option(0),
    compile: bool = typer.Option(False, help="torch.compile the model"),
    distributed: bool = typer.Option(
        False, help="one run across torchrun's processes (on by itself under torchrun)"
    ),
    max_steps_per_epoch: int | None = typer.Option(
        None, min=1, help="cut every epoch short (smoke tests, benchmarks)"
    ),
    threads: int = typer.Option(0, help="CPU threads for torch (0: torch's default)"),
    run_dir: Path = typer.Option(Path(".tilesight/runs/latest"), help="checkpoints"),
    cache_dir: Path = typer.Option(Path(".tilesight/chips"), help="chip cache"),
    resume: bool = typer.Option(True, help="continue from run_dir/last.pt if present"),
) -> None:
    """Train a U-Net on imagery + footprints and export it as a new model version."""
    if threads:
        torch.set_num_threads(threads)
    rank, world = torchrun_env()
    distributed = distributed or world > 1  # torchrun started several: they train as one
    try:
        run = TrainingRun(
            sources=_pairs(imagery, labels),
            model_repo=model_repo, model_name=name,
            chips=ChipSpec(
                zoom=zoom, buffer=buffer, border=border, classes=_names(classes),
                class_property=class_property, ignore_value=ignore_value,
            ),
            hard_negatives_from=hard_negatives_from,
            width=width, depth=depth, cache_dir=cache_dir, block_zoom=block_zoom,
            val_fraction=val_fraction, empty_ratio=empty_ratio, init_from=init_from,
            tune_fraction=tune_fraction,
            loop=TrainConfig(
                epochs=epochs, batch_size=batch_size, lr=lr, patience=patience,
                workers=workers, seed=seed, compile=compile, distributed=distributed,
                freeze_encoder_epochs=freeze_encoder_epochs, run_dir=run_dir, resume=resume,
                max_steps_per_epoch=max_steps_per_epoch,
                monitor=monitor, class_weights=_weights(class_weights),
            ),
        )  # fmt: skip
        columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"))
        with Progress(*columns, TimeRemainingColumn(), console=console, disable=rank != 0) as bar:
            task = bar.add_task("epoch 1", total=1.0, info="")

            def show(p: TrainProgress) -> None:
                if p.phase == "epoch" and p.metrics:
                    m = p.metrics
                    objects = f"  object F1 {m['object_f1']:.3f}" if "object_f1" in m else ""
                    console.print(
                        f"epoch {p.epoch:3d}  val loss {m['loss']:.3f}  IoU {m['pixel_iou']:.3f}"
                        f"  F1 {m['f1']:.3f}{objects}"
                    )
                info = f"loss {p.loss:.3f}" if p.loss is not None else ""
                bar.update(task, completed=p.fraction, description=f"epoch {p.epoch}", info=info)

            version_dir, meta = run_training(run, show)
    except TilesightError as exc:
        console.print(f"[red]error:[/] {exc.message}")
        raise typer.Exit(2) from exc
    if rank != 0:  # rank 0 reports the run and exports its one version
        return
    _print_scores(meta["metrics"], meta["metrics"]["baselines"])
    console.print(f"[green]✓[/] exported {version_dir}")


@app.command()
def evaluate(
    model: Path = typer.Argument(..., help="a version folder, e.g. model_repo/buildings/1"),
    source: Path = typer.Argument(..., help="chip folder or raster"),
    labels: Path = typer.Argument(..., help="footprints GeoJSON"),
    threshold: float | None = typer.Option(None, help="default: the model's own"),
    cache_dir: Path = typer.Option(Path(".tilesight/chips")),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """Score a model version on every labelled tile of an area."""
    try:
        scores = evaluate_version(model, source, labels, cache_dir, threshold)
    except TilesightError as exc:
        console.print(f"[red]error:[/] {exc.message}")
        raise typer.Exit(2) from exc
    if as_json:
        print(json.dumps(scores, indent=2))
    else:
        _print_scores(scores, {})


def _print_scores(model: dict, baselines: dict) -> None:
    keys = ["pixel_iou", "precision", "recall", "f1", "object_f1"]
    keys = [k for k in keys if k in model] + sorted(k for k in model if k.startswith("iou_"))
    table = Table("", *keys)
    table.add_row("model", *(f"{model[k]:.3f}" for k in keys))
    for name, scores in baselines.items():
        table.add_row(name, *(f"{scores.get(k, float('nan')):.3f}" for k in keys))
    console.print(table)


if __name__ == "__main__":
    app()
