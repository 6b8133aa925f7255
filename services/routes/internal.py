"""``/internal/v1``: what a job's workers report (metrics, checkpoints, artifacts), with the
internal token the dispatcher hands them. The API stays the database's only writer and workers
need no database credentials."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Request

from services.auth import require_internal_token
from services.routes.deps import ServiceDep
from services.schemas import CheckpointIn, CheckpointOut, MetricsIn, ProbeResultOut

router = APIRouter(
    prefix="/internal/v1", tags=["internal"], dependencies=[Depends(require_internal_token)]
)

ARTIFACT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")
MAX_ARTIFACT_BYTES = 32 << 20


@router.post("/jobs/{job_id}/metrics", status_code=204)
def report_metrics(job_id: str, body: MetricsIn, service: ServiceDep) -> None:
    service.store.add_metrics(job_id, (point.model_dump() for point in body.points))


@router.post("/jobs/{job_id}/checkpoints", status_code=201, response_model=CheckpointOut)
def report_checkpoint(job_id: str, body: CheckpointIn, service: ServiceDep) -> CheckpointOut:
    fields = body.model_dump()
    return CheckpointOut.model_validate(service.store.add_checkpoint(job_id, **fields))


@router.post("/jobs/{job_id}/result", status_code=204)
def report_result(job_id: str, body: ProbeResultOut, service: ServiceDep) -> None:
    service.store.set_result(job_id, body.model_dump())


@router.put("/jobs/{job_id}/artifacts/{name}", status_code=204)
async def put_artifact(
    job_id: str,
    name: str,
    request: Request,
    service: ServiceDep,
    content_type: Annotated[str, Header()] = "application/octet-stream",
) -> None:
    if not ARTIFACT_NAME.match(name):
        raise HTTPException(422, f"artifact name {name!r}: use letters, digits, '.', '_', '-'")
    data = await request.body()
    if len(data) > MAX_ARTIFACT_BYTES:
        raise HTTPException(
            413, f"artifact {name!r} is {len(data)} bytes; the limit is {MAX_ARTIFACT_BYTES}"
        )
    service.store.put_artifact(job_id, name, content_type, data)
