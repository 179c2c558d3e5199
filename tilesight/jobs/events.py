"""Job progress pushed over Redis pub/sub, with the database as the source of truth.

Whoever changes a job (a chunk's write, the merge, a failure, a cancel) publishes the
job's absolute counters on its channel after the transaction commits, never a delta, so
a follower that missed a message is put right by the next one. A follower subscribes
first and reads the database second, so nothing published in between is lost; it then
waits on the channel and reads the database again when the channel stays silent for a
heartbeat (a message lost, a publisher that died between commit and publish) or when
Redis fails (then it polls until it can subscribe again). Publishing is best effort: a
Redis that is down must not fail a chunk whose rows are already committed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import lru_cache
from typing import Any

import redis
import redis.asyncio as aioredis

from tilesight.states import JobState

log = logging.getLogger(__name__)

TERMINAL = JobState.terminal()
# the fields a message carries; the rest of a job's status (timings, times) is read
# from the database when the follower starts and when the job ends
FIELDS = ("state", "chunks_done", "chunks_total", "progress", "buildings", "error")
HEARTBEAT_S = 5.0  # a silent channel is checked against the database this often
POLL_S = 1.0  # how often the database is read while Redis is unreachable


def channel(job_id: uuid.UUID | str) -> str:
    return f"tilesight:job:{job_id}:events"


def progress_of(state: str, chunks_done: int, chunks_total: int) -> float:
    """Percent of chunks done, as the job's status reports it (100 once done)."""
    if state == JobState.DONE:
        return 100.0
    return round(100.0 * chunks_done / chunks_total, 1) if chunks_total else 0.0


class Publisher:
    """Publishes job changes from synchronous code (workers, sync routes)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def job_changed(
        self,
        job_id: uuid.UUID,
        *,
        state: str,
        chunks_done: int,
        chunks_total: int,
        buildings: int,
        error: str | None = None,
    ) -> None:
        """Call after the change is committed, so a follower that reads the database on
        this message sees it."""
        message = {
            "state": state,
            "chunks_done": chunks_done,
            "chunks_total": chunks_total,
            "progress": progress_of(state, chunks_done, chunks_total),
            "buildings": buildings,
            "error": error,
        }
        try:
            self.client.publish(channel(job_id), json.dumps(message))
        except (redis.RedisError, OSError) as exc:  # followers fall back to the database
            log.warning("could not publish progress of job %s: %s", job_id, exc)


@lru_cache(maxsize=4)
def publisher(redis_url: str) -> Publisher:
    """One client per process and URL, made on first use (after a worker's fork)."""
    client = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=1)
    return Publisher(client)


Status = dict[str, Any]
ReadStatus = Callable[[], Awaitable[Status]]


async def follow(
    client: aioredis.Redis,
    job_id: uuid.UUID,
    read: ReadStatus,
    *,
    heartbeat_s: float = HEARTBEAT_S,
    poll_s: float = POLL_S,
) -> AsyncIterator[Status]:
    """The job's status now, then on every change and every heartbeat (the caller drops
    repeats, and may send a keep-alive on one), ending with its terminal status.

    `read` returns the full status from the database. A message updates the FIELDS of
    the last status; a terminal message is confirmed (and completed) by a read."""
    while True:
        try:
            async for status in _subscribed(client, job_id, read, heartbeat_s):
                yield status
                if status["state"] in TERMINAL:
                    return
        except (aioredis.RedisError, OSError) as exc:
            log.warning("job %s events: Redis failed (%s); reading the database", job_id, exc)
        # Redis is unreachable: poll until a subscription works again
        status = await read()
        yield status
        if status["state"] in TERMINAL:
            return
        await asyncio.sleep(poll_s)


async def _subscribed(
    client: aioredis.Redis, job_id: uuid.UUID, read: ReadStatus, heartbeat_s: float
) -> AsyncIterator[Status]:
    async with client.pubsub() as pubsub:
        await pubsub.subscribe(channel(job_id))
        current = await read()  # after subscribing: nothing published since is missed
        yield current
        checked = time.monotonic()
        while current["state"] not in TERMINAL:
            wait = max(0.0, heartbeat_s - (time.monotonic() - checked))
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=wait)
            update = _fields(message["data"]) if message and message["type"] == "message" else None
            if update is None:
                if time.monotonic() - checked >= heartbeat_s:  # silent: ask the database
                    current, checked = await read(), time.monotonic()
                    yield current
                continue
            if update["state"] in TERMINAL:  # the final timings and times are in the DB
                current = await read()
            else:
                current = {**current, **update}
            yield current


def _fields(data: Any) -> Status | None:
    """The known fields of a message; None for anything unreadable (logged, skipped)."""
    try:
        body = json.loads(data)
        if not isinstance(body, dict) or not isinstance(body.get("state"), str):
            raise ValueError("no state")
    except (TypeError, ValueError) as exc:
        log.warning("ignoring an unreadable job event %r: %s", data, exc)
        return None
    return {k: body[k] for k in FIELDS if k in body}
