"""`tilesight up | down | status | migrate`: the local stack from a terminal."""

from __future__ import annotations

import signal
import time

import typer
from rich.console import Console
from rich.table import Table

from tilesight.db import migrate as run_migrations
from tilesight.settings import get_settings
from tilesight.stack import Stack, StackError, bring_up

console = Console()


def up(
    no_demo: bool = typer.Option(False, "--no-demo", help="skip loading the demo data"),
) -> None:
    """Start PostGIS, Redis, Triton, a Celery worker and the API; Ctrl-C stops them all."""
    settings = get_settings()
    stack = Stack(settings)
    started = time.monotonic()
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            raise KeyboardInterrupt

    for signum in (signal.SIGINT, signal.SIGTERM):  # SIGINT too: a background `make up`
        signal.signal(signum, on_signal)  # starts with it ignored
    try:
        with console.status("starting the stack") as status:

            def show(line: str) -> None:
                console.print(f"[green]✓[/] {line}")
                status.update("working on the next step")

            bring_up(stack, demo=settings.load_demo and not no_demo, on_line=show)
        console.print(
            f"\n[bold]Tilesight is ready[/] in {time.monotonic() - started:.0f}s: "
            f"[link]{settings.api_url}/[/]  (API docs: {settings.api_url}/docs)\n"
            "Ctrl-C stops everything."
        )
        while True:
            dead = stack.watch()
            if dead:
                console.print(f"[red]{dead} exited[/]; see {settings.run_dir / (dead + '.log')}")
                raise typer.Exit(1)
            time.sleep(1)
    except StackError as exc:
        console.print(f"[red]error:[/] {exc}")
        stack.stop()
        raise typer.Exit(1) from exc
    except KeyboardInterrupt:
        console.print("\nstopping…")
    finally:
        stack.stop()
        console.print("stopped.")


def down() -> None:
    """Stop a stack started by `tilesight up` in another shell."""
    stack = Stack(get_settings())
    stack.stop()
    console.print("stopped.")


def status() -> None:
    """A table of each component: pid, port and health."""
    stack = Stack(get_settings())
    table = Table("component", "pid", "port", "health")
    rows = stack.status()
    for row in rows:
        health = (
            "[green]ok[/]"
            if row["healthy"]
            else ("[yellow]not answering[/]" if row["running"] else "[red]stopped[/]")
        )
        table.add_row(str(row["name"]), str(row["pid"] or "-"), str(row["port"] or "-"), health)
    console.print(table)
    if not all(r["healthy"] for r in rows):
        raise typer.Exit(1)


def migrate() -> None:
    """Apply database migrations (`tilesight up` does this itself)."""
    run_migrations(get_settings())
    console.print("migrations applied.")
