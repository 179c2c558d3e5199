"""Celery task names and queues, the contract between who sends a task (api/, the job
service) and who runs it (worker/): both import these, so a rename cannot leave a sender
publishing to a task nobody consumes.
"""

from __future__ import annotations

from enum import StrEnum


class Queue(StrEnum):
    """`gpu` for inference and training (one worker per accelerator), `cpu` for the rest."""

    GPU = "gpu"
    CPU = "cpu"


RUN_CHUNK = "tilesight.jobs.run_chunk"
"""Infer, vectorise and write one chunk of an area job (gpu)."""
MERGE = "tilesight.jobs.merge"
"""Join the buildings cut by chunk seams once every chunk is done (cpu)."""
TRAINING_RUN = "tilesight.training.run"
"""Train, export and register one training run (gpu)."""
PING = "tilesight.ping"
"""Echo a payload: proves a queue is consumed (cpu)."""

ROUTES: dict[str, Queue] = {
    RUN_CHUNK: Queue.GPU,
    "tilesight.training.*": Queue.GPU,
    "tilesight.*": Queue.CPU,
}
"""Celery `task_routes` patterns, most specific first; a task not named here runs on cpu."""
