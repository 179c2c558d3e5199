"""`tilesight sources add | list | remove`: imagery sources from a terminal."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from tilesight.db import make_engine, make_sessionmaker, session_scope
from tilesight.errors import TilesightError
from tilesight.imagery.register import register_source
from tilesight.imagery.sources import SourceInfo, delete_source, list_sources
from tilesight.settings import get_settings

app = typer.Typer(no_args_is_help=True, help="Register and list imagery sources.")
console = Console()


@app.command("add")
def add(
    uri: str = typer.Argument(..., help="GeoTIFF/COG path, chip folder or zip, URL, XYZ template"),
    name: str = typer.Option("", "--name", help="display name (default: the file name)"),
    attribution: str = typer.Option("", "--attribution", help="shown on the map"),
    source_id: str | None = typer.Option(None, "--id", help="id used in tile URLs"),
) -> None:
    """Register imagery; GeoTIFFs become COGs (with a progress bar), chip folders a mosaic."""
    settings = get_settings()
    if "://" not in uri and Path(uri).exists():
        uri = str(Path(uri).resolve())
    label = name or Path(uri.rstrip("/")).stem or uri
    engine = make_engine(settings)
    try:
        with make_sessionmaker(engine)() as session, _bar() as bar:
            task = bar.add_task(f"registering {label}", total=1.0)
            source = register_source(
                settings,
                session,
                uri,
                name=label,
                attribution=attribution,
                source_id=source_id,
                progress=lambda done: bar.update(task, completed=done),
            )
            bar.update(task, completed=1.0)
    except TilesightError as exc:
        console.print(f"[red]✗[/] {exc.message}")
        for key, value in exc.detail.items():
            console.print(f"  {key}: {value}")
        raise typer.Exit(1) from exc
    finally:
        engine.dispose()
    console.print(
        f"[green]✓[/] {source.id}: {source.kind}, {source.crs}, zooms "
        f"{source.minzoom}-{source.maxzoom}, {settings.api_url}/tiles/{source.id}/tilejson.json"
    )


@app.command("list")
def list_command() -> None:
    """The registered sources, their zoom ranges and tile URLs."""
    settings = get_settings()
    engine = make_engine(settings)
    try:
        with make_sessionmaker(engine)() as session:
            rows = [SourceInfo.from_row(row) for row in list_sources(session)]
    finally:
        engine.dispose()
    table = Table("id", "name", "kind", "crs", "zooms", "bands", "attribution")
    for s in rows:
        zooms = f"{s.minzoom}-{s.maxzoom}"
        table.add_row(
            s.id, s.name, s.kind, s.crs, zooms, f"{s.band_count}×{s.dtype}", s.attribution
        )
    console.print(table)


@app.command("remove")
def remove(source_id: str = typer.Argument(..., help="the source's id")) -> None:
    """Delete a source and the COG Tilesight made for it."""
    settings = get_settings()
    engine = make_engine(settings)
    try:
        with session_scope(make_sessionmaker(engine)) as session:
            delete_source(settings, session, source_id)
    except TilesightError as exc:
        console.print(f"[red]✗[/] {exc.message}")
        raise typer.Exit(1) from exc
    finally:
        engine.dispose()
    console.print(f"[green]✓[/] {source_id} removed")


def _bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=console,
    )
