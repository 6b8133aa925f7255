"""``simclr serve`` with several API processes, run as an operator runs it: one reconciler among
them, ``/metrics`` counting every process's requests, a killed process replaced and its
reconciler taken over, and all of it stopped by one SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from services.ray_head import free_port
from services.settings import Settings
from tests.services.test_service_ray import alive, wait_for

LEADS = re.compile(r"process (\d+) runs the reconciler")


def answers(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz").status_code == 200
    except httpx.HTTPError:
        return False


def serve_two_workers(tmp_path: Path, port: int, **env: str) -> tuple[subprocess.Popen, Path]:
    """``simclr serve --workers 2`` on ``port`` with no Ray cluster (jobs stay queued), its
    output in the log file returned beside the process."""
    environment = {**os.environ, "SIMCLR_RAY_ADDRESS": "http://127.0.0.1:9", **env}
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "serve", "--port", str(port), "--workers", "2"],
            cwd=tmp_path, env=environment, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    return server, log


def test_serve_in_two_processes(tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server, log = serve_two_workers(tmp_path, port, SIMCLR_RECONCILE_INTERVAL_S="0.2")
    try:
        wait_for(lambda: answers(base), 60, "the service to answer")
        leader = wait_for(lambda: LEADS.findall(log.read_text()), 10, "a reconciler")
        assert len(leader) == 1, log.read_text()
        wait_for(lambda: len(re.findall(r"Started server process", log.read_text())) == 2, 30,
                 "both workers")  # fmt: skip

        job = httpx.post(f"{base}/v1/jobs", json={"kind": "simclr", "config": {
            "dataset": {"name": "digits"}, "max_steps": 2}}).json()  # fmt: skip
        for _ in range(30):  # a connection each: the kernel hands them to either process
            assert httpx.get(f"{base}/v1/jobs/{job['id']}").status_code == 200
        metrics = httpx.get(f"{base}/metrics").text
        count = re.search(r'simclr_http_request_duration_seconds_count\{method="GET",'
                          r'route="/v1/jobs/\{job_id\}",status="200"\} ([\d.]+)', metrics)  # fmt: skip
        assert count and float(count.group(1)) == 30, metrics

        os.kill(int(leader[0]), signal.SIGKILL)
        successor = wait_for(
            lambda: [pid for pid in LEADS.findall(log.read_text()) if pid != leader[0]], 30,
            "another process to take the reconciler over",
        )  # fmt: skip
        assert len(successor) == 1
        wait_for(lambda: "died" in log.read_text(), 10, "the supervisor to see the death")
        wait_for(lambda: len(re.findall(r"Started server process", log.read_text())) == 3, 30,
                 "a replacement worker")  # fmt: skip
        assert httpx.get(f"{base}/v1/jobs/{job['id']}").json()["status"] == "queued"
        workers = set(re.findall(r"Started server process \[(\d+)\]", log.read_text()))
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=60)
    assert code == 0, log.read_text()
    assert not any(alive(int(pid)) for pid in workers)  # a zombie awaits only its reaper


def test_sigterm_to_a_single_process_stops_the_local_head(tmp_path):
    """With one worker uvicorn re-raises SIGTERM once it has shut down; the head (a process
    group of its own, which nothing else would stop) must be stopped first."""
    port = free_port()
    stopped = tmp_path / "head-stopped"
    script = textwrap.dedent(f"""
        from pathlib import Path
        from services import server
        from services.settings import Settings

        class Head:  # start_head's local head, without Ray
            dashboard_url = "http://127.0.0.1:9"

            def stop(self):
                Path({str(stopped)!r}).write_text("stopped")

        server.start_head = lambda *args: Head()
        server.serve(Settings(port={port}, workers=1))
    """)
    process = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path)
    try:
        wait_for(lambda: answers(f"http://127.0.0.1:{port}"), 60, "the service to answer")
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
    assert code == 0
    assert stopped.read_text() == "stopped"


def test_an_in_memory_database_is_refused_with_what_to_set():
    with pytest.raises(ValidationError, match="SIMCLR_DATABASE_URL to a database file"):
        Settings(database_url="sqlite://")


@pytest.mark.parametrize("field, value", [("workers", 0), ("workers", 10**12),
                                          ("request_threads", 0), ("request_threads", 10**12),
                                          ("workers", float("nan"))])  # fmt: skip
def test_process_and_thread_counts_are_bounded(field, value):
    with pytest.raises(ValidationError, match=field):
        Settings(**{field: value})


def test_a_worker_started_while_the_database_is_down_answers_503_until_it_is_back(
    tmp_path, monkeypatch
):
    """The parent migrated; a worker (re)started by uvicorn while the database is unreachable
    must not fail in a migration of its own: it comes up and says the database is down."""
    from fastapi.testclient import TestClient

    from services import server
    from services.dispatcher import NoopDispatcher

    down = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test?connect_timeout=2"
    settings = Settings(database_url=down, storage_path=str(tmp_path / "runs"),
                        data_roots=[str(tmp_path / "data")], internal_token="secret")  # fmt: skip
    monkeypatch.setenv(server.SETTINGS_ENV, settings.model_dump_json())
    with TestClient(server.app(NoopDispatcher())) as api:
        assert api.get("/healthz").status_code == 200
        listed = api.get("/v1/jobs")
        assert listed.status_code == 503, listed.text
        assert listed.headers["content-type"] == "application/problem+json"
        ready = api.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["database"] != "ok"


def test_the_workers_end_when_serve_is_killed(tmp_path):
    """SIGKILL to ``simclr serve`` (an OOM kill, ``kill -9`` by an operator) leaves no worker
    serving the port or reconciling with nothing left to stop it."""
    port = free_port()
    server, log = serve_two_workers(tmp_path, port)
    try:
        workers = wait_for(
            lambda: len(found := re.findall(r"Started server process \[(\d+)\]",
                                            log.read_text())) == 2 and found,
            60, "both workers",
        )  # fmt: skip
    finally:
        server.kill()
        server.wait(timeout=60)

    # gone, or a zombie whose parent is gone and init reaps it
    wait_for(lambda: not any(alive(int(pid)) for pid in workers), 30, "the workers to end")
    assert not answers(f"http://127.0.0.1:{port}")
