"""`tilesight models list | show | promote | sync`: model versions from the server's shell."""

from __future__ import annotations

import asyncio
import json

import typer
from rich.console import Console
from rich.table import Table

from tilesight import registry
from tilesight.db import make_engine, make_sessionmaker, session_scope
from tilesight.settings import get_settings
from tilesight.triton import TritonClient

app = typer.Typer(no_args_is_help=True, help="List, promote and load model versions.")
console = Console()
METRICS = ("pixel_iou", "precision", "recall", "f1", "object_f1")


def _sessions():
    return make_sessionmaker(make_engine(get_settings()))


@app.command("list")
def list_() -> None:
    """Every model version with its validation metrics; * marks the promoted one."""
    table = Table("model", "version", "zoom", *METRICS, "created")
    with session_scope(_sessions()) as session:
        models = registry.list_models(session)
    for model in models:
        for v in model.versions:
            table.add_row(
                model.name,
                f"{v.version}{'*' if v.promoted else ''}",
                str(v.meta.get("zoom", "")),
                *(_fmt(v.metrics.get(m)) for m in METRICS),
                f"{v.created_at:%Y-%m-%d %H:%M}",
            )
    console.print(table)


@app.command()
def show(model: str, version: int = typer.Argument(None, help="default: the promoted one")) -> None:
    """The metadata of one version (classes, zoom, buffer, metrics, training data)."""
    settings = get_settings()
    with session_scope(_sessions()) as session:
        resolved = registry.resolve_version(session, model, version)
    typer.echo(json.dumps(registry.model_metadata(settings, model, resolved), indent=2))


@app.command()
def promote(model: str, version: int) -> None:
    """Make VERSION the default for every overlay and new job; takes effect at once."""
    with session_scope(_sessions()) as session:
        previous = registry.promote(session, model, version)
    console.print(f"{model}: version {version} promoted (was {previous})")


@app.command()
def sync(model: str = typer.Argument(None, help="default: every model")) -> None:
    """Register version folders found in model_repo/ and ask Triton to load them."""
    settings = get_settings()
    with session_scope(_sessions()) as session:
        for line in registry.sync_models(settings, session):
            console.print(line)
    names = [model] if model else registry.model_names(settings)

    async def load() -> None:
        triton = TritonClient(settings.triton_url, settings.triton_timeout_s)
        try:
            for name in names:
                await registry.ensure_loaded(triton, name, settings)
                console.print(f"Triton loaded {name}")
        finally:
            await triton.close()

    asyncio.run(load())


def _fmt(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else ""
