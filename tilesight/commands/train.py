"""`tilesight train` and `tilesight evaluate`: parse options, call tilesight.training,
draw bars.

The hyperparameter options are built from `TrainingSpec`'s fields (name, default,
help), and the values are checked by the spec, so the CLI, the API and the worker share
one default and one bound per field. Options of this machine alone (files, threads,
torchrun, folders) are written out below.
"""

from __future__ import annotations

import inspect
import json
import types
import typing
from pathlib import Path
from typing import Any

import torch
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from tilesight.errors import TilesightError
from tilesight.model.repository import version_dir
from tilesight.settings import get_settings
from tilesight.training.distributed import torchrun_env
from tilesight.training.loop import Progress as TrainProgress
from tilesight.training.pipeline import TrainingPlan, run_training
from tilesight.training.scoring import score_version
from tilesight.training.spec import TrainingSpec

console = Console()

#: Options of this machine, not of the model: (annotation, typer option).
MACHINE_OPTIONS: dict[str, tuple[Any, Any]] = {
    "imagery": (list[Path], typer.Option(..., "--imagery", "-i", help="chip folder or raster")),
    "labels": (
        list[Path],
        typer.Option(
            ..., "--labels", "-l", help="footprints: GeoJSON (any CRS) or an OSM extract (.osm.pbf)"
        ),
    ),
    "model_repo": (Path | None, typer.Option(None, help="Triton model repository (settings')")),
    "name": (str, typer.Option("buildings", help="model name in the repository")),
    "init_from": (Path | None, typer.Option(None, help="version folder to fine-tune from")),
    "hard_negatives_from": (
        Path | None,
        typer.Option(None, help="version folder whose false positives choose the empty tiles kept"),
    ),
    "workers": (int, typer.Option(0, help="DataLoader worker processes")),
    "compile": (bool, typer.Option(False, help="torch.compile the model")),
    "distributed": (
        bool,
        typer.Option(
            False, help="one run across torchrun's processes (on by itself under torchrun)"
        ),
    ),
    "threads": (int, typer.Option(0, help="CPU threads for torch (0: torch's default)")),
    "run_dir": (Path | None, typer.Option(None, help="checkpoints (default: <home>/runs/latest)")),
    "cache_dir": (Path | None, typer.Option(None, help="chip cache (default: <home>/chips)")),
    "resume": (bool, typer.Option(True, help="continue from run_dir/last.pt if present")),
}
#: Spec fields typed for the command line as text: lists and unions the spec parses.
AS_TEXT = {"classes", "class_weights", "positive_weight"}


def _cli_type(name: str, annotation: Any) -> Any:
    """The option type of a spec field: its own where typer takes it, else text."""
    if name in AS_TEXT:
        return str | None
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Literal:
        return str
    if isinstance(annotation, types.UnionType) and len(args) == 1:
        return args[0] | None
    return annotation


def _spec_parameters() -> list[inspect.Parameter]:
    params = []
    for name, info in TrainingSpec.model_fields.items():
        default = None if name in AS_TEXT else info.get_default(call_default_factory=True)
        option = typer.Option(default, help=info.description or "")
        kind = inspect.Parameter.KEYWORD_ONLY
        params.append(
            inspect.Parameter(
                name, kind, default=option, annotation=_cli_type(name, info.annotation)
            )
        )
    return params


def _spec_of(options: dict[str, Any]) -> TrainingSpec:
    """The spec of the given options: unset text fields left out, bounds checked."""
    fields = {k: v for k, v in options.items() if k in TrainingSpec.model_fields}
    fields = {k: v for k, v in fields.items() if not (k in AS_TEXT and v in (None, ""))}
    try:
        return TrainingSpec.model_validate(fields)
    except ValidationError as exc:
        problems = "; ".join(
            f"--{'-'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise typer.BadParameter(problems.replace("_", "-")) from exc


def _plan_of(options: dict[str, Any], spec: TrainingSpec, distributed: bool) -> TrainingPlan:
    imagery, labels = options["imagery"], options["labels"]
    if len(imagery) != len(labels):
        raise typer.BadParameter("give one --labels per --imagery, in the same order")
    settings = get_settings()
    model_repo = options["model_repo"] or settings.model_repo
    init_from = options["init_from"]
    if init_from is None and spec.init_from_version is not None:
        init_from = version_dir(model_repo, options["name"], spec.init_from_version)
    plan = TrainingPlan.from_spec(
        spec,
        sources=list(zip(imagery, labels, strict=True)),
        model_repo=model_repo,
        model_name=options["name"],
        run_dir=options["run_dir"] or settings.home / "runs" / "latest",
        cache_dir=options["cache_dir"] or settings.home / "chips",
        init_from=init_from,
        workers=options["workers"],
        compile=options["compile"],
        distributed=distributed,
        resume=options["resume"],
    )
    plan.hard_negatives_from = options["hard_negatives_from"]
    return plan


def train(**options: Any) -> None:
    """Train a U-Net on imagery + footprints and export it as a new model version."""
    if options["threads"]:
        torch.set_num_threads(options["threads"])
    rank, world = torchrun_env()
    distributed = options["distributed"] or world > 1  # torchrun started several: one run
    try:
        plan = _plan_of(options, _spec_of(options), distributed)
        version_dir_, meta = _run_with_bar(plan, rank)
    except TilesightError as exc:
        console.print(f"[red]error:[/] {exc.message}")
        raise typer.Exit(2) from exc
    if rank != 0:  # rank 0 reports the run and exports its one version
        return
    _print_scores(meta["metrics"], meta["metrics"]["baselines"])
    split, validation = meta["split"], meta["validation"]
    console.print(
        f"split: {split['train_tiles']} training tile(s) ({split['train_buildings']} buildings), "
        f"{split['val_tiles']} validation ({split['val_buildings']}), "
        f"{split['tune_tiles']} tune; blocks of zoom {split['block_zoom']}"
    )
    console.print(f"validation: {validation['best_epoch_chosen_on']}")
    cut = validation.get("threshold", {})
    if "value" in cut:
        console.print(
            f"cut: threshold {cut['value']}, watershed depth {cut.get('peak_depth')}, "
            f"chosen on {cut['chosen_on']}"
        )
    console.print(f"[green]✓[/] exported {version_dir_}")


train.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [
        inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=o, annotation=a)
        for n, (a, o) in MACHINE_OPTIONS.items()
    ]
    + _spec_parameters()
)
train.__annotations__ = {p.name: p.annotation for p in train.__signature__.parameters.values()}  # type: ignore[attr-defined]


def _run_with_bar(plan: TrainingPlan, rank: int) -> tuple[Path | None, dict[str, Any]]:
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

        return run_training(plan, show)


def evaluate(
    model: Path = typer.Argument(..., help="a version folder, e.g. model_repo/buildings/1"),
    source: Path = typer.Argument(..., help="chip folder or raster"),
    labels: Path = typer.Argument(..., help="footprints GeoJSON"),
    threshold: float | None = typer.Option(None, help="default: the model's own"),
    cache_dir: Path | None = typer.Option(None, help="chip cache (default: <home>/chips)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """Score a model version on every labelled tile of an area."""
    try:
        scores = score_version(model, source, labels, cache_dir, threshold)
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
