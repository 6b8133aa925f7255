"""The states of a job and of its attempts, and the moves allowed between a job's states: the one
place the job states and the groups of attempt states are listed (the store, the API's schemas,
the reconciler and the client import them).

A job is ``queued`` until Ray runs its latest attempt, ``running`` while it does, ``cancelling``
once a user asked to stop it, and ends ``succeeded``, ``failed`` or ``cancelled``; a failed or
cancelled job may be retried (``queued`` again), and a job whose Ray job vanished goes back to
``queued`` with a new attempt while it has attempts left. An attempt is one Ray job: ``new``
(written, not yet accepted by Ray), then Ray's own states, or ``lost`` when Ray no longer knows it.
"""

from __future__ import annotations

from typing import Protocol

JOB_STATUSES = ("queued", "running", "cancelling", "succeeded", "failed", "cancelled")
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
JOB_MOVES: dict[str, frozenset[str]] = {
    "queued": frozenset({"running", "cancelling", "succeeded", "failed", "cancelled"}),
    "running": frozenset({"queued", "cancelling", "succeeded", "failed", "cancelled"}),
    "cancelling": frozenset({"succeeded", "cancelled"}),
    "succeeded": frozenset(),
    "failed": frozenset({"queued"}),
    "cancelled": frozenset({"queued"}),
}

# Attempt states in which Ray may still be running the job.
LIVE_ATTEMPT_STATES = ("submitted", "pending", "running")
# Attempt states after which Ray runs nothing more of it and its log no longer grows.
FINISHED_ATTEMPT_STATES = ("succeeded", "failed", "stopped", "lost")


class IllegalMove(RuntimeError):
    """A move the table does not allow: a bug in the service, never a client's error."""


class HasStatus(Protocol):
    id: str
    status: str


def move(job: HasStatus, status: str) -> None:
    """Set ``job.status``, refusing a move ``JOB_MOVES`` does not allow (staying is allowed)."""
    if status != job.status and status not in JOB_MOVES[job.status]:
        raise IllegalMove(f"job {job.id} cannot go from {job.status} to {status}")
    job.status = status
