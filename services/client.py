"""A Python client of the REST API (the CLI and the demo are built on it)."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx

from trainer.contracts.states import TERMINAL

DEFAULT_URL = "http://127.0.0.1:8000"
# An idle connection is dropped before uvicorn's 5 s keep-alive ends: a request sent on one the
# server is closing at that moment is lost without an answer.
KEEPALIVE_EXPIRY_S = 2.0
# The connection dropped before a complete answer: the request may or may not have been handled.
DROPPED = (httpx.RemoteProtocolError, httpx.ReadError)
SAFE_METHODS = frozenset({"GET", "HEAD"})


class ApiError(RuntimeError):
    """An error answer: its status and the problem document's ``detail``."""

    def __init__(self, status: int, detail: str):
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


class Client:
    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        timeout: float = 30,
        http: httpx.Client | None = None,
    ):
        """``SIMCLR_URL`` and ``SIMCLR_API_TOKEN`` unless given; ``http`` replaces the transport
        (a FastAPI ``TestClient`` in tests)."""
        url = url or os.environ.get("SIMCLR_URL", DEFAULT_URL)
        token = token or os.environ.get("SIMCLR_API_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = http or httpx.Client(
            base_url=url, headers=headers, timeout=timeout,
            limits=httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY_S),
        )  # fmt: skip

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The response, sent once more on a fresh connection when the connection dropped before
        a complete answer (a kept-alive one the server closed as the request went out, a restart)
        and sending it twice does what sending it once does: a GET, or a request with an
        ``Idempotency-Key``."""
        try:
            return self.http.request(method, path, **kwargs)
        except DROPPED:
            if method not in SAFE_METHODS and "Idempotency-Key" not in kwargs.get("headers", {}):
                raise
        return self.http.request(method, path, **kwargs)

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The response; ``ApiError`` with the problem's detail for a 4xx or 5xx, status 0 when
        no answer came."""
        try:
            response = self._send(method, path, **kwargs)
        except DROPPED:
            raise ApiError(
                0,
                f"{method} {path}: {self.http.base_url} closed the connection without a "
                "complete answer (is the service restarting? see its log)",
            ) from None
        except httpx.ConnectError:
            raise ApiError(
                0, f"no service at {self.http.base_url} (start one: simclr serve)"
            ) from None
        except httpx.TimeoutException:
            raise ApiError(
                0, f"{method} {path}: no answer in time from {self.http.base_url}"
            ) from None
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ApiError(response.status_code, str(detail))
        return response

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    def submit(
        self,
        kind: str,
        config: dict[str, Any],
        resources: dict[str, Any] | None = None,
        name: str | None = None,
        idempotency_key: str | None = None,
        evaluate: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"kind": kind, "config": config, "name": name}
        if resources:
            body["resources"] = resources
        if evaluate:
            body["evaluate"] = evaluate
        return self._call("POST", "/v1/jobs", json=body, headers=_keyed(idempotency_key))

    def evaluate(
        self,
        job_id: str,
        checkpoint: str = "latest",
        dataset: dict[str, Any] | None = None,
        config: dict[str, Any] | None = None,
        resources: dict[str, Any] | None = None,
        protocol: str = "linear",
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"job_id": job_id, "protocol": protocol, "checkpoint": checkpoint,
                                "dataset": dataset, "config": config or {}}  # fmt: skip
        if resources:
            body["resources"] = resources
        return self._call("POST", "/v1/evaluations", json=body, headers=_keyed(None))

    def evaluation(self, evaluation_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/evaluations/{evaluation_id}")

    def evaluations(self, job_id: str) -> list[dict[str, Any]]:
        return self._call("GET", f"/v1/jobs/{job_id}/evaluations")

    def wait(self, job_id: str, poll_s: float = 1.0) -> dict[str, Any]:
        """The job once it has finished."""
        while (job := self.job(job_id))["status"] not in TERMINAL:
            time.sleep(poll_s)
        return job

    def jobs(
        self, status: str | None = None, kind: str | None = None, limit: int = 50
    ) -> list[dict]:
        params = {k: v for k, v in {"status": status, "kind": kind, "limit": limit}.items() if v}
        return self._call("GET", "/v1/jobs", params=params)["items"]

    def job(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/jobs/{job_id}")

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/jobs/{job_id}/cancel")

    def retry(self, job_id: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/jobs/{job_id}/retry")

    def metrics(
        self, job_id: str, after_step: int | None = None, name: str | None = None
    ) -> list[dict[str, Any]]:
        params = {key: value for key, value in (("after_step", after_step), ("name", name))
                  if value is not None}  # fmt: skip
        return self._call("GET", f"/v1/jobs/{job_id}/metrics", params=params)

    def checkpoints(self, job_id: str) -> list[dict[str, Any]]:
        return self._call("GET", f"/v1/jobs/{job_id}/checkpoints")

    def artifacts(self, job_id: str) -> list[dict[str, Any]]:
        return self._call("GET", f"/v1/jobs/{job_id}/artifacts")

    def logs(self, job_id: str, offset: int = 0, attempt: int | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"offset": offset}
        if attempt is not None:
            params["attempt"] = attempt
        return self._call("GET", f"/v1/jobs/{job_id}/logs", params=params)

    def export(self, job_id: str, checkpoint: str = "latest", format: str = "safetensors") -> bytes:
        """The checkpoint's encoder as a file's bytes, or its model card (``format="card"``, JSON)."""
        response = self._request(  # a first export of a large model takes minutes
            "GET", f"/v1/jobs/{job_id}/checkpoints/{checkpoint}/export", params={"format": format},
            timeout=660,
        )  # fmt: skip
        return response.content

    def ready(self) -> bool:
        try:
            return self.http.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def follow_logs(self, job_id: str, poll_s: float = 1.0) -> Iterator[str]:
        """The log of the job's latest attempt as it grows (a new attempt's follows the old one's
        after a header line), until the job has finished."""
        attempt, offset = None, 0
        while True:
            job = self.job(job_id)
            latest = job["attempts"][-1]["number"]
            if attempt != latest:
                if attempt is not None:
                    rest = self.logs(job_id, offset, attempt)["text"]
                    if rest:
                        yield rest
                    yield f"--- attempt {latest} ---\n"
                attempt, offset = latest, 0
            chunk = self.logs(job_id, offset, attempt)
            if chunk["text"]:
                yield chunk["text"]
            offset = chunk["next_offset"]
            if job["status"] in TERMINAL and chunk["complete"]:
                return
            time.sleep(poll_s)


def _keyed(idempotency_key: str | None) -> dict[str, str]:
    """The headers of a request that creates something: its ``Idempotency-Key``, a fresh one when
    none is given, so that sending it again after a dropped connection creates nothing twice."""
    return {"Idempotency-Key": idempotency_key or f"client:{uuid.uuid4()}"}
