"""The reconciler against a scripted Ray: dispatch with retries, state mapping, stored logs,
cancellation, resubmission of a lost job, and adoption by a restarted service."""

from __future__ import annotations

from services.dispatcher import DispatchError, RayJobState, job_spec
from services.reconciler import SUBMIT_REFUSALS, Reconciler
from services.store.db import make_engine
from services.store.store import Store

RESOURCES = {"num_workers": 2, "use_gpu": False, "cpus_per_worker": 1.0, "gpus_per_worker": 1.0}
CONFIG = {"dataset": {"name": "digits"}, "max_steps": 2}


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
        self.specs[submission_id] = job_spec(job, "/shared/runs")

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
    ray.jobs[sid], ray.logs_of[sid] = "running", "step 1 loss 6.1\n"
    reconciler.run_once()
    running = store.get_job(job.id)
    assert running.status == "running" and running.attempts[0].log == "step 1 loss 6.1\n"
    ray.jobs[sid], ray.logs_of[sid] = "succeeded", "step 1 loss 6.1\ndone\n"
    reconciler.run_once()
    done = store.get_job(job.id)
    assert done.status == "succeeded" and done.attempts[0].log.endswith("done\n")
    assert done.attempts[0].finished_at is not None


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
