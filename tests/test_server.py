"""``simclr serve`` with several API processes, run as an operator runs it: one reconciler among
them, ``/metrics`` counting every process's requests, a killed process replaced and its
reconciler taken over, and all of it stopped by one SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from services.ray_head import free_port

LEADS = re.compile(r"process (\d+) runs the reconciler")


def wait_for(condition, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_serve_in_two_processes(tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "SIMCLR_RAY_ADDRESS": "http://127.0.0.1:9",  # no cluster: jobs stay queued
        "SIMCLR_RECONCILE_INTERVAL_S": "0.2",
    }
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "serve", "--port", str(port), "--workers", "2"],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:

        def answers() -> bool:
            try:
                return httpx.get(f"{base}/healthz").status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(answers, 60, "the service to answer")
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
    for pid in workers:  # none left running (a zombie awaits only its reaper)
        status = Path(f"/proc/{pid}/status")
        assert not status.exists() or "zombie" in status.read_text()
