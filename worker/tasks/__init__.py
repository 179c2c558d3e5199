"""Celery task modules; each is thin and calls the same tilesight functions the API uses."""

from worker.tasks import health  # noqa: F401
from worker.tasks import jobs  # noqa: F401
