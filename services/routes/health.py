"""Liveness, readiness and the service's Prometheus metrics."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.auth import require_api_token
from services.dispatcher import DispatchError
from services.problems import problem
from services.routes.deps import ServiceDep

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process answers (on the event loop: no request thread needed)."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "the database or Ray is unreachable"}})
def readyz(service: ServiceDep):
    """The database and the Ray cluster both answer."""
    checks: dict[str, str] = {}
    try:
        service.store.ping()
        checks["database"] = "ok"
    except Exception:  # the reason goes to the log, never to a client
        log.warning("readiness: the database does not answer", exc_info=True)
        checks["database"] = "unreachable"
    try:
        service.dispatcher.ping()
        checks["ray"] = "ok"
    except DispatchError as error:
        log.warning("readiness: the Ray dashboard does not answer: %s", error)
        checks["ray"] = "unreachable"
    if all(value == "ok" for value in checks.values()):
        return {"status": "ready", "checks": checks}
    failing = ", ".join(f"{name} {value}" for name, value in checks.items() if value != "ok")
    return problem(503, f"not ready: {failing}", checks=checks)


@router.get("/metrics", dependencies=[Depends(require_api_token)])
def metrics(service: ServiceDep) -> Response:
    """Prometheus exposition: ``simclr_jobs{status}``, ``simclr_http_request_duration_seconds``."""
    return Response(generate_latest(service.telemetry.registry), media_type=CONTENT_TYPE_LATEST)
