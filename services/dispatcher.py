"""How the service runs jobs: each attempt is one Ray Job (Ray's job-submission REST API) whose
entrypoint is the trainer driver. ``Dispatcher`` is the interface the reconciler and the routes
use; ``RayDispatcher`` talks to a cluster's dashboard, ``NoopDispatcher`` accepts everything and
runs nothing (the API's latency benchmark and the tests of the API alone)."""

from __future__ import annotations

import json
import shlex
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from services.auth import job_token
from services.settings import Settings
from services.store.store import JobRecord
from trainer.contracts.kinds import KINDS
from trainer.contracts.ray_auth import ray_auth_headers
from trainer.contracts.spec import JobSpec

# Seconds Ray waits for a stopped job's driver to abort its run before it sends SIGKILL.
STOP_GRACE_S = 30


class DispatchError(RuntimeError):
    """Ray did not accept or answer a request. ``reachable``: the cluster answered (and refused);
    otherwise it could not be reached and the request may work on a later try."""

    def __init__(self, message: str, reachable: bool = True):
        super().__init__(message)
        self.reachable = reachable


@dataclass(frozen=True)
class RayJobState:
    """Ray's state of a submission in lower case (``pending``, ``running``, ``succeeded``,
    ``failed``, ``stopped``), or ``lost`` when the cluster does not know it."""

    state: str
    message: str | None = None


class Dispatcher(Protocol):
    dashboard_url: str | None

    def submit(self, job: JobRecord, submission_id: str) -> None: ...
    def state(self, submission_id: str) -> RayJobState: ...
    def logs(self, submission_id: str) -> str: ...
    def stop(self, submission_id: str) -> None: ...
    def capacity(self) -> list[dict[str, float]] | None:
        """Total resources of each alive node, or None when unknown."""

    def ping(self) -> None: ...


def job_spec(job: JobRecord, settings: Settings) -> JobSpec:
    """What the driver runs for ``job``; raises ``pydantic.ValidationError`` when the stored
    config no longer validates (written by an older release)."""
    kind = KINDS.get(job.kind)  # an unknown kind fails the spec's validation
    policy = (
        {} if kind is None or kind.max_failures is None else {"max_failures": kind.max_failures}
    )
    return JobSpec(
        job_id=job.id,
        kind=job.kind,
        config=job.config,
        resources=job.resources,
        storage_path=settings.storage_root,
        data_roots=settings.resolved_data_roots,
        **policy,  # the kind's failure policy, from its registry row
    )


