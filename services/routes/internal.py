"""``/internal/v1/jobs/{job_id}``: what a job's workers report (metrics, checkpoints, artifacts,
a result), each request with that job's own token (``services.auth.job_token``). The API stays the
database's only writer and workers need no database credentials.

What a token-holder can do is bounded: reports only while the job is not finished; a checkpoint's
path must be the job's own run directory on the storage plus the checkpoint's name; artifacts are
images or plain text of at most 32 MiB, read with a running limit."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Depends, Header, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from services.artifacts import ARTIFACT_NAME, ARTIFACT_TYPES, MAX_ARTIFACT_BYTES, media_type
from services.auth import require_job_token
from services.routes.deps import ServiceDep
from services.schemas import CheckpointIn, CheckpointOut, EvaluationResultOut, MetricsIn
from services.scores import redraw_evaluations_plot
from services.service import Service
from services.store.store import JobRecord
from trainer.contracts.states import TERMINAL

router = APIRouter(
    prefix="/internal/v1", tags=["internal"], dependencies=[Depends(require_job_token)]
)


def _open_job(service: Service, job_id: str) -> JobRecord:
    """The job, which exists and may still report."""
    job = service.store.get_job(job_id)
    if job.status in TERMINAL:
        raise HTTPException(409, f"job {job_id} is {job.status}: it takes no more reports")
    return job


@router.post("/jobs/{job_id}/metrics", status_code=204)
def report_metrics(job_id: str, body: MetricsIn, service: ServiceDep) -> None:
    _open_job(service, job_id)
    service.store.add_metrics(job_id, (point.model_dump() for point in body.points))


@router.post("/jobs/{job_id}/checkpoints", status_code=201, response_model=CheckpointOut)
def report_checkpoint(job_id: str, body: CheckpointIn, service: ServiceDep) -> CheckpointOut:
    _open_job(service, job_id)
    expected = f"{service.settings.run_dir(job_id)}/{body.name}"
    if body.path.rstrip("/") != expected:
        raise HTTPException(
            422, f"checkpoint {body.name}: its path must be the job's run directory ({expected})"
        )
    fields = body.model_dump() | {"path": expected}
    return CheckpointOut.model_validate(service.store.add_checkpoint(job_id, **fields))


@router.post("/jobs/{job_id}/result", status_code=204)
def report_result(
    job_id: str, body: EvaluationResultOut, service: ServiceDep, background: BackgroundTasks
) -> None:
    """An evaluation's result; the scored job's ``evaluations.png`` is redrawn after the answer."""
    source = _open_job(service, job_id).source_job_id
    service.store.set_result(job_id, body.model_dump())
    if source is not None:
        background.add_task(redraw_evaluations_plot, service.store, source)  # on a thread


@router.put("/jobs/{job_id}/artifacts/{name}", status_code=204)
async def put_artifact(
    job_id: str,
    name: str,
    request: Request,
    service: ServiceDep,
    content_type: Annotated[str, Header(max_length=200)] = "application/octet-stream",
    content_length: Annotated[int | None, Header(ge=0)] = None,
) -> None:
    if not ARTIFACT_NAME.match(name):
        raise HTTPException(422, "artifact name: use 1-200 letters, digits, '.', '_', '-'")
    kind = media_type(content_type)
    if kind not in ARTIFACT_TYPES:
        raise HTTPException(
            415, f"artifact type {kind!r}: allowed are {', '.join(sorted(ARTIFACT_TYPES))}"
        )
    too_large = HTTPException(413, f"artifact {name!r}: the limit is {MAX_ARTIFACT_BYTES} bytes")
    if content_length is not None and content_length > MAX_ARTIFACT_BYTES:
        raise too_large
    await run_in_threadpool(_open_job, service, job_id)  # before reading what may be 32 MiB
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_ARTIFACT_BYTES:
            raise too_large
    await run_in_threadpool(service.store.put_artifact, job_id, name, kind, bytes(data))
