"""The loop that makes Ray's state and the database agree; the database is the source of truth.

Every ``reconcile_interval_s``: attempts written but not yet accepted by Ray are submitted (again:
a duplicate submission id counts as submitted); for every attempt Ray may be running, a job being
cancelled has its Ray job stopped, and Ray's state and log are stored. An attempt whose Ray job
vanished (a restarted head, a lost cluster) is ``lost``: the store queues a new attempt, which
resumes the same Ray Train run from its latest checkpoint, until the job's ``max_attempts``.
Because every step starts from the database, a restarted service adopts running jobs and
dispatches queued ones without special cases.

Only the process holding the database's leader lock (``services.leader``) runs the passes, however
many API processes share the database; any process may still submit a job it just recorded, or
follow one it was asked to cancel (Ray takes a submission id once; attempt rows are locked while
written).

Each attempt is handled in isolation: an error with one (a row an older release wrote, a storage
that cannot be read) is logged and that attempt is tried again next pass, while every other job
is followed as usual; an attempt that can never be submitted (its stored config no longer
validates) fails its job with the reason. When an attempt ends, what its run left on the storage
(``services.backfill``) completes the record before the job's final status is written.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

from pydantic import ValidationError

from services.backfill import backfill
from services.dispatcher import Dispatcher, DispatchError
from services.leader import Alone, LeaderLock
from services.store.store import NotFound, Store
from trainer.contracts.states import FINISHED_ATTEMPT_STATES, LIVE_ATTEMPT_STATES

log = logging.getLogger(__name__)

# Submissions that Ray refused (it answered with an error) before the job fails; while Ray cannot be
# reached at all, submission is retried without limit and the job stays queued.
SUBMIT_REFUSALS = 3


class Reconciler:
    def __init__(
        self,
        store: Store,
        dispatcher: Dispatcher,
        interval_s: float = 2.0,
        run_dir: Callable[[str], str] | None = None,
        leader: LeaderLock | None = None,
        schedule: Callable[[], None] | None = None,
    ):
        """``run_dir(job_id)``: the job's run directory on the storage, read back when an
        attempt ends; None reads nothing. ``leader``: the lock a process must hold to run the
        passes; None: this process is the only one. ``schedule``: run at the end of every pass
        (``services.scheduled.schedule_evaluations``: the evaluations jobs asked for)."""
        self.store = store
        self.dispatcher = dispatcher
        self.run_dir = run_dir
        self.leader = leader or Alone()
        self.schedule = schedule
        self.leading = False
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._submit_lock = threading.Lock()

    def submit(self, submission_id: str) -> None:
        """Submit one new attempt; failures are recorded and retried by the next pass."""
        with self._submit_lock:
            attempt = self.store.attempt(submission_id)
            if attempt.state != "new":
                return
            job = self.store.get_job(attempt.job_id)
            try:
                self.dispatcher.submit(job, submission_id)
            except ValidationError as error:  # written by an older release: it never will run
                reason = f"the stored config no longer validates: {error}"
                log.error("job %s: %s", job.id, reason)
                self.store.record_submit_error(submission_id, reason, fail_after=1)
                return
            except DispatchError as error:
                log.warning("submitting %s failed: %s", submission_id, error)
                if error.reachable:
                    self.store.record_submit_error(submission_id, str(error), SUBMIT_REFUSALS)
                return
            if self.store.mark_submitted(submission_id):
                log.info("job %s: submitted attempt %s", job.id, submission_id)
            elif self.store.attempt(submission_id).state == "stopped":
                self.dispatcher.stop(submission_id)  # cancelled while the request was in flight
            # else another process submitted it first: Ray took the id once, nothing to undo

    def follow(self, submission_id: str) -> None:
        """Store Ray's state and log of one live attempt; stop it when its job is cancelling."""
        attempt = self.store.attempt(submission_id)
        job = self.store.get_job(attempt.job_id)
        if job.status == "cancelling":
            self.dispatcher.stop(submission_id)
        ray_state = self.dispatcher.state(submission_id)
        logs = None if ray_state.state == "lost" else self.dispatcher.logs(submission_id)
        if ray_state.state in FINISHED_ATTEMPT_STATES and self.run_dir is not None:
            try:  # an unreadable storage must not keep the job from ending
                backfill(
                    self.store, job.id, self.run_dir(job.id), job.config.get("keep_checkpoints")
                )
            except Exception:
                log.exception("job %s: reading its run back from the storage failed", job.id)
        updated = self.store.update_attempt(submission_id, ray_state.state, ray_state.message, logs)
        if ray_state.state != attempt.state:
            log.info(
                "job %s: attempt %s %s -> %s; job %s",
                job.id, submission_id, attempt.state, ray_state.state, updated.status,
            )  # fmt: skip

    def run_once(self) -> None:
        """One pass: submit new attempts, follow live ones, each in isolation; then schedule."""
        for attempt in self.store.attempts_in(["new"]):
            try:
                self.submit(attempt.submission_id)
            except Exception:
                log.exception("submitting %s failed; trying again next pass", attempt.submission_id)
        for attempt in self.store.attempts_in(LIVE_ATTEMPT_STATES):
            if not self.leader.held():  # lost mid-pass: the new leader takes the rest
                log.warning("process %d lost the reconciler during a pass", os.getpid())
                self.leading = False
                return
            try:
                self.follow(attempt.submission_id)
            except DispatchError as error:
                log.warning("following %s: %s", attempt.submission_id, error)
                if not error.reachable:
                    return  # the cluster is down: nothing else will answer either
            except NotFound:
                continue
            except Exception:
                log.exception("following %s failed; trying again next pass", attempt.submission_id)
        if self.schedule is not None:  # what it creates, the next pass submits
            self.schedule()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._lead()
                if self.leading:
                    self.run_once()
            except Exception:  # one bad pass must not end reconciliation
                log.exception("reconciliation pass failed")
            self._stop.wait(self.interval_s)
        self.leader.release()

    def _lead(self) -> None:
        leading = self.leader.held()
        if leading != self.leading:
            log.info("process %d %s the reconciler", os.getpid(), "runs" if leading else "left")
        self.leading = leading

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="reconciler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
