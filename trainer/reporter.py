"""What a job's rank 0 tells the service: metric points, checkpoints and artifacts, posted to the
internal endpoints (``services/routes/internal.py``) with the token the dispatcher put in the job's
environment (``SIMCLR_CONTROL_URL``, ``SIMCLR_INTERNAL_TOKEN``).

Reporting never stops training, and no call of this module raises into it:

- Every report joins a queue that is sent in order. A transient failure (the service unreachable, a
  timeout, a 5xx, 408 or 429 answer) keeps it at the head: the queue is retried with the next report
  once a backoff (1 s doubling to 60 s) has passed, and ``flush`` (at the end of a run) retries
  until it is empty or a deadline passes. The failure is logged once per outage.
- A report the service refuses for good (any other 4xx), or one that cannot be sent at all (an
  exception other than a network error), is dropped and logged once per kind of refusal, so it never
  blocks the ones behind it.
- Non-finite numbers anywhere in a JSON body go as the strings ``"NaN"``, ``"Infinity"`` and
  ``"-Infinity"`` (strict JSON has no literal for them; the service reads these strings back).
- The queue holds at most ``MAX_PENDING`` reports: past that the oldest metric reports are dropped
  (the service recovers metrics from the job's ``metrics.jsonl``), never a checkpoint or a result.
  A newer version of an artifact replaces a pending older one of the same name.

A driver started by hand, without those variables, reports nothing.
"""

from __future__ import annotations

import contextlib
import logging
import math
import numbers
import os
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

import httpx

log = logging.getLogger(__name__)

# Fields of a metrics row that index it rather than being metrics.
INDEX_FIELDS = ("step", "epoch", "time")
MAX_PENDING = 10_000
# How long ``flush`` keeps retrying by default; the environment variable overrides it.
FLUSH_ENV = "SIMCLR_REPORT_FLUSH_S"
DEFAULT_FLUSH_S = 60.0
FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 60.0
# Answers after which the same request may succeed later.
RETRIED_STATUSES = frozenset({408, 429})
# Kinds of report that are never dropped to make room.
KEPT_KINDS = frozenset({"checkpoint", "result"})


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (anywhere in dicts, lists and tuples) replaced by
    ``"NaN"``, ``"Infinity"`` or ``"-Infinity"``, and NumPy-style scalars made plain numbers."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value  # anything else is the JSON encoder's to accept or refuse


def flush_deadline_s() -> float:
    """The default deadline of ``flush``: ``$SIMCLR_REPORT_FLUSH_S`` seconds, else 60."""
    raw = os.environ.get(FLUSH_ENV, "").strip()
    if not raw:
        return DEFAULT_FLUSH_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0:
        log.warning(
            "%s=%r is not a number of seconds >= 0; using %g", FLUSH_ENV, raw, DEFAULT_FLUSH_S
        )
        return DEFAULT_FLUSH_S
    return value


@dataclass
class _Report:
    kind: str  # "metrics", "checkpoint", "result" or "artifact"
    method: str
    path: str
    request: dict[str, Any]


