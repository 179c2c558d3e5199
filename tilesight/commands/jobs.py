"""`tilesight jobs ...`: submit an area job, follow it, export its buildings.

The commands talk to the running API (not to the database), so they work the same
against a laptop stack or a remote deployment and go through the same checks.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tilesight.settings import get_settings
from tilesight.states import JobState

app = typer.Typer(no_args_is_help=True, help="Area jobs: find every building in an area.")
console = Console()

KeyOpt = Annotated[str | None, typer.Option("--key", help="API key, if the server needs one")]
ApiOpt = Annotated[str | None, typer.Option("--api", help="API URL; the local stack by default")]


def _client(api: str | None, key: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=api or get_settings().api_url, headers=headers, timeout=60)


def _check(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        try:
            body = response.json()
            message = body.get("error", response.text)
            detail = body.get("detail")
        except ValueError:
            message, detail = response.text, None
        console.print(f"[red]error {response.status_code}:[/red] {message}")
        if detail:
            console.print(detail)
        raise typer.Exit(1)
    return response.json()


@app.command()
def submit(
    aoi: Annotated[Path, typer.Argument(help="GeoJSON file: Polygon, MultiPolygon or Feature")],
    source: Annotated[str, typer.Option(help="imagery source id")],
    model: Annotated[str | None, typer.Option(help="model name")] = None,
    version: Annotated[int | None, typer.Option(help="model version")] = None,
    square: Annotated[bool, typer.Option(help="square off building outlines")] = False,
    wait: Annotated[bool, typer.Option(help="follow progress until the job ends")] = True,
    api: ApiOpt = None,
    key: KeyOpt = None,
) -> None:
    """Submit an area job and follow its progress."""
    body = {
        "source": source,
        "model": model,
        "version": version,
        "aoi": json.loads(aoi.read_text()),
    }
    body["options"] = {"square": True} if square else {}
    with _client(api, key) as client:
        created = _check(client.post("/jobs", json=body))
        console.print(
            f"job [bold]{created['id']}[/bold]: {created['tiles']} tiles in "
            f"{created['chunks_total']} chunks, {created['area_km2']:.3f} km²"
        )
        if wait:
            _follow(client, created["id"])


def _follow(client: httpx.Client, job_id: str) -> None:
    with Progress(
        TextColumn("[bold]{task.fields[state]}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} chunks"),
        TextColumn("{task.fields[buildings]} buildings"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("job", total=None, state=JobState.QUEUED.value, buildings=0)
        while True:
            job = _check(client.get(f"/jobs/{job_id}"))
            progress.update(
                task,
                total=job["chunks_total"],
                completed=job["chunks_done"],
                state=job["state"],
                buildings=job["buildings"],
            )
            if JobState(job["state"]).is_terminal:
                break
            time.sleep(1)
    _print_job(job)
    if job["state"] != JobState.DONE:
        raise typer.Exit(1)


def _print_job(job: dict[str, Any]) -> None:
    table = Table(show_header=False, box=None)
    for name in ("id", "state", "progress", "tiles", "area_km2", "buildings", "error"):
        if job.get(name) is not None:
            table.add_row(name, str(job[name]))
    table.add_row("timings (s)", ", ".join(f"{k} {v:.2f}" for k, v in job["timings"].items()))
    console.print(table)


@app.command()
def status(job_id: str, api: ApiOpt = None, key: KeyOpt = None) -> None:
    """Show a job's state, progress and timings."""
    with _client(api, key) as client:
        _print_job(_check(client.get(f"/jobs/{job_id}")))


@app.command("list")
def list_(
    state: Annotated[str | None, typer.Option(help="only jobs in this state")] = None,
    limit: int = 20,
    api: ApiOpt = None,
    key: KeyOpt = None,
) -> None:
    """List jobs, newest first."""
    params: dict[str, Any] = {"limit": limit, **({"state": state} if state else {})}
    with _client(api, key) as client:
        page = _check(client.get("/jobs", params=params))
    table = Table("id", "state", "progress", "tiles", "km²", "buildings", "created")
    for j in page["items"]:
        table.add_row(
            j["id"], j["state"], f"{j['progress']:.0f}%", str(j["tiles"]),
            f"{j['area_km2']:.3f}", str(j["buildings"]), j["created_at"][:19],
        )  # fmt: skip
    console.print(table)


@app.command()
def cancel(job_id: str, api: ApiOpt = None, key: KeyOpt = None) -> None:
    """Cancel a job: its remaining chunks do nothing."""
    with _client(api, key) as client:
        _print_job(_check(client.post(f"/jobs/{job_id}/cancel")))


@app.command()
def export(
    job_id: str,
    out: Annotated[Path, typer.Argument(help="where to write the GeoJSON")],
    bbox: Annotated[str | None, typer.Option(help="west,south,east,north")] = None,
    api: ApiOpt = None,
    key: KeyOpt = None,
) -> None:
    """Download a job's buildings as RFC 7946 GeoJSON."""
    params = {"bbox": bbox} if bbox else {}
    with _client(api, key) as client:
        url = f"/jobs/{job_id}/buildings.geojson"
        with client.stream("GET", url, params=params) as response:
            if response.status_code >= 400:
                response.read()
                _check(response)
            tmp = out.with_suffix(out.suffix + ".part")
            with (
                tmp.open("wb") as f,
                Progress(
                    TextColumn("[bold]export"), BarColumn(), DownloadColumn(), console=console
                ) as progress,
            ):
                task = progress.add_task("export", total=None)
                for piece in response.iter_bytes():
                    f.write(piece)
                    progress.advance(task, len(piece))
            tmp.replace(out)
    count = len(json.loads(out.read_text())["features"])
    console.print(f"wrote {count} buildings to {out}")
