"""``/v1/evaluations``: score a pretraining job's checkpoint with an evaluation protocol (linear
probe, kNN: each an evaluation kind of the registry), as a job of its own on its own Ray
workers."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Depends, Header, Response

from services.auth import require_api_token
from services.problems import PROBLEM
from services.routes.deps import ServiceDep
from services.schemas import EvaluationCreate, EvaluationOut
from services.scores import evaluations_of
from services.store.store import NotFound
from services.submission import (
    earlier_submission,
    evaluation_config,
    evaluation_name,
    submit,
)
from trainer.contracts.kinds import kinds

router = APIRouter(prefix="/v1", tags=["evaluations"], dependencies=[Depends(require_api_token)])


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
    the data and the settings, write the evaluation, then submit it to Ray; or answer with the
    evaluation an earlier request with this key wrote."""
    job, created = earlier_submission(service, body, "/v1/evaluations", idempotency_key), False
    if job is None:
        source, kind, config = evaluation_config(service, body)
        job, created = submit(
            service, background, body, "/v1/evaluations", kind=kind.name, config=config,
            config_loc=(), resources=body.resources, idempotency_key=idempotency_key,
            name=body.name or evaluation_name(kind, source.name, config.checkpoint),
            source_job_id=source.id,
        )  # fmt: skip
    response.headers["Location"] = f"/v1/evaluations/{job.id}"
    if not created:
        response.status_code = 200
    return EvaluationOut.of(job, service.dispatcher.dashboard_url)


@router.get("/evaluations/{evaluation_id}", response_model=EvaluationOut, responses={404: PROBLEM})
def get_evaluation(evaluation_id: str, service: ServiceDep) -> EvaluationOut:
    """Its status and, once done, ``result``: top-1, top-5, the image counts and the settings that
    decide the number (linear: mode, epochs; knn: k, temperature)."""
    job = service.store.get_job(evaluation_id)
    if job.kind not in kinds("evaluate"):
        raise NotFound(f"no evaluation {evaluation_id!r} ({evaluation_id} is a {job.kind} job)")
    return EvaluationOut.of(job, service.dispatcher.dashboard_url)


@router.get("/jobs/{job_id}/evaluations", response_model=list[EvaluationOut],
            responses={404: PROBLEM})  # fmt: skip
def job_evaluations(job_id: str, service: ServiceDep) -> list[EvaluationOut]:
    """The job's score table: every evaluation of its checkpoints (its checkpoint and step,
    protocol, data set, status and result: top-1, top-5), newest first; ``evaluations.png``
    among its artifacts draws it."""
    service.store.get_job(job_id)
    url = service.dispatcher.dashboard_url
    return [EvaluationOut.of(job, url) for job in evaluations_of(service.store, job_id)]
