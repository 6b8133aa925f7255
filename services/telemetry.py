"""The service's own Prometheus metrics: request latency by route, jobs by status."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class JobsByStatus:
    """A collector read at scrape time, so the figures are the database's."""

    def __init__(self, counts: Callable[[], dict[str, int]]):
        self.counts = counts

    def collect(self):
        family = GaugeMetricFamily("simclr_jobs", "jobs by status", labels=["status"])
        for status, count in self.counts().items():
            family.add_metric([status], count)
        yield family


class Telemetry:
    """``registry`` is what ``/metrics`` exposes. Under several API processes
    (``PROMETHEUS_MULTIPROC_DIR`` set by ``services.server``) each process writes its histogram
    to that directory and a scrape sums every process's files."""

    def __init__(self, counts: Callable[[], dict[str, int]]):
        own = CollectorRegistry()
        self.latency = Histogram(
            "simclr_http_request_duration_seconds",
            "API request latency",
            ["method", "route", "status"],
            registry=own,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.registry = own
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            self.registry = CollectorRegistry()
            MultiProcessCollector(self.registry)
        self.registry.register(JobsByStatus(counts))


class LatencyMiddleware:
    """Times every HTTP request under its route template (``/v1/jobs/{job_id}``), not its path."""

    def __init__(self, app: ASGIApp, telemetry: Callable[[], Telemetry | None]):
        self.app = app
        self.telemetry = telemetry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            telemetry = self.telemetry()
            route = scope.get("route")
            if telemetry is not None:
                telemetry.latency.labels(
                    scope["method"], getattr(route, "path", "unmatched"), str(status)
                ).observe(time.perf_counter() - start)
