"""The reconciler against a scripted Ray: dispatch with retries, state mapping, stored logs,
cancellation, resubmission of a lost job, adoption by a restarted service, one poisoned job among
healthy ones, and the record completed from the storage when the reports were lost."""

from __future__ import annotations

import json

from sqlalchemy import update

from services.dispatcher import DispatchError, RayJobState, job_spec
from services.reconciler import SUBMIT_REFUSALS, Reconciler
from services.settings import Settings
from services.store.db import make_engine
from services.store.store import LOG_CAP_CHARS, Store
from services.store.tables import Job

RESOURCES = {"num_workers": 2, "use_gpu": False, "cpus_per_worker": 1.0, "gpus_per_worker": 1.0}
CONFIG = {"dataset": {"name": "digits"}, "max_steps": 2}
SETTINGS = Settings(storage_path="/shared/runs", data_roots=["/shared/data"])


class ScriptedRay:
    """Ray as a dict of submission id -> state; ``reachable``/``refuse`` script its failures."""

    dashboard_url = "http://ray.test:8265"

    def __init__(self):
        self.jobs: dict[str, str] = {}
        self.logs_of: dict[str, str] = {}
        self.specs: dict[str, object] = {}
        self.reachable = True
        self.refuse = False
        self.submits = 0

    def _check(self):
        if not self.reachable:
            raise DispatchError("connection refused", reachable=False)

    def submit(self, job, submission_id):
        self._check()
        self.submits += 1
        if self.refuse:
            raise DispatchError("HTTP 400: runtime_env is invalid")
        self.jobs.setdefault(submission_id, "pending")  # a duplicate id counts as submitted
        self.specs[submission_id] = job_spec(job, SETTINGS)

    def state(self, submission_id):
        self._check()
        return RayJobState(self.jobs.get(submission_id, "lost"), "scripted")

    def logs(self, submission_id):
        self._check()
        return self.logs_of.get(submission_id, "")

    def stop(self, submission_id):
        self._check()
        if submission_id in self.jobs:
            self.jobs[submission_id] = "stopped"

    def capacity(self):
        return None

    def ping(self):
        self._check()


def create(store: Store, max_attempts: int = 3):
    job, _ = store.create_job(kind="simclr", name=None, config=CONFIG, resources=RESOURCES,
                              max_attempts=max_attempts)  # fmt: skip
    return job


def test_dispatch_follow_and_store_logs_until_success(store):
    ray = ScriptedRay()
    reconciler = Reconciler(store, ray)
    job = create(store)
    sid = f"{job.id}-a1"
    reconciler.run_once()
    assert ray.jobs == {sid: "pending"} and store.get_job(job.id).status == "queued"
    assert ray.specs[sid].job_id == job.id and ray.specs[sid].resources.num_workers == 2
    assert ray.specs[sid].data_roots == SETTINGS.resolved_data_roots == ["/shared/data"]
    ray.jobs[sid], ray.logs_of[sid] = "running", "step 1 loss 6.1\n"
    reconciler.run_once()
    assert store.get_job(job.id).status == "running"
    assert store.read_log(job.id, 1, 0, 1000)[1:] == (0, "step 1 loss 6.1\n")
    ray.jobs[sid], ray.logs_of[sid] = "succeeded", "step 1 loss 6.1\ndone\n"
    reconciler.run_once()
    done = store.get_job(job.id)
    assert done.status == "succeeded" and done.attempts[0].finished_at is not None
    assert store.read_log(job.id, 1, 0, 1000)[1:] == (0, "step 1 loss 6.1\ndone\n")
    assert store.read_log(job.id, 1, 16, 1000)[1:] == (16, "done\n")


def test_unreachable_ray_keeps_the_job_queued_and_submission_is_retried(store):
    ray = ScriptedRay()
    ray.reachable = False
    reconciler = Reconciler(store, ray)
    job = create(store)
    for _ in range(SUBMIT_REFUSALS + 2):
        reconciler.run_once()
    queued = store.get_job(job.id)
    assert queued.status == "queued" and queued.attempts[0].state == "new"
    ray.reachable = True
    reconciler.run_once()  # submits, then follows: Ray has it pending
    assert store.get_job(job.id).attempts[0].state == "pending"


def test_a_submission_ray_keeps_refusing_fails_the_job_with_the_reason(store):
    ray = ScriptedRay()
    ray.refuse = True
    reconciler = Reconciler(store, ray)
    job = create(store)
    for _ in range(SUBMIT_REFUSALS):
        reconciler.run_once()
    failed = store.get_job(job.id)
    assert failed.status == "failed" and "runtime_env is invalid" in failed.error
    assert ray.submits == SUBMIT_REFUSALS


