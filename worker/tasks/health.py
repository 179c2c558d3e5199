"""A trivial task that proves a worker consumes each queue end to end."""

from __future__ import annotations

from celery import shared_task

from tilesight import tasks


@shared_task(name=tasks.PING)
def ping(payload: str) -> str:
    return f"pong:{payload}"
