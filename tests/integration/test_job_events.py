"""Job progress reaches SSE clients through Redis pub/sub, with the database as the truth.

A job is planned straight into the database with no chunk queued, so nothing but the
test changes it: a message published on its channel must reach the client although the
row never changed, and the heartbeat read then puts the database's figures back. A real
job's chunk writes and merge are published as they happen.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from shapely.geometry import mapping
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from tests.integration.jobs_support import aoi_polygon, submit, wait
from tilesight.jobs import events
from tilesight.jobs.service import create_job
from tilesight.stack import Stack


class EventReader:
    """Reads one job's SSE stream in a thread; events land in a queue as they arrive."""

    def __init__(self, api_url: str, job_id: str) -> None:
        self.events: queue.Queue[tuple[str, dict[str, Any], float]] = queue.Queue()
        self.thread = threading.Thread(target=self._run, args=(api_url, job_id), daemon=True)
        self.thread.start()

    def _run(self, api_url: str, job_id: str) -> None:
        with (
            httpx.Client(base_url=api_url, timeout=120) as client,
            client.stream("GET", f"/jobs/{job_id}/events") as stream,
        ):
            name = ""
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    self.events.put((name, json.loads(line[6:]), time.monotonic()))

    def next(self, timeout: float = 30) -> tuple[str, dict[str, Any], float]:
        return self.events.get(timeout=timeout)


@pytest.fixture
def idle_job(stack: Stack, db: Engine, source: str) -> Iterator[str]:
    """A queued job whose chunks were never sent to a worker."""
    with Session(db) as session, session.begin():
        job = create_job(
            session,
            stack.settings,
            source_id=source,
            model=stack.settings.default_model,
            version=None,
            aoi=mapping(aoi_polygon()),
        )
        job_id = str(job.id)
    yield job_id


@pytest.fixture
def bus(stack: Stack) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(stack.settings.redis_url)
    yield client
    client.close()


def test_a_published_message_reaches_the_client_without_a_database_change(
    api_url: str, client: httpx.Client, bus: redis.Redis, idle_job: str
) -> None:
    reader = EventReader(api_url, idle_job)
    name, first, _ = reader.next()
    assert (name, first["state"], first["chunks_done"], first["buildings"]) == (
        "progress",
        "queued",
        0,
        0,
    )
    total = first["chunks_total"]
    # nobody else publishes on this job, and its row says 0 chunks and 0 buildings
    message = {"state": "running", "chunks_done": 1, "chunks_total": total, "buildings": 7}
    deadline = time.monotonic() + 10
    while bus.publish(events.channel(idle_job), json.dumps(message)) == 0:
        assert time.monotonic() < deadline, "the events endpoint never subscribed"
        time.sleep(0.05)
    published = time.monotonic()
    name, pushed, arrived = reader.next()
    assert name == "progress"
    assert (pushed["state"], pushed["chunks_done"], pushed["buildings"]) == ("running", 1, 7)
    assert pushed["timings"] == first["timings"]  # the rest of the status is kept
    assert arrived - published < events.HEARTBEAT_S  # pushed, not found by a poll

    # the database stays the truth: the heartbeat read brings its figures back
    name, healed, _ = reader.next(timeout=events.HEARTBEAT_S + 10)
    assert (healed["state"], healed["chunks_done"], healed["buildings"]) == ("queued", 0, 0)

    # a message a follower cannot read is skipped, not fatal
    bus.publish(events.channel(idle_job), b"not json")
    cancelled = client.post(f"/jobs/{idle_job}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    name, last, _ = reader.next()
    assert (name, last["state"]) == ("progress", "cancelled")
    assert last["finished_at"] is not None  # the terminal status is read from the database
    assert reader.next()[:2] == ("end", {"state": "cancelled"})


def test_a_real_jobs_chunks_and_merge_are_published(
    api_url: str, client: httpx.Client, db: Engine, bus: redis.Redis, source: str
) -> None:
    pubsub = bus.pubsub(ignore_subscribe_messages=True)
    # subscribe to every job's channel before submitting, so the first chunk is not missed
    pubsub.psubscribe(events.channel("*"))
    response = submit(client, source)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    reader = EventReader(api_url, job_id)
    job = wait(client, db, job_id)
    assert job["state"] == "done", job

    published = []
    quiet_until = time.monotonic() + 2
    while time.monotonic() < quiet_until:
        message = pubsub.get_message(timeout=0.5)
        if message and message["channel"].decode() == events.channel(job_id):
            published.append(json.loads(message["data"]))
            quiet_until = time.monotonic() + 2
    pubsub.close()
    total = job["chunks_total"]
    assert [m["chunks_done"] for m in published if m["state"] in ("running", "merging")][
        -total:
    ] == list(range(1, total + 1)), published
    assert published[-1] == {
        "state": "done",
        "chunks_done": total,
        "chunks_total": total,
        "progress": 100.0,
        "buildings": job["buildings"],
        "error": None,
    }

    seen = []
    while True:
        name, data, _ = reader.next()
        if name == "end":
            break
        seen.append(data)
    assert data == {"state": "done"}
    assert seen[-1]["state"] == "done" and seen[-1]["buildings"] == job["buildings"]
    assert [s["progress"] for s in seen] == sorted(s["progress"] for s in seen)


def test_events_of_an_unknown_job_are_a_404(client: httpx.Client) -> None:
    response = client.get(f"/jobs/{uuid.uuid4()}/events")
    assert response.status_code == 404
    assert "does not exist" in response.json()["error"]