def test_a_lost_ray_job_is_resubmitted_under_the_same_run_name_until_max_attempts(store):
    ray = ScriptedRay()
    reconciler = Reconciler(store, ray)
    job = create(store, max_attempts=2)
    reconciler.run_once()
    ray.jobs[f"{job.id}-a1"] = "running"
    reconciler.run_once()
    ray.jobs.clear()  # the cluster restarted: Ray knows none of its jobs
    reconciler.run_once()
    requeued = store.get_job(job.id)
    assert [(a.number, a.state) for a in requeued.attempts] == [(1, "lost"), (2, "new")]
    assert requeued.status == "queued"
    reconciler.run_once()
    assert f"{job.id}-a2" in ray.jobs
    assert ray.specs[f"{job.id}-a2"].job_id == job.id  # the same Ray Train run: it resumes
    ray.jobs.clear()
    reconciler.run_once()
    failed = store.get_job(job.id)
    assert failed.status == "failed" and "max_attempts=2" in failed.error


def test_cancel_stops_the_ray_job(store):
    ray = ScriptedRay()
    reconciler = Reconciler(store, ray)
    job = create(store)
    reconciler.run_once()
    ray.jobs[f"{job.id}-a1"] = "running"
    reconciler.run_once()
    assert store.request_cancel(job.id).status == "cancelling"
    reconciler.run_once()
    assert ray.jobs[f"{job.id}-a1"] == "stopped"
    assert store.get_job(job.id).status == "cancelled"


def test_a_restarted_service_adopts_running_jobs_and_dispatches_queued_ones(database_url, store):
    ray = ScriptedRay()
    running = create(store)
    Reconciler(store, ray).run_once()
    ray.jobs[f"{running.id}-a1"] = "running"
    Reconciler(store, ray).run_once()
    store.engine.dispose()  # the service stops; meanwhile a job is queued and the first finishes
    queued = create(Store(make_engine(database_url)))
    ray.jobs[f"{running.id}-a1"] = "succeeded"

    restarted = Store(make_engine(database_url))
    Reconciler(restarted, ray).run_once()
    assert restarted.get_job(running.id).status == "succeeded"
    assert len(restarted.get_job(running.id).attempts) == 1  # adopted, not resubmitted
    assert restarted.get_job(queued.id).attempts[0].state == "pending"
    assert ray.submits == 2


