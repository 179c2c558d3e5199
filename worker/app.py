"""The Celery application: a `gpu` queue for inference and training, a `cpu` queue for the rest.

Tasks are acknowledged late and prefetched one at a time, so a worker killed mid-task
hands its task back to the broker instead of losing it; every task is written to be
idempotent for that reason. The visibility timeout is set above the longest task.
"""

from __future__ import annotations

import os

from celery import Celery
from kombu import Exchange, Queue

from tilesight import tasks
from tilesight.settings import get_settings

TASK_MODULES = ["worker.tasks"]


def limit_threads(threads: int = 1) -> None:
    """One compute thread per worker process for torch, OpenMP and BLAS: the model runs
    in Triton, which is sized to the cores (tilesight.tritonserver.instance_plan), and a
    worker's own pools (torch's default is one thread per core) only took CPU from it,
    so area jobs got slower as workers were added (bench/README.md)."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(name, str(threads))
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def create_celery() -> Celery:
    limit_threads()
    settings = get_settings()
    app = Celery("tilesight", broker=settings.celery_broker_url, backend=settings.redis_url)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_queues=[Queue(q.value, Exchange(q.value), routing_key=q.value) for q in tasks.Queue],
        task_default_queue=tasks.Queue.CPU.value,
        task_routes={
            pattern: {"queue": q.value, "routing_key": q.value}
            for pattern, q in tasks.ROUTES.items()
        },
        broker_transport_options={"visibility_timeout": settings.celery_visibility_timeout_s},
        result_backend_transport_options={
            "visibility_timeout": settings.celery_visibility_timeout_s
        },
        broker_connection_retry_on_startup=True,
        result_expires=24 * 3600,
        worker_hijack_root_logger=False,
        task_track_started=True,
    )
    app.autodiscover_tasks(TASK_MODULES, related_name=None, force=True)
    return app


app = create_celery()
