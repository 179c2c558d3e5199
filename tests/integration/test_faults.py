"""Faults during an area job: Redis, PostgreSQL or Triton restarted mid-job. Each run must
end done, with the same buildings as an undisturbed run: none missing, none doubled.

(A SIGKILLed worker is in test_jobs.py; Triton down while tiles are requested is in
test_predictions.py.)
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from tests.integration.jobs_support import features, job_state, same_buildings, submit, wait
from tilesight.stack import Stack


def wait_until_running(db: Engine, job_id: str) -> None:
    deadline = time.monotonic() + 120
    while job_state(db, job_id)[0] == "queued":
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.05)


@pytest.mark.parametrize("component", ["redis", "postgres", "triton"])
def test_a_restart_mid_job_loses_nothing_and_doubles_nothing(
    client: httpx.Client,
    db: Engine,
    source: str,
    stack: Stack,
    done_job: dict[str, Any],
    component: str,
) -> None:
    job_id = submit(client, source).json()["id"]
    wait_until_running(db, job_id)
    target = stack.component(component)
    _state, done, total = job_state(db, job_id)
    assert done < total, "the job finished before the fault: it would prove nothing"
    stack.stop_component(target)
    try:
        time.sleep(3)  # down long enough for the running chunk to notice
    finally:
        stack.start_component(target)
    job = wait(client, db, job_id, timeout_s=300)
    assert job["state"] == "done", job
    assert job["chunks_done"] == job["chunks_total"]
    assert same_buildings(features(client, job_id), features(client, done_job["id"]))


def test_a_retry_that_cannot_be_published_while_redis_is_down_loses_nothing(
    client: httpx.Client, db: Engine, source: str, stack: Stack, done_job: dict[str, Any]
) -> None:
    """Triton goes down while Redis is down: the running chunk fails (transient) and its
    retry has no broker to go to. It must wait for Redis or stay unacknowledged, not be
    acked and dropped, which left the job `running` for good."""
    job_id = submit(client, source).json()["id"]
    wait_until_running(db, job_id)
    _state, done, total = job_state(db, job_id)
    assert done < total, "the job finished before the fault: it would prove nothing"
    redis, triton = stack.component("redis"), stack.component("triton")
    stack.stop_component(redis)
    stack.stop_component(triton)
    try:
        time.sleep(8)  # the chunk meets Triton down and tries to publish its retry
    finally:
        stack.start_component(redis)
        stack.start_component(triton)
    job = wait(client, db, job_id, timeout_s=300)
    assert job["state"] == "done", job
    assert job["chunks_done"] == job["chunks_total"]
    assert same_buildings(features(client, job_id), features(client, done_job["id"]))