class Reporter:
    def __init__(
        self,
        job_id: str,
        url: str,
        token: str,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ):
        """``transport``: httpx's (tests pass an ``httpx.MockTransport``); the network by default."""
        self.job_id = job_id
        self._timeout = timeout
        self._client = httpx.Client(
            base_url=url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            transport=transport,
        )
        self._pending: deque[_Report] = deque()
        self._failing = False
        self._backoff = FIRST_BACKOFF_S
        self._retry_at = 0.0  # time.monotonic() before which the queue is not retried
        self._logged: set[tuple[str, str]] = set()  # kinds of refusal already logged
        self._overflow = 0  # metric reports dropped to make room since it was last logged
        # Reports dropped, by kind of report (refused, unsendable, or to make room).
        self.dropped: Counter[str] = Counter()

    @classmethod
    def from_env(cls, job_id: str) -> Reporter | None:
        url, token = os.environ.get("SIMCLR_CONTROL_URL"), os.environ.get("SIMCLR_INTERNAL_TOKEN")
        return cls(job_id, url, token) if url and token else None

    @property
    def pending(self) -> int:
        """Reports not sent yet."""
        return len(self._pending)

    def metrics(self, row: dict[str, float]) -> None:
        def body() -> dict[str, Any]:
            points = [
                {
                    "step": int(row["step"]),
                    "epoch": int(row["epoch"]),
                    "name": name,
                    "value": json_safe(value),
                }
                for name, value in row.items()
                if name not in INDEX_FIELDS
            ]
            return {"json": {"points": points}}

        self._submit("metrics", "POST", "metrics", body)

    def checkpoint(
        self, name: str, step: int, epoch: int, path: str, metrics: dict[str, Any], keep: int
    ) -> None:
        def body() -> dict[str, Any]:
            return {
                "json": {
                    "name": name,
                    "step": step,
                    "epoch": epoch,
                    "path": path,
                    "metrics": json_safe(metrics),
                    "keep": keep,
                }
            }

        self._submit("checkpoint", "POST", "checkpoints", body)

    def result(self, result: dict[str, Any]) -> None:
        """A job's final result (a linear probe's accuracy)."""
        self._submit("result", "POST", "result", lambda: {"json": json_safe(result)})

    def artifact(self, name: str, data: bytes, content_type: str) -> None:
        def body() -> dict[str, Any]:
            return {"content": data, "headers": {"Content-Type": content_type}}

        self._submit("artifact", "PUT", f"artifacts/{name}", body)

    def flush(self, deadline_s: float | None = None) -> int:
        """Send every pending report, retrying transient failures with backoff, until none is left
        or ``deadline_s`` seconds (default ``flush_deadline_s()``) have passed; no request outlives
        the deadline. Returns how many are left unsent (and logs it). Never raises."""
        if deadline_s is None:
            deadline_s = flush_deadline_s()
        deadline_s = max(0.0, deadline_s)
        end = time.monotonic() + deadline_s
        delay = min(0.25, FIRST_BACKOFF_S)
        try:
            while not self._drain(end):
                remaining = end - time.monotonic()
                if remaining <= 0:
                    break
                time.sleep(min(delay, remaining))
                delay = min(2 * delay, MAX_BACKOFF_S)
        except Exception as error:  # never into training
            self._log_once(
                "flush",
                type(error).__name__,
                "reporting to the control plane: flush failed (%s: %.200s)",
                type(error).__name__,
                error,
            )
        self._log_overflow()
        left = len(self._pending)
        if left:
            kinds = Counter(report.kind for report in self._pending)
            log.warning(
                "%d report(s) to the control plane left unsent after %.1f s (%s); the service "
                "recovers metrics and checkpoints from the job's storage",
                left,
                deadline_s,
                ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items())),
            )
        return left

    def close(self, deadline_s: float | None = None) -> int:
        """``flush``, then release the connections: later reports are dropped. Never raises."""
        left = self.flush(deadline_s)
        with contextlib.suppress(Exception):  # closing must not fail a run
            self._client.close()
        return left

    def _submit(self, kind: str, method: str, what: str, body) -> None:
        """Queue one report (``body()`` makes its request) and send what is due. Never raises."""
        try:
            report = _Report(kind, method, f"/internal/v1/jobs/{self.job_id}/{what}", body())
        except Exception as error:  # a row without a step, say: this report only is lost
            self.dropped[kind] += 1
            self._log_once(
                kind,
                f"build {type(error).__name__}",
                "could not make a %s report (%s: %.200s); dropped",
                kind,
                type(error).__name__,
                error,
            )
            return
        try:
            self._enqueue(report)
            if time.monotonic() >= self._retry_at:
                self._drain(None)
        except Exception as error:  # never into training
            self._log_once(
                kind,
                f"queue {type(error).__name__}",
                "reporting to the control plane failed (%s: %.200s)",
                type(error).__name__,
                error,
            )

    def _enqueue(self, report: _Report) -> None:
        if report.kind == "artifact":  # the service keeps the newest version of a name only
            for old in [r for r in self._pending if r.kind == "artifact" and r.path == report.path]:
                self._pending.remove(old)
        while len(self._pending) >= MAX_PENDING:
            victim = next((r for r in self._pending if r.kind == "metrics"), None)
            if victim is None:
                victim = next((r for r in self._pending if r.kind not in KEPT_KINDS), None)
            if victim is None:
                break  # checkpoints and results only: keep them all
            if not self._overflow:
                log.warning(
                    "reporting to the control plane: %d reports pending, dropping the oldest "
                    "metric reports (the service recovers them from metrics.jsonl)",
                    MAX_PENDING,
                )
            self._pending.remove(victim)
            self._overflow += 1
            self.dropped[victim.kind] += 1
        self._pending.append(report)

    def _drain(self, end: float | None) -> bool:
        """Send pending reports in order until one fails transiently (False) or none is left
        (True). ``end``: a ``time.monotonic()`` deadline that caps each request's timeout."""
        while self._pending:
            report = self._pending[0]
            request = dict(report.request)
            if end is not None:
                remaining = end - time.monotonic()
                if remaining <= 0:
                    return False
                request["timeout"] = min(self._timeout, remaining)
            try:
                response = self._client.request(report.method, report.path, **request)
            except httpx.TransportError as error:  # unreachable, timed out, connection dropped
                self._transient(f"the service is unreachable ({type(error).__name__}: {error})")
                return False
            except Exception as error:  # cannot be sent at all (its body, say): drop it
                self._drop(
                    report,
                    type(error).__name__,
                    "could not send a %s report (%s: %.200s)",
                    report.kind,
                    type(error).__name__,
                    error,
                )
                continue
            status = response.status_code
            if status >= 500 or status in RETRIED_STATUSES:
                self._transient(f"the service answered {status}")
                return False
            self._recovered()  # it answered: reachable again
            if status >= 400:  # refused for good: retrying cannot help
                self._drop(
                    report,
                    str(status),
                    "the service refused a %s report (%s %s): %d %.300s",
                    report.kind,
                    report.method,
                    report.path,
                    status,
                    response.text,
                )
                continue
            self._pending.popleft()
        return True

    def _drop(self, report: _Report, reason: str, message: str, *args: Any) -> None:
        self._pending.popleft()
        self.dropped[report.kind] += 1
        self._log_once(report.kind, reason, message + "; dropped", *args)

    def _log_once(self, kind: str, reason: str, message: str, *args: Any) -> None:
        if (kind, reason) in self._logged:
            log.debug(message, *args)
            return
        self._logged.add((kind, reason))
        log.error(message + " (logged once)", *args)

    def _transient(self, reason: str) -> None:
        if not self._failing:
            log.warning("reporting to the control plane failed: %s; will retry", reason)
        self._failing = True
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(2 * self._backoff, MAX_BACKOFF_S)

    def _recovered(self) -> None:
        if self._failing:
            log.info(
                "reporting to the control plane works again; %d report(s) pending",
                len(self._pending),
            )
            self._log_overflow()
        self._failing = False
        self._backoff = FIRST_BACKOFF_S
        self._retry_at = 0.0

    def _log_overflow(self) -> None:
        if self._overflow:
            log.warning(
                "reporting to the control plane: %d metric report(s) were dropped to make room",
                self._overflow,
            )
            self._overflow = 0
