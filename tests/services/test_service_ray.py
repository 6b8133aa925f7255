"""The service end to end on a real Ray cluster: SimCLR on digits over 2 workers through the API,
with a service restart in the middle of the run (the job is adopted and nothing it reported is
lost); cancellation that really ends the worker processes; Ray's answers the dispatcher relies on."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from services.app import create_app
from services.client import Client
from services.dispatcher import STOP_GRACE_S, RayDispatcher, unplaceable_reason
from services.ray_head import free_port
from services.reconciler import Reconciler
from services.settings import Settings
from services.store.db import make_engine, migrate
from services.store.store import Store
from tests.distributed import HEAD_CPUS
from trainer.checkpoint import load_checkpoint
from trainer.contracts.ray_auth import ray_auth_headers

pytestmark = pytest.mark.slow

DIGITS = {
    "dataset": {"name": "digits", "loader_workers": 0},
    "backbone": {"name": "small_cnn", "width": 8},
    "head": {"hidden_dim": 32, "out_dim": 16},
    "batch_size": 64,
    "epochs": 1,
    "log_every_steps": 1,
    "checkpoint_every_steps": 2,
    "optimizer": {"warmup_epochs": 0},
}


class ServiceThread:
    """The API under uvicorn in a thread, on a real port the Ray workers can call back."""

    def __init__(self, settings: Settings, dispatcher=None, reconcile: bool = True):
        app = create_app(settings, dispatcher, reconcile)
        config = uvicorn.Config(app, host="127.0.0.1", port=settings.port, log_level="warning",
                                lifespan="on")  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServiceThread:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, (
                "the service did not start"
            )
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(60)


def service_settings(ray_head, tmp_path, database_url: str) -> Settings:
    return Settings(
        port=free_port(), ray_address=ray_head.dashboard_url, database_url=database_url,
        storage_path=str(tmp_path / "runs"), data_roots=[str(tmp_path / "data")],
        reconcile_interval_s=0.5,
    )  # fmt: skip


def wait_for(predicate, timeout: float, what: str, poll: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def worker_pids(log: str) -> set[int]:
    """The Ray Train worker processes named in a job's log (Ray prefixes their lines)."""
    return {int(pid) for pid in re.findall(r"RayTrainWorker pid=(\d+)", log)}


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


# On the production store only: the other Ray tests run the service on SQLite, and tests/services/test_store.py
# holds both stores to the same contract.
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_job_runs_through_the_service_and_survives_a_service_restart(
    ray_head, tmp_path, database_url
):
    settings = service_settings(ray_head, tmp_path, database_url)
    client = Client(f"http://127.0.0.1:{settings.port}")
    with ServiceThread(settings):
        job = client.submit("simclr", {**DIGITS, "max_steps": 10}, {"num_workers": 2}, "restart")
        wait_for(lambda: client.metrics(job["id"]), 180, "the first metrics")
    # the service is down while the job trains: the workers' reports wait for it
    time.sleep(2)
    with ServiceThread(settings):
        done = wait_for(
            lambda: (j := client.job(job["id"]))["status"] in ("succeeded", "failed") and j,
            240, "the job to finish",
        )  # fmt: skip
        assert done["status"] == "succeeded", done["error"]
        assert len(done["attempts"]) == 1  # adopted, not resubmitted
        assert done["attempts"][0]["dashboard_url"].startswith(settings.ray_address)
        metrics = client.metrics(job["id"])
        assert sorted({m["step"] for m in metrics if m["name"] == "loss"}) == list(range(1, 11))
        assert {"loss", "lr", "images_per_s"} <= {m["name"] for m in metrics}
        checkpoints = client.checkpoints(job["id"])
        assert [c["step"] for c in checkpoints] == [2, 4, 6, 8, 10]
        assert [c["available"] for c in checkpoints] == [False, False, False, True, True]
        latest = Path(checkpoints[-1]["path"])
        assert (latest / "state.pt").is_file() and latest.parent.name == job["id"]
        [artifact] = client.artifacts(job["id"])
        png = client.http.get(artifact["url"]).content
        assert artifact["name"] == "views.png" and png.startswith(b"\x89PNG")
        logs = client.logs(job["id"])
        assert logs["complete"] and f"job {job['id']} finished" in logs["text"]
    # rank 0's TensorBoard log holds the scalars the service stored, the views and the config
    events = EventAccumulator(str(Path(settings.run_dir(job["id"]), "tensorboard")),
                              size_guidance={"scalars": 0})  # fmt: skip
    events.Reload()
    for name in ("loss", "lr", "images_per_s"):
        stored = {m["step"]: m["value"] for m in metrics if m["name"] == name}
        logged = {e.step: e.value for e in events.Scalars(name)}
        assert logged.keys() == stored.keys(), name
        assert list(logged.values()) == pytest.approx(list(stored.values()), rel=1e-6), name
    assert events.Tags()["images"] == ["views"]
    assert (
        '"temperature"'
        in events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    )


