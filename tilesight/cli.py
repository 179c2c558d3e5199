"""The `tilesight` command: one typer app, each command group in tilesight/commands/."""

from __future__ import annotations

import typer

from tilesight.commands import jobs, keys, models, sources, stack
from tilesight.commands import train as train_cmd

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    help="Aerial imagery tiles with live building detection.",
)
app.command()(stack.up)
app.command()(stack.down)
app.command()(stack.status)
app.command()(stack.migrate)
app.command()(train_cmd.train)
app.command()(train_cmd.evaluate)
app.add_typer(keys.app, name="keys")
app.add_typer(sources.app, name="sources")
app.add_typer(jobs.app, name="jobs")
app.add_typer(models.app, name="models")


if __name__ == "__main__":
    app()
