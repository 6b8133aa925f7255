"""The service's store on SQLite and PostgreSQL: migrations, jobs, idempotency, attempts and the
state machine the reconciler drives, what workers report."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import delete, event

from services.store.db import make_engine, migrate
from services.store.store import Conflict, NotFound, Store
from services.store.tables import AttemptLog, Base
from trainer.contracts.states import JOB_MOVES, JOB_STATUSES, TERMINAL, IllegalMove, move


def new_job(store: Store, **overrides):
    fields = dict(kind="simclr", name=None, config={"epochs": 1}, max_attempts=2,
                  resources={"num_workers": 2, "use_gpu": False, "cpus_per_worker": 1.0,
                             "gpus_per_worker": 1.0})  # fmt: skip
    fields.update(overrides)
    return store.create_job(**fields)


def test_migrations_build_exactly_the_tables_of_the_models(store):
    with store.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []
    migrate(store.engine)  # applying them again at the next start is a no-op


def test_create_get_and_list_with_cursor_pagination_and_filters(store):
    jobs = [new_job(store, name=f"run-{i}")[0] for i in range(5)]
    assert store.get_job(jobs[0].id).name == "run-0"
    assert jobs[0].status == "queued" and jobs[0].attempts[0].submission_id == f"{jobs[0].id}-a1"
    seen, cursor = [], None
    while True:
        page, cursor = store.list_jobs(limit=2, cursor=cursor)
        seen += [job.id for job in page]
        if cursor is None:
            break
    assert seen == [job.id for job in reversed(jobs)]
    store.request_cancel(jobs[1].id)
    assert [job.id for job in store.list_jobs(status="cancelled")[0]] == [jobs[1].id]
    assert store.list_jobs(kind="ddpm")[0] == []
    assert store.count_by_status()["queued"] == 4
    with pytest.raises(NotFound):
        store.get_job("job-nope")
    with pytest.raises(ValueError, match="cursor"):
        store.list_jobs(cursor="%%%")


def test_idempotency_key_returns_the_same_job_or_conflicts(store):
    first, created = new_job(store, idempotency_key="k1", request_hash="h1")
    again, created_again = new_job(store, idempotency_key="k1", request_hash="h1")
    assert created and not created_again and again.id == first.id
    with pytest.raises(Conflict, match="different request"):
        new_job(store, idempotency_key="k1", request_hash="h2")


def test_concurrent_requests_with_one_key_create_one_job(store):
    with ThreadPoolExecutor(16) as pool:
        results = list(
            pool.map(lambda _: new_job(store, idempotency_key="same", request_hash="h"), range(48))
        )
    assert len({job.id for job, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert len(store.list_jobs()[0]) == 1


def test_attempt_states_drive_the_job_status(store):
    job, _ = new_job(store)
    sid = job.attempts[0].submission_id
    assert [a.submission_id for a in store.attempts_in(["new"])] == [sid]
    assert store.mark_submitted(sid)
    assert store.update_attempt(sid, "pending").status == "queued"
    running = store.update_attempt(sid, "running", log="step 1\n")
    assert running.status == "running" and running.attempts[0].started_at is not None
    failed = store.update_attempt(sid, "failed", message="loss became nan at step 3")
    assert failed.status == "failed" and "nan" in failed.error
    retried = store.retry(job.id)
    assert retried.status == "queued" and [a.number for a in retried.attempts] == [1, 2]
    assert retried.error is None
    assert store.update_attempt(f"{job.id}-a2", "succeeded").status == "succeeded"
    with pytest.raises(Conflict):
        store.retry(job.id)
    with pytest.raises(Conflict):
        store.request_cancel(job.id)


def test_a_lost_attempt_is_resubmitted_until_max_attempts(store):
    job, _ = new_job(store, max_attempts=2)
    store.mark_submitted(f"{job.id}-a1")
    after_first = store.update_attempt(f"{job.id}-a1", "lost", message="Ray has no job")
    assert after_first.status == "queued"
    assert [(a.number, a.state) for a in after_first.attempts] == [(1, "lost"), (2, "new")]
    store.mark_submitted(f"{job.id}-a2")
    after_second = store.update_attempt(f"{job.id}-a2", "lost")
    assert after_second.status == "failed" and "max_attempts=2" in after_second.error


def test_cancel_before_submission_ends_at_once_and_a_late_submission_is_not_marked(store):
    job, _ = new_job(store)
    assert store.request_cancel(job.id).status == "cancelled"
    assert not store.mark_submitted(job.attempts[0].submission_id)
    running, _ = new_job(store)
    sid = running.attempts[0].submission_id
    store.mark_submitted(sid)
    store.update_attempt(sid, "running")
    assert store.request_cancel(running.id).status == "cancelling"
    assert store.update_attempt(sid, "stopped").status == "cancelled"


def test_a_ray_job_stopped_outside_the_service_counts_as_cancelled(store):
    job, _ = new_job(store)
    sid = job.attempts[0].submission_id
    store.mark_submitted(sid)
    stopped = store.update_attempt(sid, "stopped")
    assert stopped.status == "cancelled" and "outside the service" in stopped.error


def test_submit_refusals_fail_the_job_after_the_limit(store):
    job, _ = new_job(store)
    sid = job.attempts[0].submission_id
    store.record_submit_error(sid, "runtime env invalid", fail_after=2)
    assert store.get_job(job.id).status == "queued"
    store.record_submit_error(sid, "runtime env invalid", fail_after=2)
    failed = store.get_job(job.id)
    assert failed.status == "failed" and "runtime env invalid" in failed.error


def test_metrics_replayed_after_a_resume_replace_the_earlier_points(store):
    job, _ = new_job(store)
    store.add_metrics(
        job.id, [{"step": s, "epoch": 0, "name": "loss", "value": 5.0 - s} for s in (1, 2, 3)]
    )
    store.add_metrics(job.id, [{"step": 3, "epoch": 0, "name": "loss", "value": 9.0},
                               {"step": 3, "epoch": 0, "name": "lr", "value": 0.1}])  # fmt: skip
    points = store.list_metrics(job.id)
    assert [(p.step, p.name, p.value) for p in points] == [
        (1, "loss", 4.0),
        (2, "loss", 3.0),
        (3, "loss", 9.0),
        (3, "lr", 0.1),
    ]
    assert [p.step for p in store.list_metrics(job.id, name="loss", after_step=1)] == [2, 3]


def test_checkpoints_beyond_keep_become_unavailable_and_latest_resolves(store):
    job, _ = new_job(store)
    for step in (10, 20, 30):
        store.add_checkpoint(job.id, name=f"step-{step:08d}", step=step, epoch=step // 10,
                             path=f"/runs/{job.id}/step-{step:08d}", metrics={"loss": 1.0}, keep=2)  # fmt: skip
    listed = store.list_checkpoints(job.id)
    assert [(c.step, c.available) for c in listed] == [(10, False), (20, True), (30, True)]
    assert store.checkpoint(job.id, "latest").step == 30
    assert store.checkpoint(job.id, "step-00000010").available is False
    with pytest.raises(NotFound):
        store.checkpoint(job.id, "step-99")


def test_artifacts_are_stored_and_replaced(store):
    job, _ = new_job(store)
    store.put_artifact(job.id, "views.png", "image/png", b"\x89PNG1")
    store.put_artifact(job.id, "views.png", "image/png", b"\x89PNG22")
    [(name, content_type, size, _)] = store.list_artifacts(job.id)
    assert (name, content_type, size) == ("views.png", "image/png", 6)
    assert store.artifact(job.id, "views.png").data == b"\x89PNG22"


def test_a_failed_jobs_error_leads_with_the_drivers_reason(store):
    """Ray's message ends in 20,000 characters of log, of which the service keeps the end; the
    driver's one-line reason may lie before it (actors print after it): it comes first."""
    job, _ = new_job(store)
    sid = job.attempts[0].submission_id
    store.mark_submitted(sid)
    message = (
        "Job entrypoint command failed with exit code 1, last available logs:\n"
        f"ERROR trainer.driver: job {job.id} failed: OSError: [Errno 28] No space left on device\n"
        + "(TrainController) Failed to stop PlacementGroupCleaner gracefully.\n"
        * 100
    )
    failed = store.update_attempt(sid, "failed", message=message)
    assert failed.error.startswith("OSError: [Errno 28] No space left on device\n\n")
    assert failed.error.endswith("gracefully.\n") and len(failed.error) < 3500