class RayDispatcher:
    """Submit, follow and stop Ray Jobs through the dashboard's REST API (``/api/jobs/``), with
    Ray's token authentication."""

    def __init__(self, dashboard_url: str, settings: Settings, timeout: float | None = None):
        self.dashboard_url = dashboard_url.rstrip("/")
        self.settings = settings
        self._client = httpx.Client(
            base_url=self.dashboard_url, timeout=timeout or settings.submit_timeout_s
        )
        self._capacity: tuple[float, list[dict[str, float]] | None] = (0.0, None)
        self._lock = threading.Lock()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._client.request(method, path, headers=ray_auth_headers(), **kwargs)
        except httpx.HTTPError as error:
            raise DispatchError(
                f"Ray dashboard {self.dashboard_url} unreachable: {error}", reachable=False
            ) from error

    def _check(self, response: httpx.Response, what: str) -> httpx.Response:
        if response.status_code in (401, 403):
            raise DispatchError(
                f"{what}: the Ray cluster refused the token ({response.status_code}); set "
                "RAY_AUTH_TOKEN or ~/.ray/auth_token to the cluster's token"
            )
        if response.status_code >= 400:
            raise DispatchError(f"{what}: HTTP {response.status_code}: {response.text[:500]}")
        return response

    def submit(self, job: JobRecord, submission_id: str) -> None:
        """Submit one attempt. A submission id Ray already has counts as submitted (a retry after
        a timeout whose request did arrive)."""
        spec = job_spec(job, self.settings)
        entrypoint = (
            f"{shlex.quote(self.settings.driver_python)} -m trainer.driver "
            f"--spec-json {shlex.quote(spec.model_dump_json())}"
        )
        body = {
            "entrypoint": entrypoint,
            "submission_id": submission_id,
            "metadata": {"simclr_job_id": job.id, "simclr_kind": job.kind, "name": job.name},
            "runtime_env": {
                "env_vars": {
                    "SIMCLR_CONTROL_URL": self.settings.callback_url,
                    # this job's own credential: Ray shows the environment on its dashboard
                    "SIMCLR_INTERNAL_TOKEN": job_token(self.settings.internal_token, job.id),
                    "RAY_TRAIN_ENABLE_STATE_TRACKING": "1",
                    # a stop (cancel) is Train's graceful abort: SIGINT to the driver, which
                    # aborts the run and its workers, SIGKILL only if that takes too long
                    "RAY_JOB_STOP_SIGNAL": "SIGINT",
                    "RAY_JOB_STOP_WAIT_TIME_S": str(STOP_GRACE_S),
                }
            },
        }
        response = self._request("POST", "/api/jobs/", json=body)
        if response.status_code >= 400 and "already exists" in response.text:
            return
        self._check(response, f"submitting {submission_id}")

    def state(self, submission_id: str) -> RayJobState:
        response = self._request("GET", f"/api/jobs/{submission_id}")
        if response.status_code == 404:
            return RayJobState("lost", f"Ray has no job {submission_id}")
        info = self._check(response, f"reading {submission_id}").json()
        return RayJobState(info["status"].lower(), info.get("message"))

    def logs(self, submission_id: str) -> str:
        response = self._request("GET", f"/api/jobs/{submission_id}/logs")
        return self._check(response, f"reading the logs of {submission_id}").json()["logs"]

    def stop(self, submission_id: str) -> None:
        response = self._request("POST", f"/api/jobs/{submission_id}/stop")
        if response.status_code != 404:
            self._check(response, f"stopping {submission_id}")

    def capacity(self) -> list[dict[str, float]] | None:
        """Alive nodes' total resources, cached for 10 s."""
        with self._lock:
            fetched_at, nodes = self._capacity
            if time.monotonic() - fetched_at < 10 and nodes is not None:
                return nodes
            response = self._request("GET", "/api/v0/nodes", params={"detail": 1})
            rows = self._check(response, "listing the nodes").json()["data"]["result"]["result"]
            nodes = [row["resources_total"] for row in rows if row["state"] == "ALIVE"]
            self._capacity = (time.monotonic(), nodes)
            return nodes

    def ping(self) -> None:
        self._check(self._request("GET", "/api/version"), "Ray dashboard")


class NoopDispatcher:
    """Accepts every submission and reports it running: nothing runs. For measuring the API
    without Ray and testing its contracts."""

    dashboard_url = None

    def __init__(self) -> None:
        self.submitted: list[str] = []
        self.stopped: list[str] = []

    def submit(self, job: JobRecord, submission_id: str) -> None:
        self.submitted.append(submission_id)

    def state(self, submission_id: str) -> RayJobState:
        if submission_id in self.stopped:
            return RayJobState("stopped")
        return RayJobState("running")

    def logs(self, submission_id: str) -> str:
        return ""

    def stop(self, submission_id: str) -> None:
        self.stopped.append(submission_id)

    def capacity(self) -> list[dict[str, float]] | None:
        return None

    def ping(self) -> None:
        pass


def worker_demand(resources: dict[str, Any]) -> dict[str, float]:
    demand = {"CPU": float(resources["cpus_per_worker"])}
    if resources["use_gpu"]:
        demand["GPU"] = float(resources["gpus_per_worker"])
    return demand


def unplaceable_reason(resources: dict[str, Any], nodes: list[dict[str, float]]) -> str | None:
    """Why ``num_workers`` workers of this shape can never be placed on ``nodes``, or None.

    Each worker must fit on one node, and all of them on the cluster at once (Ray Train starts the
    worker group as one placement group)."""
    demand = worker_demand(resources)
    fits = [
        min(int(node.get(k, 0) // v) if v else 1 << 30 for k, v in demand.items()) for node in nodes
    ]
    if not any(fits):
        largest = {k: max((node.get(k, 0) for node in nodes), default=0) for k in demand}
        return (
            f"no node can host one worker needing {json.dumps(demand)}; the largest node has "
            f"{json.dumps(largest)}"
        )
    if sum(fits) < resources["num_workers"]:
        return (
            f"the cluster can place at most {sum(fits)} workers needing {json.dumps(demand)} each, "
            f"not {resources['num_workers']}"
        )
    return None
