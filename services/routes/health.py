"""Liveness, readiness and the service's Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.auth import require_api_token
from services.dispatcher import DispatchError
from services.problems import problem
from services.routes.deps import ServiceDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process answers."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "the database or Ray is unreachable"}})
def readyz(service: ServiceDep):
    """The database and the Ray cluster both answer."""
    checks: dict[str, str] = {}
    try:
        service.store.ping()
        checks["database"] = "ok"
    except Exception as error:
        checks["database"] = f"unreachable: {type(error).__name__}: {error}"
    try:
        service.dispatcher.ping()
        checks["ray"] = "ok"
    except DispatchError as error:
        checks["ray"] = f"unreachable: {error}"
    if all(value == "ok" for value in checks.values()):
        return {"status": "ready", "checks": checks}
    failing = ", ".join(f"{name} {value}" for name, value in checks.items() if value != "ok")
    return problem(503, f"not ready: {failing}", checks=checks)


@router.get("/metrics", dependencies=[Depends(require_api_token)])
def metrics(service: ServiceDep) -> Response:
    """Prometheus exposition: ``simclr_jobs{status}``, ``simclr_http_request_duration_seconds``."""
    return Response(generate_latest(service.telemetry.registry), media_type=CONTENT_TYPE_LATEST)
