"""The Ray head killed (SIGKILL) in the middle of a 2-worker SimCLR run, then started again on
the same address: the service sees the job vanish, resubmits it as a new attempt under the same
Ray Train run, which resumes from its latest checkpoint; every step's metrics are in the record
once, and the job succeeds. SQLite and PostgreSQL (the store decides what is kept).

The storage filling up while the job checkpoints: the job fails saying so, and the service and the
last registered checkpoint are unharmed.

The killed head is one of its own (not the session's).
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from services.client import Client
from services.ray_head import free_port, start_head
from services.settings import Settings
from tests.services.test_service_ray import DIGITS, ServiceThread, wait_for
from trainer.checkpoint import load_checkpoint

pytestmark = [pytest.mark.fault, pytest.mark.ray]

STEPS = 24


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_a_killed_ray_head_costs_an_attempt_not_the_job(tmp_path, database_url):
    dashboard_port = free_port()
    head = start_head(tmp_path / "head", dashboard_port=dashboard_port, num_cpus=2)
    settings = Settings(
        port=free_port(), ray_address=head.dashboard_url, database_url=database_url,
        storage_path=str(tmp_path / "state" / "runs"), data_roots=[str(tmp_path / "data")],
        reconcile_interval_s=0.5,
    )  # fmt: skip
    client = Client(f"http://127.0.0.1:{settings.port}")
    try:
        with ServiceThread(settings):
            job = client.submit(
                "simclr",
                {**DIGITS, "epochs": 2, "max_steps": STEPS},
                {"num_workers": 2},
                "head killed",
            )
            wait_for(
                lambda: any(c["step"] >= 4 for c in client.checkpoints(job["id"])),
                240, "a checkpoint to resume from",
            )  # fmt: skip
            os.killpg(head.process.pid, signal.SIGKILL)  # the head node dies with everything on it
            head.process.wait()
            assert head.wait_released(60)  # its dashboard dies a moment after `ray start` does
            wait_for(lambda: client.ready() is False, 30, "the service to see Ray gone", poll=0.2)
            head = start_head(tmp_path / "head", dashboard_port=dashboard_port, num_cpus=2)
            done = wait_for(
                lambda: (j := client.job(job["id"]))["status"] in ("succeeded", "failed") and j,
                360, "the job to finish on the new head",
            )  # fmt: skip
            assert done["status"] == "succeeded", done["error"]
            assert [a["state"] for a in done["attempts"]] == ["lost", "succeeded"]
            metrics = client.metrics(job["id"])
            losses = [m["step"] for m in metrics if m["name"] == "loss"]
            assert sorted(losses) == list(range(1, STEPS + 1))  # each step once, none missing
            resumed = client.logs(job["id"], attempt=2)["text"]
            assert "rank 0 resumed at step" in resumed, resumed[-2000:]
            assert [c["step"] for c in client.checkpoints(job["id"])][-1] == STEPS
    finally:
        head.stop()


@pytest.fixture
def small_disk(tmp_path):
    """A 32 MiB tmpfs (root only: skipped, saying so, elsewhere)."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mount)],
                          capture_output=True, text=True)  # fmt: skip
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_fails_the_job_cleanly_and_keeps_the_last_checkpoint(
    settings, small_disk, tmp_path
):
    """The storage fills up while the job checkpoints: the job fails saying so, the checkpoint
    Ray Train registered before stays whole and is the one recorded as latest, and the service
    goes on serving."""
    settings = settings.model_copy(update={"storage_path": str(small_disk / "runs")})
    client = Client(f"http://127.0.0.1:{settings.port}")
    with ServiceThread(settings):
        job = client.submit("simclr", {**DIGITS, "epochs": 100}, {"num_workers": 1}, "disk full")
        wait_for(lambda: client.checkpoints(job["id"]), 240, "a first checkpoint")
        filler = small_disk / "filler"
        # dd stops with an error once the disk is full: that is the point
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M", "count=64"],
                       capture_output=True, check=False)  # fmt: skip
        done = wait_for(
            lambda: (j := client.job(job["id"]))["status"] in ("succeeded", "failed") and j,
            300, "the job to fail",
        )  # fmt: skip
        assert done["status"] == "failed"
        reason = done["error"].split("\n", 1)[0]  # the driver's reason leads the error
        assert "No space left on device" in reason, done["error"][-2000:]
        latest = client.checkpoints(job["id"])[-1]
        state = load_checkpoint(Path(latest["path"]) / "state.pt")
        assert state["step"] == latest["step"]
        assert client.ready()
        assert client.submit("simclr", {**DIGITS, "max_steps": 1}, {"num_workers": 1}, "after")