def test_cancel_stops_the_ray_job_and_its_worker_processes_exit(settings):
    client = Client(f"http://127.0.0.1:{settings.port}")
    with ServiceThread(settings):
        job = client.submit("simclr", {**DIGITS, "epochs": 100}, {"num_workers": 2}, "to cancel")
        wait_for(lambda: client.metrics(job["id"]), 180, "the job to train")
        pids = wait_for(
            lambda: len(found := worker_pids(client.logs(job["id"])["text"])) == 2 and found,
            60, "both workers in the stored log",
        )  # fmt: skip
        assert all(alive(pid) for pid in pids)
        assert client.cancel(job["id"])["status"] == "cancelling"
        cancelled = wait_for(
            lambda: (j := client.job(job["id"]))["status"] == "cancelled" and j, 60, "cancelled"
        )
        assert cancelled["attempts"][-1]["state"] == "stopped"
        wait_for(lambda: not any(alive(pid) for pid in pids), 60, "the workers to exit")
        # stopped through Train's graceful abort (SIGINT), not killed mid-write: the driver says
        # so in its log, and every checkpoint on the storage loads
        log = client.logs(job["id"])["text"]
        assert "Received SIGINT. Gracefully aborting the training run" in log, log[-3000:]
        assert "RUNNING -> ABORTED" in log
        checkpoints = sorted(Path(settings.run_dir(job["id"])).glob("step-*/state.pt"))
        assert checkpoints, "the job wrote no checkpoint before it was cancelled"
        for path in checkpoints:
            assert set(load_checkpoint(path)) >= {"backbone", "config"}


def test_ray_answers_the_dispatcher_relies_on(settings):
    dispatcher = RayDispatcher(settings.ray_address, settings)
    dispatcher.ping()
    assert dispatcher.state("job-never-submitted-a1").state == "lost"
    nodes = dispatcher.capacity()
    assert nodes and nodes[0]["CPU"] == HEAD_CPUS
    many = {"num_workers": HEAD_CPUS + 1, "cpus_per_worker": 1.0, "use_gpu": False,
            "gpus_per_worker": 1.0}  # fmt: skip
    assert f"at most {HEAD_CPUS} workers" in unplaceable_reason(many, nodes)


def test_a_crash_before_or_during_submission_leaves_exactly_one_ray_job(settings):
    """The service dies after writing a job but before submitting it (the attempt stays ``new``),
    and another dies after Ray took the submission but before recording it: each restarted
    reconciler submits again under the same ``submission_id``, and Ray runs one job for each."""
    settings = settings.model_copy(update={"internal_token": "crash-test-secret"})
    store = Store(make_engine(settings.database_url))
    migrate(store.engine)
    dispatcher = RayDispatcher(settings.ray_address, settings)
    written, _ = store.create_job(kind="simclr", name=None, config=DIGITS,
                                  resources={"num_workers": 1}, max_attempts=3)  # fmt: skip
    taken, _ = store.create_job(kind="simclr", name=None, config=DIGITS,
                                resources={"num_workers": 1}, max_attempts=3)  # fmt: skip
    dispatcher.submit(store.get_job(taken.id), f"{taken.id}-a1")  # Ray has it; the record not
    assert store.attempt(f"{taken.id}-a1").state == "new"
    Reconciler(store, dispatcher).run_once()  # the restarted service
    try:
        for job in (written, taken):
            assert store.attempt(f"{job.id}-a1").state != "new"
            listed = httpx.get(f"{settings.ray_address}/api/jobs/", headers=ray_auth_headers())
            ours = [  # the driver-only jobs of other tests have no submission id
                j["submission_id"] for j in listed.json()
                if (j.get("submission_id") or "").startswith(job.id)
            ]  # fmt: skip
            assert ours == [f"{job.id}-a1"]
    finally:
        for job in (written, taken):
            dispatcher.stop(f"{job.id}-a1")
        store.engine.dispose()
    # stopped during start-up, before Ray Train took SIGINT over: the drivers still end, at the
    # latest when Ray's SIGKILL follows the grace period
    wait_for(lambda: not any(driver_pids(job.id) for job in (written, taken)), STOP_GRACE_S + 30,
             "both drivers to exit")  # fmt: skip


