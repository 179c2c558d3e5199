"""The states a job, a job's chunk and a training run move through, as stored.

The values are the strings in the `state` columns of `jobs`, `job_chunks` and
`training_runs` (tilesight/tables.py); a StrEnum member compares equal to its string, so
rows written before these enums existed and SQL filters read the same.
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    """An area job: queued → running → merging → done, or failed / cancelled."""

    QUEUED = "queued"
    RUNNING = "running"
    MERGING = "merging"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @classmethod
    def terminal(cls) -> frozenset[JobState]:
        """States a job never leaves: its buildings are final (or it has none)."""
        return frozenset({cls.DONE, cls.FAILED, cls.CANCELLED})

    @classmethod
    def active(cls) -> frozenset[JobState]:
        """States that still hold queued work or a worker: counted against a key's quota."""
        return frozenset({cls.QUEUED, cls.RUNNING, cls.MERGING})

    @property
    def is_terminal(self) -> bool:
        return self in JobState.terminal()


class ChunkState(StrEnum):
    """One chunk of a job: queued until a worker writes it (done) or gives up (failed);
    cancelled when its job was cancelled or failed before it ran."""

    QUEUED = "queued"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class RunState(StrEnum):
    """A training run: queued → running → done, or failed / cancelled."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @classmethod
    def terminal(cls) -> frozenset[RunState]:
        """States a run never leaves."""
        return frozenset({cls.DONE, cls.FAILED, cls.CANCELLED})

    @classmethod
    def active(cls) -> frozenset[RunState]:
        """States in which a run holds (or waits for) a GPU worker."""
        return frozenset({cls.QUEUED, cls.RUNNING})

    @property
    def is_terminal(self) -> bool:
        return self in RunState.terminal()