def test_a_log_page_read_while_the_cap_drops_its_first_chunk_agrees_with_its_offset(store):
    """The page's text is what the log holds at the offset it names, even when the chunk it
    started in is dropped between the reader's two queries (PostgreSQL reads each anew)."""
    job, _ = new_job(store)
    submission = job.attempts[0].submission_id
    log = "a" * 100 + "b" * 100
    store.update_attempt(submission, "running", None, log[:100])
    store.update_attempt(submission, "running", None, log)
    other = make_engine(store.engine.url.render_as_string(hide_password=False))
    dropped = []

    @event.listens_for(store.engine, "before_cursor_execute")
    def drop_first_chunk(connection, cursor, statement, parameters, context, executemany):
        if not dropped and "ORDER BY attempt_logs.start" in statement:  # the second read
            with other.begin() as writer:
                writer.execute(delete(AttemptLog).where(AttemptLog.start == 0))
            dropped.append(True)

    try:
        _, start, text = store.read_log(job.id, None, 0, 1000)
    finally:
        event.remove(store.engine, "before_cursor_execute", drop_first_chunk)
        other.dispose()
    assert dropped
    assert text and text == log[start : start + len(text)]


def test_a_cancel_and_an_attempt_ending_at_once_lose_neither_write(store):
    """Two processes change one job at once: a user cancels it while the reconciler records
    that its Ray job succeeded. The second write waits for the first and builds on it (the
    job ends succeeded), never overwriting it from a stale read (a job stuck cancelling)."""
    job, _ = new_job(store)
    submission = job.attempts[0].submission_id
    store.mark_submitted(submission)
    store.update_attempt(submission, "running")
    other = Store(make_engine(store.engine.url.render_as_string(hide_password=False)))
    ended = threading.Thread(target=other.update_attempt, args=(submission, "succeeded"))
    fired = []

    @event.listens_for(store.engine, "before_cursor_execute")
    def meanwhile(connection, cursor, statement, parameters, context, executemany):
        if not fired and statement.lstrip().upper().startswith("UPDATE JOBS"):
            fired.append(True)  # the cancel has read the job running and is about to write
            ended.start()
            time.sleep(0.5)

    try:
        store.request_cancel(job.id)
    finally:
        event.remove(store.engine, "before_cursor_execute", meanwhile)
    ended.join(timeout=60)
    other.engine.dispose()
    assert fired
    assert store.get_job(job.id).status == "succeeded"


