"""`tilesight keys create | list | revoke`: API keys from the server's shell."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from tilesight.db import make_engine, make_sessionmaker, session_scope
from tilesight.keys import SCOPES, create_key, list_keys, revoke_key
from tilesight.settings import get_settings

app = typer.Typer(no_args_is_help=True, help="Create, list and revoke API keys.")
console = Console()


def _sessions():
    return make_sessionmaker(make_engine(get_settings()))


@app.command()
def create(
    name: str = typer.Option(..., help="who or what the key is for"),
    scopes: str = typer.Option("read,submit", help=f"comma-separated: {', '.join(SCOPES)}"),
) -> None:
    """Create a key; its token is shown once and cannot be retrieved later."""
    with session_scope(_sessions()) as session:
        row, token = create_key(session, name, [s.strip() for s in scopes.split(",") if s.strip()])
        console.print(f"created key [bold]{row.prefix}[/] ({name}, scopes {', '.join(row.scopes)})")
    typer.echo(token)


@app.command("list")
def list_() -> None:
    """Every key: prefix, name, scopes, whether it was revoked, and whether anyone could
    have minted it (made through the API while keys were off: revoke those you do not know)."""
    table = Table("prefix", "name", "scopes", "created", "revoked", "minted with keys off")
    with session_scope(_sessions()) as session:
        for row in list_keys(session):
            table.add_row(
                row.prefix,
                row.name,
                ",".join(row.scopes),
                f"{row.created_at:%Y-%m-%d %H:%M}",
                f"{row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else "",
                "yes" if row.minted_anonymously else "",
            )
    console.print(table)


@app.command()
def revoke(prefix: str) -> None:
    """Revoke a key by its prefix (the part after `ts_`); it stops working at once."""
    with session_scope(_sessions()) as session:
        revoke_key(session, prefix)
    console.print(f"revoked {prefix}")
