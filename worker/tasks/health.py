"""A trivial task that proves a worker consumes each queue end to end."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="tilesight.ping")
def ping(payload: str) -> str:
    return f"pong:{payload}"