def test_a_job_moves_only_as_the_table_of_states_allows(store):
    assert set(JOB_MOVES) == set(JOB_STATUSES)
    for status in TERMINAL:  # an ended job moves only to a retry, if at all
        assert JOB_MOVES[status] <= {"queued"}
    ended = SimpleNamespace(id="job-x", status="succeeded")
    with pytest.raises(IllegalMove, match="job-x cannot go from succeeded to running"):
        move(ended, "running")
    move(ended, "succeeded")  # staying is no move

    job, _ = new_job(store)  # a whole life through the store: each move is checked
    submission = job.attempts[0].submission_id
    store.mark_submitted(submission)
    assert store.update_attempt(submission, "running").status == "running"
    assert store.update_attempt(submission, "lost").status == "queued"  # a new attempt
    second = store.get_job(job.id).attempts[-1].submission_id
    store.mark_submitted(second)
    store.update_attempt(second, "running")
    assert store.request_cancel(job.id).status == "cancelling"
    assert store.update_attempt(second, "stopped").status == "cancelled"
    assert store.retry(job.id).status == "queued"


def test_a_submission_failing_for_good_after_a_cancel_leaves_the_job_cancelled(store):
    job, _ = new_job(store)
    submission = job.attempts[0].submission_id
    assert store.request_cancel(job.id).status == "cancelled"  # it never reached Ray
    store.record_submit_error(submission, "runtime env invalid", fail_after=1)
    assert store.get_job(job.id).status == "cancelled"
