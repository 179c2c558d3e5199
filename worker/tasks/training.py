"""Training runs on the gpu queue: thin, idempotent, resumable after a lost worker."""

from __future__ import annotations

import uuid

from celery import shared_task

from tilesight import tasks
from tilesight.db import make_engine, make_sessionmaker
from tilesight.settings import get_settings
from tilesight.training.service import execute_run


@shared_task(name=tasks.TRAINING_RUN, acks_late=True, reject_on_worker_lost=True)
def run(run_id: str) -> int | None:
    """Re-delivery after a crash resumes from the run's last checkpoint (see execute_run).

    Training computes in this process, so it takes every core back from the one thread
    a worker keeps for area jobs (worker.app.limit_threads), and gives it back after."""
    import torch

    from tilesight.tritonserver import cpu_cores

    kept = torch.get_num_threads()
    torch.set_num_threads(cpu_cores())
    try:
        return _run(run_id)
    finally:
        torch.set_num_threads(kept)


def _run(run_id: str) -> int | None:
    settings = get_settings()
    engine = make_engine(settings)
    try:
        return execute_run(settings, make_sessionmaker(engine), uuid.UUID(run_id))
    finally:
        engine.dispose()
