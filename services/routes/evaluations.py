"""``/v1/evaluations``: score a pretraining job's checkpoint with the linear-evaluation protocol,
as a job of its own (kind ``linear_probe``) on its own Ray workers."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Depends, Header, HTTPException, Response

from services.auth import require_api_token
from services.kinds import validate_model
from services.routes.deps import ServiceDep
from services.routes.jobs import PROBLEM, job_out, record_and_submit
from services.schemas import EvaluationCreate, EvaluationOut
from services.service import Service
from services.store.store import JobRecord, NotFound
from trainer.config import DatasetConfig, LinearProbeConfig, LinearProbeSettings
from trainer.kinds import kinds

router = APIRouter(prefix="/v1", tags=["evaluations"], dependencies=[Depends(require_api_token)])


def evaluation_out(job: JobRecord, service: Service) -> EvaluationOut:
    # as stored, not validated again: a row an older release wrote may break today's bounds
    stored = job.config
    config = LinearProbeConfig.model_construct(
        **{**stored, "dataset": DatasetConfig.model_construct(**stored["dataset"])}
    )
    settings = {name: stored[name] for name in LinearProbeSettings.model_fields if name in stored}
    out = job_out(job, service)
    return EvaluationOut(
        id=job.id, job_id=config.source_job_id, checkpoint=config.checkpoint, status=out.status,
        mode=config.resolved_mode, dataset=stored["dataset"],
        config=settings, resources=job.resources, attempts=out.attempts,
        result=job.result, error=job.error, created_at=out.created_at, updated_at=out.updated_at,
    )  # fmt: skip


@router.post("/evaluations", status_code=202, response_model=EvaluationOut,
             responses={200: {"description": "the evaluation an earlier request with this "
                                             "Idempotency-Key created"},
                        404: PROBLEM, 409: PROBLEM, 422: PROBLEM})  # fmt: skip
def create_evaluation(
    body: EvaluationCreate,
    response: Response,
    background: BackgroundTasks,
    service: ServiceDep,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> EvaluationOut:
    """Resolve the checkpoint (``latest`` or a name from ``/v1/jobs/{id}/checkpoints``), validate
    the data and the settings, write the evaluation, then submit it to Ray."""
    source = service.store.get_job(body.job_id)
    if source.kind not in kinds("pretrain"):
        raise HTTPException(422, f"job {source.id} is a {source.kind} job, not a pretraining job")
    checkpoint = service.store.checkpoint(source.id, body.checkpoint)
    if not checkpoint.available:
        kept = [c.name for c in service.store.list_checkpoints(source.id) if c.available]
        raise HTTPException(
            409, f"checkpoint {checkpoint.name} of job {source.id} was pruned by Ray Train "
                 f"(keep_checkpoints); available: {', '.join(kept) or 'none'}",
        )  # fmt: skip
    settings = validate_model(LinearProbeSettings, body.config, ("body", "config"))
    config = validate_model(
        LinearProbeConfig,
        {**settings.model_dump(), "dataset": body.dataset or source.config["dataset"],
         "source_job_id": source.id, "checkpoint": checkpoint.name,
         "checkpoint_path": checkpoint.path},
        ("body",),
    )  # fmt: skip
    job = record_and_submit(
        service, response, background, body, kind="linear_probe",
        name=body.name or f"linear probe of {source.name} at {checkpoint.name}"[:200],
        config=config,
        resources=body.resources, max_attempts=None, idempotency_key=idempotency_key,
        location="/v1/evaluations", config_loc=(), source_job_id=source.id,
    )  # fmt: skip
    return evaluation_out(job, service)


@router.get("/evaluations/{evaluation_id}", response_model=EvaluationOut, responses={404: PROBLEM})
def get_evaluation(evaluation_id: str, service: ServiceDep) -> EvaluationOut:
    """Its status and, once done, ``result``: top-1, top-5, the mode, epochs, image counts."""
    job = service.store.get_job(evaluation_id)
    if job.kind != "linear_probe":
        raise NotFound(f"no evaluation {evaluation_id!r} ({evaluation_id} is a {job.kind} job)")
    return evaluation_out(job, service)


@router.get("/jobs/{job_id}/evaluations", response_model=list[EvaluationOut],
            responses={404: PROBLEM})  # fmt: skip
def job_evaluations(job_id: str, service: ServiceDep) -> list[EvaluationOut]:
    """Every evaluation of the job's checkpoints, newest first."""
    service.store.get_job(job_id)
    jobs, _ = service.store.list_jobs(kind="linear_probe", source_job_id=job_id, limit=500)
    return [evaluation_out(job, service) for job in jobs]