def test_logs_are_appended_not_rewritten_and_capped_at_the_newest_characters(store):
    ray = ScriptedRay()
    reconciler = Reconciler(store, ray)
    job = create(store)
    sid = f"{job.id}-a1"
    reconciler.run_once()
    ray.jobs[sid] = "running"
    line = "x" * 1023 + "\n"
    for passes in range(1, 6):
        ray.logs_of[sid] = line * (passes * LOG_CAP_CHARS // 2048)
        reconciler.run_once()
    size = len(ray.logs_of[sid])
    attempt, start, text = store.read_log(job.id, None, 0, 2 * LOG_CAP_CHARS)
    assert attempt.log_size == size
    # the newest characters, at least the cap's worth and at most one chunk more
    assert size - start == len(text) and LOG_CAP_CHARS <= len(text) < LOG_CAP_CHARS + size // 5
    assert text == ray.logs_of[sid][start:]


def test_one_poisoned_job_does_not_stop_the_others(store):
    """A queued job whose stored config no longer validates (an older release wrote it) fails
    with the reason; a job whose row makes following raise is retried later; the healthy jobs
    around them are submitted and followed in the same passes."""
    ray = ScriptedRay()
    reconciler = Reconciler(store, ray)
    before = create(store)
    poisoned = create(store)
    after = create(store)
    with store._writes.begin() as session:
        session.execute(
            update(Job).where(Job.id == poisoned.id).values(config={**CONFIG, "retired": 1})
        )
    reconciler.run_once()
    failed = store.get_job(poisoned.id)
    assert failed.status == "failed" and "no longer validates" in failed.error
    assert "retired" in failed.error
    for job in (before, after):
        assert store.get_job(job.id).attempts[0].state == "pending"

    original_state = ray.state

    def state(submission_id):
        if submission_id.startswith(before.id):
            raise KeyError("a bug that only this job triggers")
        return original_state(submission_id)

    ray.state = state
    ray.jobs[f"{before.id}-a1"] = ray.jobs[f"{after.id}-a1"] = "running"
    reconciler.run_once()
    assert store.get_job(after.id).status == "running"
    assert store.get_job(before.id).status == "queued"  # untouched, tried again next pass


def test_an_ended_attempt_completes_the_record_from_the_storage(store, tmp_path):
    """The service heard nothing of the run (every report lost): when the attempt ends, the
    metrics in metrics.jsonl and the checkpoints on the storage are recorded before the job
    succeeds, so 'latest' names the final checkpoint. A torn last line is skipped."""
    ray = ScriptedRay()
    reconciler = Reconciler(store, ray, run_dir=lambda job_id: f"{tmp_path}/{job_id}")
    job = create(store)
    sid = f"{job.id}-a1"
    reconciler.run_once()
    run = tmp_path / job.id
    rows = [{"step": s, "epoch": s // 4, "time": 1.0, "loss": 6.0 - s / 10, "lr": 0.1}
            for s in range(2, 10, 2)] + [{"step": 10, "epoch": 2, "loss": float("nan")}]  # fmt: skip
    run.mkdir()
    resumed = [{"step": 6, "epoch": 1, "loss": 5.0, "lr": 0.1}]  # a resumed attempt repeats step 6
    malformed = ["{}", '{"epoch": 1}', '{"step": null, "loss": 1}', '{"step": 1e999}', "[1]"]
    (run / "metrics.jsonl").write_text(
        "".join(json.dumps(row) + "\n" for row in rows + resumed)
        + "".join(line + "\n" for line in malformed)
        + '{"step": 12, "lo'  # torn by a killed worker
    )
    for step in (4, 8):
        (run / f"step-{step:08d}").mkdir()
        (run / f"step-{step:08d}" / "state.pt").write_bytes(b"weights")
    (run / "step-00000006").mkdir()  # no state.pt: an unfinished checkpoint
    (run / "step-9999999999").mkdir()  # a step beyond the database's integers: skipped
    (run / "step-9999999999" / "state.pt").write_bytes(b"weights")
    ray.jobs[sid] = "succeeded"
    reconciler.run_once()
    assert store.get_job(job.id).status == "succeeded"
    points = store.list_metrics(job.id)
    assert len(points) == 2 * 4 + 1 and {p.step for p in points} == {2, 4, 6, 8, 10}
    assert [p.value for p in points if p.step == 10] == [None]  # NaN, stored as NULL
    assert [p.value for p in points if p.step == 6 and p.name == "loss"] == [5.0]  # the last
    assert [c.name for c in store.list_checkpoints(job.id)] == ["step-00000004", "step-00000008"]
    latest = store.checkpoint(job.id, "latest")
    assert latest.name == "step-00000008" and latest.path == f"{run}/step-00000008"
    assert latest.metrics["loss"] == 6.0 - 0.8 and latest.epoch == 2


def test_only_checkpoints_ray_train_registered_are_recovered(store, tmp_path):
    """An upload cut short (a full disk, a kill) leaves a directory with a torn state.pt that Ray
    Train never registered: it is not recorded, so 'latest' never names it."""
    ray = ScriptedRay()
    reconciler = Reconciler(store, ray, run_dir=lambda job_id: f"{tmp_path}/{job_id}")
    job = create(store)
    reconciler.run_once()
    run = tmp_path / job.id
    for step in (2, 4):
        (run / f"step-{step:08d}").mkdir(parents=True)
        (run / f"step-{step:08d}" / "state.pt").write_bytes(b"torn" if step == 4 else b"whole")
    snapshot = {"checkpoint_results": [{"checkpoint_dir_name": "step-00000002", "metrics": {}}]}
    (run / "checkpoint_manager_snapshot.json").write_text(json.dumps(snapshot))
    ray.jobs[f"{job.id}-a1"] = "failed"
    reconciler.run_once()
    assert [c.name for c in store.list_checkpoints(job.id)] == ["step-00000002"]


def test_a_log_with_nul_characters_is_stored_and_paged(store):
    """PostgreSQL text cannot hold NUL and SQLite's length() stops at it: a binary byte in a Ray
    log is stored as U+FFFD, and the job still ends."""
    ray = ScriptedRay()
    reconciler = Reconciler(store, ray)
    job = create(store)
    sid = f"{job.id}-a1"
    reconciler.run_once()
    ray.jobs[sid], ray.logs_of[sid] = "succeeded", "epoch 1\nbinary \x00 garbage\nepoch 2\n"
    reconciler.run_once()
    assert store.get_job(job.id).status == "succeeded"
    assert store.read_log(job.id, 1, 10, 100)[1:] == (10, "nary \ufffd garbage\nepoch 2\n")


def test_an_attempt_another_process_submitted_first_keeps_running(store):
    """Two API processes submit one new attempt at once (one after its POST, the leader in its
    pass): Ray takes the id once, and the one that records it second must not stop it."""
    job = create(store)
    submission = job.attempts[0].submission_id

    class Racing(ScriptedRay):
        def submit(self, job, submission_id):
            super().submit(job, submission_id)
            store.mark_submitted(submission_id)  # the other process recorded it first

    ray = Racing()
    Reconciler(store, ray).submit(submission)
    assert ray.jobs[submission] == "pending"

    cancelled = create(store)  # cancelled while its submission was in flight: stopped
    submission = cancelled.attempts[0].submission_id

    class Cancelled(ScriptedRay):
        def submit(self, job, submission_id):
            super().submit(job, submission_id)
            store.request_cancel(job.id)

    ray = Cancelled()
    Reconciler(store, ray).submit(submission)
    assert ray.jobs[submission] == "stopped"
