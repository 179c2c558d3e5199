"""Celery task modules; each is thin and calls the same tilesight functions the API uses."""

from worker.tasks import health, jobs, training  # noqa: F401
