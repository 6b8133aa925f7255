"""What a job's rank 0 tells the service: metric points, checkpoints and artifacts, posted to the
internal endpoints (``services/routes/internal.py``) with the token the dispatcher put in the job's
environment (``SIMCLR_CONTROL_URL``, ``SIMCLR_INTERNAL_TOKEN``).

Reporting never stops training: a request that fails is kept and sent again with the next one, and
the failure is logged once per outage. A driver started by hand, without those variables, reports
nothing.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import httpx

log = logging.getLogger(__name__)

# Fields of a metrics row that index it rather than being metrics.
INDEX_FIELDS = ("step", "epoch", "time")
MAX_PENDING = 10_000


class ControlPlaneReporter:
    def __init__(self, job_id: str, url: str, token: str, timeout: float = 10.0):
        self.job_id = job_id
        self._client = httpx.Client(
            base_url=url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
        )
        self._pending: list[tuple[str, str, dict[str, Any]]] = []
        self._failing = False

    @classmethod
    def from_env(cls, job_id: str) -> ControlPlaneReporter | None:
        url, token = os.environ.get("SIMCLR_CONTROL_URL"), os.environ.get("SIMCLR_INTERNAL_TOKEN")
        return cls(job_id, url, token) if url and token else None

    def metrics(self, row: dict[str, float]) -> None:
        points = [
            {"step": int(row["step"]), "epoch": int(row["epoch"]), "name": name, "value": value}
            for name, value in row.items()
            if name not in INDEX_FIELDS
        ]
        self._send("POST", "metrics", {"json": {"points": points}})

    def checkpoint(
        self, name: str, step: int, epoch: int, path: str, metrics: dict[str, Any], keep: int
    ) -> None:
        body = {"name": name, "step": step, "epoch": epoch, "path": path, "metrics": metrics,
                "keep": keep}  # fmt: skip
        self._send("POST", "checkpoints", {"json": body})

    def result(self, result: dict[str, Any]) -> None:
        """A job's final result (a linear probe's accuracy)."""
        self._send("POST", "result", {"json": result})

    def artifact(self, name: str, data: bytes, content_type: str) -> None:
        request = {"content": data, "headers": {"Content-Type": content_type}}
        self._send("PUT", f"artifacts/{name}", request)

    def _send(self, method: str, what: str, request: dict[str, Any]) -> None:
        self._pending.append((method, f"/internal/v1/jobs/{self.job_id}/{what}", request))
        del self._pending[:-MAX_PENDING]
        while self._pending:
            method, path, kwargs = self._pending[0]
            try:
                response = self._client.request(method, path, **kwargs)
            except httpx.HTTPError as error:
                self._warn(f"the service is unreachable ({error})")
                return
            if response.status_code >= 500:
                self._warn(f"the service answered {response.status_code}")
                return
            if response.status_code >= 400:  # refused for good: retrying cannot help
                log.error("the service refused %s %s: %s", method, path, response.text[:300])
            self._pending.pop(0)
            self._failing = False

    def _warn(self, reason: str) -> None:
        if not self._failing:
            log.warning("reporting to the control plane failed: %s; will retry", reason)
        self._failing = True