def driver_pids(job_id: str) -> list[int]:
    """The live processes of this machine whose command line names ``job_id`` (its driver)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            named = job_id.encode() in (proc / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if named and proc.name.isdigit() and alive(int(proc.name)):
            found.append(int(proc.name))
    return found


def test_readiness_reports_an_unreachable_cluster_and_jobs_wait_queued(tmp_path):
    settings = Settings(
        ray_address=f"http://127.0.0.1:{free_port()}", database_url=f"sqlite:///{tmp_path / 'db'}",
        storage_path=str(tmp_path / "runs"), data_roots=[str(tmp_path / "data")],
        reconcile_interval_s=0.2,
    )  # fmt: skip
    from fastapi.testclient import TestClient

    with TestClient(create_app(settings)) as api:
        ready = api.get("/readyz")
        assert ready.status_code == 503 and "ray unreachable" in ready.json()["detail"]
        assert ready.json()["checks"]["database"] == "ok"
        job = api.post("/v1/jobs", json={"kind": "simclr", "config": DIGITS}).json()
        time.sleep(1)
        queued = api.get(f"/v1/jobs/{job['id']}").json()
        assert queued["status"] == "queued" and queued["attempts"][0]["state"] == "new"


def test_a_checkpoint_is_scored_by_its_own_evaluation_job_and_a_corrupt_one_fails_cleanly(
    settings, tmp_path
):
    client = Client(f"http://127.0.0.1:{settings.port}")
    asked = [
        {"protocol": "knn", "every": "checkpoint", "config": {"k": 50}},
        {"protocol": "finetune", "at": "end", "config": {"label_fraction": 0.1, "epochs": 2},
         "resources": {"num_workers": 2}},
    ]  # fmt: skip
    monitored = {**DIGITS, "max_steps": 2, "monitor": {"every_steps": 1, "train_images": 500}}
    with ServiceThread(settings):
        job = client.submit("simclr", monitored, {"num_workers": 1}, "to score", evaluate=asked)
        assert client.wait(job["id"])["status"] == "succeeded"
        knn_top1 = [m for m in client.metrics(job["id"]) if m["name"] == "knn_top1"]
        assert [m["step"] for m in knn_top1] == [1, 2] and all(
            10 < m["value"] <= 100 for m in knn_top1
        )
        evaluation = client.evaluate(job["id"], config={"epochs": 30}, resources={"num_workers": 2})
        # a checkpoint torn on the storage (the job has ended: its workers can report no more)
        corrupt_dir = Path(settings.run_dir(job["id"]), "step-99999999")
        corrupt_dir.mkdir()
        (corrupt_dir / "state.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
        Store(make_engine(settings.database_url)).add_checkpoint(
            job["id"], name=corrupt_dir.name, step=99999999, epoch=9, path=str(corrupt_dir),
            metrics={},
        )  # fmt: skip
        broken = client.evaluate(job["id"], "step-99999999", config={"epochs": 5})

        done = client.evaluation(client.wait(evaluation["id"])["id"])
        assert done["status"] == "succeeded", done["error"]
        result = done["result"]
        assert result["mode"] == "fast" and result["epochs"] == 30
        assert (result["train_images"], result["test_images"]) == (1347, 450)
        assert 50 < result["top1"] <= result["top5"] <= 100
        assert done["checkpoint"] == "step-00000002"
        assert Path(settings.storage_path, "features", job["id"], "step-00000002").is_dir()

        # what the job asked for: kNN of its checkpoint, fine-tuning once it succeeded
        scheduled = wait_for(lambda: (e := client.evaluations(job["id"])) and len(e) == 4 and e,
                             60, "the scheduled evaluations")  # fmt: skip
        knn, finetune = (
            next(e for e in scheduled if e["protocol"] == p) for p in ("knn", "finetune")
        )
        scored = client.evaluation(client.wait(knn["id"])["id"])
        assert scored["status"] == "succeeded", scored["error"]
        assert (scored["checkpoint"], scored["result"]["k"], scored["result"]["temperature"]) == (
            "step-00000002", 50, 0.1)  # fmt: skip
        assert 50 < scored["result"]["top1"] <= scored["result"]["top5"] <= 100
        tuned = client.evaluation(client.wait(finetune["id"])["id"])
        assert tuned["status"] == "succeeded", tuned["error"]
        assert tuned["result"]["epochs"] == 2 and 130 <= tuned["result"]["train_images"] <= 140
        assert 10 < tuned["result"]["top1"] <= tuned["result"]["top5"] <= 100
        # data-parallel over 2 workers, a checkpoint at each epoch's end
        assert [c["epoch"] for c in client.checkpoints(finetune["id"])] == [1, 2]
        assert "evaluations.png" in {a["name"] for a in client.artifacts(job["id"])}

        failed = client.evaluation(client.wait(broken["id"])["id"])
        assert failed["status"] == "failed" and failed["result"] is None
        assert "unreadable" in failed["error"], failed["error"]
        assert len(failed["attempts"]) == 1  # not retried: the checkpoint will not get better
        assert client.ready() and client.job(job["id"])["status"] == "succeeded"
        assert {e["id"] for e in client.evaluations(job["id"])} == {
            evaluation["id"], broken["id"], knn["id"], finetune["id"]}  # fmt: skip
