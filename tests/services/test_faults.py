"""Fault tests of the control plane without Ray: the database goes away in the middle of a run
and comes back; the service crashes between writing a job and submitting it, or while Ray was
taking the submission.

Nothing lost means: every metric point and checkpoint the worker reported is in the record
afterwards, and while the database was away the API answered 503 problem+json, not a 500.
"""

from __future__ import annotations

import time

import httpx
import pytest
from sqlalchemy.engine import make_url

from services.auth import job_token
from services.dispatcher import NoopDispatcher
from services.ray_head import free_port
from services.settings import Settings
from tests.conftest import POSTGRES_URL, _postgres_schema_url, postgres_schema
from tests.faults import CuttableProxy
from tests.services.test_service_ray import ServiceThread
from trainer.reporter import Reporter

# How long the database stays away: the audit's 30 s (longer than the pool's and the reporter's
# first timeouts, so each of them has to cope with it).
OUTAGE_S = 30.0
SECRET = "fault-secret"


@pytest.fixture
def postgres_behind_a_proxy():
    """A schema of its own on the test PostgreSQL server, reached through a cuttable proxy."""
    server = make_url(POSTGRES_URL)
    with (
        postgres_schema("simclr_fault") as schema,
        CuttableProxy((server.host or "127.0.0.1", server.port or 5432)) as proxy,
    ):
        url = make_url(_postgres_schema_url(schema)).set(host="127.0.0.1", port=proxy.port)
        url = url.update_query_dict({"connect_timeout": "3"})
        yield proxy, url.render_as_string(hide_password=False)


@pytest.mark.fault
def test_a_database_outage_during_a_run_loses_no_report(postgres_behind_a_proxy, tmp_path):
    proxy, database_url = postgres_behind_a_proxy
    settings = Settings(
        port=free_port(), database_url=database_url, storage_path=str(tmp_path / "state" / "runs"),
        data_roots=[str(tmp_path / "data")], internal_token=SECRET,
    )  # fmt: skip
    base = f"http://127.0.0.1:{settings.port}"
    with ServiceThread(settings, NoopDispatcher(), reconcile=False):
        job_id = httpx.post(f"{base}/v1/jobs", json={"kind": "simclr", "config": {
            "dataset": {"name": "digits"}}}).json()["id"]  # fmt: skip
        reporter = Reporter(job_id, base, job_token(SECRET, job_id), timeout=5)
        run_dir = settings.run_dir(job_id)

        def report(step: int) -> None:
            reporter.metrics({"step": step, "epoch": 0, "time": 1.0, "loss": 6.0 - step / 10})
            if step % 4 == 0:
                reporter.checkpoint(f"step-{step:08d}", step, 0, f"{run_dir}/step-{step:08d}",
                                    {"loss": 6.0 - step / 10}, keep=100)  # fmt: skip

        report(1)
        assert reporter.pending == 0
        proxy.cut()
        outage_ends = time.monotonic() + OUTAGE_S
        step, answers = 1, set()
        while time.monotonic() < outage_ends:
            step += 1
            report(step)  # the training loop goes on; reporting must not raise or block it long
            answer = httpx.get(f"{base}/v1/jobs/{job_id}", timeout=30)
            answers.add(answer.status_code)
            assert answer.status_code == 503, answer.text
            assert answer.headers["content-type"] == "application/problem+json"
            assert "database" in answer.json()["detail"] and "Retry-After" in answer.headers
            time.sleep(1.0)
        assert reporter.pending > 0 and answers == {503}
        proxy.restore()
        assert reporter.flush(60) == 0
        metrics = httpx.get(f"{base}/v1/jobs/{job_id}/metrics").json()
        assert sorted(m["step"] for m in metrics) == list(range(1, step + 1))
        checkpoints = httpx.get(f"{base}/v1/jobs/{job_id}/checkpoints").json()
        assert [c["step"] for c in checkpoints] == list(range(4, step + 1, 4))
        assert httpx.get(f"{base}/readyz").status_code == 200
