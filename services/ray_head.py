"""The embedded default's Ray cluster: one local head node that the service starts and stops.

``ray start --head --block`` runs in the foreground as the service's child; terminating it stops
the head's processes (and every job on it). Redis holds 6379 on the machines this was written on,
so the GCS and every other port but the dashboard's come from the OS. Token authentication stays
as Ray 2.60 sets it up (on): clients use the token file it writes, ``~/.ray/auth_token``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from trainer.contracts.ray_auth import ray_auth_headers

log = logging.getLogger(__name__)


def port_free(port: int) -> bool:
    """Nothing listens on ``port`` of the loopback interface. A connection that the kernel made
    to itself (``port`` is an ephemeral port and was picked as the source too: TCP's simultaneous
    open) does not count as a listener."""
    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", port)) != 0:
            return True
        try:
            return sock.getsockname() == sock.getpeername()
        except OSError:  # reset already: a listener was there, dying; the next look decides
            return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LocalRayHead:
    process: subprocess.Popen
    dashboard_url: str
    gcs_address: str
    log_path: Path

    def stop(self, grace_s: float = 5) -> None:
        """Stop the head and everything on it (its jobs included). Ray's processes get SIGTERM, as
        ``ray stop`` sends, then SIGKILL after ``grace_s``: GCS and raylet do not always exit on
        SIGTERM alone, and every process of the group is this head's. Returns once the dashboard
        port is free again (see ``wait_released``), so that a head can start on it at once.

        A head whose ``ray start`` had already exited is not signalled: its process ID may belong
        to another group by now."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(grace_s)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.wait_released()

    def wait_released(self, timeout: float = 10) -> bool:
        """Wait until nothing listens on the dashboard port; False (logged) if something still
        does after ``timeout`` seconds. ``ray start`` exits before the dashboard it started has
        died (a killed group's processes go one by one; on 2 busy cores that takes seconds), and
        until then a new head on the same port is refused."""
        port = urlsplit(self.dashboard_url).port
        deadline = time.monotonic() + timeout
        while port is not None and not port_free(port):
            if time.monotonic() > deadline:
                log.warning("the stopped Ray head's dashboard port %d is still taken", port)
                return False
            time.sleep(0.2)
        return True


def start_head(
    state_dir: Path, dashboard_port: int = 8265, num_cpus: int | None = None, timeout: float = 120
) -> LocalRayHead:
    """Start a head bound to loopback and wait until its dashboard lists the node."""
    if dashboard_port and not port_free(dashboard_port):
        raise RuntimeError(
            f"port {dashboard_port} is taken: is a Ray cluster running already? Attach to "
            f"it with SIMCLR_RAY_ADDRESS=http://127.0.0.1:{dashboard_port}, or stop it "
            "(`ray stop`), or choose SIMCLR_DASHBOARD_PORT."
        )
    gcs_port = free_port()
    ray = Path(sys.executable).with_name("ray")
    command = [
        str(ray) if ray.exists() else "ray", "start", "--head", "--block",
        "--node-ip-address=127.0.0.1", f"--port={gcs_port}",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
        f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
        f"--ray-client-server-port={free_port()}", "--disable-usage-stats",
    ]  # fmt: skip
    if num_cpus is not None:
        command.append(f"--num-cpus={num_cpus}")
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir / "ray-head.log"
    with log_path.open("ab") as output:
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    head = LocalRayHead(
        process, f"http://127.0.0.1:{dashboard_port}", f"127.0.0.1:{gcs_port}", log_path
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the Ray head exited ({process.returncode}); see {log_path}")
        try:
            response = httpx.get(
                f"{head.dashboard_url}/api/v0/nodes", headers=ray_auth_headers(), timeout=2
            )
            if response.status_code == 200 and response.json()["data"]["result"]["result"]:
                log.info("Ray head up: dashboard %s, GCS %s", head.dashboard_url, head.gcs_address)
                return head
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    head.stop()
    raise TimeoutError(f"the Ray head did not answer within {timeout:.0f} s; see {log_path}")
