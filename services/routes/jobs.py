"""``/v1/jobs``: submit, list, inspect, cancel and retry jobs; their metrics, checkpoints, logs and
artifacts."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, BackgroundTasks, Depends, Header, Path, Query, Response
from fastapi.responses import FileResponse, JSONResponse

from services.artifacts import ARTIFACT_TYPES, media_type
from services.auth import require_api_token
from services.export import exported, model_card
from services.kinds import ConfigError, validate_config
from services.problems import PROBLEM
from services.routes.deps import ServiceDep
from services.schemas import (
    MAX_INT32,
    MAX_INT64,
    ArtifactOut,
    AttemptOut,
    CheckpointOut,
    JobCreate,
    JobOut,
    JobPage,
    JobStatus,
    LogsOut,
    MetricOut,
)
from services.series import downsample
from services.store.store import NotFound
from services.submission import earlier_submission, scheduled_evaluations, submit
from trainer.contracts.states import FINISHED_ATTEMPT_STATES

router = APIRouter(prefix="/v1", tags=["jobs"], dependencies=[Depends(require_api_token)])

LOG_PAGE_CHARS = 1 << 20
ExportFormat = Literal["safetensors", "torchvision", "torchscript", "card"]
EXPORT_FORMATS = ("safetensors (the config in its metadata), torchvision (ResNets: a state dict "
                  "for the torchvision constructor), torchscript, or card (the model card, JSON)")  # fmt: skip


@router.post(
    "/jobs",
    status_code=202,
    response_model=JobOut,
    responses={
        200: {"description": "the job an earlier request with this Idempotency-Key created"},
        409: PROBLEM,
        422: PROBLEM,
    },
)
def create_job(
    body: JobCreate,
    response: Response,
    background: BackgroundTasks,
    service: ServiceDep,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> JobOut:
    """Validate the config against its kind (and each evaluation it asks for), write the job,
    then submit it to Ray; or answer with the job an earlier request with this key wrote."""
    job, created = earlier_submission(service, body, "/v1/jobs", idempotency_key), False
    if job is None:
        config = validate_config(body.kind, body.config)
        job, created = submit(
            service, background, body, "/v1/jobs", kind=body.kind, config=config,
            config_loc=("config",), resources=body.resources, name=body.name,
            max_attempts=body.max_attempts, idempotency_key=idempotency_key,
            evaluate=scheduled_evaluations(service, body, config),
        )  # fmt: skip
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    if not created:
        response.status_code = 200
    return JobOut.of(job, service.dispatcher.dashboard_url)


@router.get("/jobs", response_model=JobPage)
def list_jobs(
    service: ServiceDep,
    status: JobStatus | None = None,
    kind: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> JobPage:
    """Newest first, ``limit`` per page; ``next_cursor`` fetches the next page."""
    try:
        jobs, next_cursor = service.store.list_jobs(
            status=status, kind=kind, limit=limit, cursor=cursor
        )
    except ValueError as error:
        raise ConfigError(
            [{"loc": ("query", "cursor"), "msg": str(error), "type": "cursor"}]
        ) from None
    progress = service.store.progress(jobs)
    url = service.dispatcher.dashboard_url
    return JobPage(
        items=[JobOut.of(job, url, progress[job.id]) for job in jobs], next_cursor=next_cursor
    )


@router.get("/jobs/{job_id}", response_model=JobOut, responses={404: PROBLEM})
def get_job(job_id: str, service: ServiceDep) -> JobOut:
    job = service.store.get_job(job_id)
    progress = service.store.progress([job])[job.id]
    return JobOut.of(job, service.dispatcher.dashboard_url, progress)


@router.post("/jobs/{job_id}/cancel", status_code=202, response_model=JobOut,
             responses={404: PROBLEM, 409: PROBLEM})  # fmt: skip
def cancel_job(job_id: str, service: ServiceDep, background: BackgroundTasks) -> JobOut:
    """Stop the job's Ray job (its driver and its workers exit); the job ends ``cancelled``."""
    job = service.store.request_cancel(job_id)
    if job.status == "cancelling":
        service.after_response(
            background, service.reconciler.follow, job.attempts[-1].submission_id
        )
    return JobOut.of(job, service.dispatcher.dashboard_url)


@router.post("/jobs/{job_id}/retry", status_code=202, response_model=JobOut,
             responses={404: PROBLEM, 409: PROBLEM})  # fmt: skip
def retry_job(job_id: str, service: ServiceDep, background: BackgroundTasks) -> JobOut:
    """Run a failed or cancelled job again as a new attempt, resuming from its latest checkpoint."""
    job = service.store.retry(job_id)
    service.after_response(background, service.reconciler.submit, job.attempts[-1].submission_id)
    return JobOut.of(job, service.dispatcher.dashboard_url)


@router.get("/jobs/{job_id}/metrics", response_model=list[MetricOut], responses={404: PROBLEM})
def job_metrics(
    job_id: str,
    service: ServiceDep,
    name: Annotated[str | None, Query(max_length=64)] = None,
    after_step: Annotated[int | None, Query(ge=-1, le=MAX_INT32)] = None,
    max_points: Annotated[
        int | None,
        Query(
            ge=8,
            le=100_000,
            description="at most this many points of each metric, chosen "
            "to keep the curve's shape (each bucket of steps keeps its lowest and highest)",
        ),
    ] = None,
) -> list[MetricOut]:
    """The job's metric history (``step``, ``epoch``, ``name``, ``value``), by step. A value is a
    number, or the string ``"NaN"``, ``"Infinity"`` or ``"-Infinity"`` when it is not finite."""
    points = service.store.list_metrics(job_id, name, after_step)
    if max_points is not None:
        by_name: dict[str, list] = {}
        for point in points:
            by_name.setdefault(point.name, []).append(point)
        points = sorted(
            (kept for series in by_name.values() for kept in downsample(series, max_points)),
            key=lambda point: (point.step, point.name),
        )
    return [MetricOut.model_validate(point) for point in points]


@router.get("/jobs/{job_id}/checkpoints", response_model=list[CheckpointOut],
            responses={404: PROBLEM})  # fmt: skip
def job_checkpoints(job_id: str, service: ServiceDep) -> list[CheckpointOut]:
    """Every checkpoint reported, oldest first; ``available`` is false once Ray Train pruned it."""
    return [CheckpointOut.model_validate(c) for c in service.store.list_checkpoints(job_id)]


@router.get("/jobs/{job_id}/checkpoints/{name}/export",
            responses={200: {"content": {"application/octet-stream": {}, "application/json": {}},
                             "description": "the encoder's file, or its model card (JSON)"},
                       404: PROBLEM, 409: PROBLEM, 422: PROBLEM})  # fmt: skip
def export_checkpoint(
    job_id: str,
    name: Annotated[str, Path(max_length=100)],
    service: ServiceDep,
    format: Annotated[ExportFormat, Query(description=EXPORT_FORMATS)] = "safetensors",
) -> Response:
    """A checkpoint's encoder (``name`` or ``latest``) without the projection head, in a format
    loaded without this project: ``safetensors``, ``torchvision`` (a ResNet's state dict for its
    torchvision constructor), ``torchscript``; ``card``: the model card (the job, the
    checkpoint, the config and data, every evaluation of that checkpoint)."""
    if format == "card":
        return JSONResponse(model_card(service.store, job_id, name))
    file = exported(service.settings, service.store, job_id, name, format)
    checkpoint = file.parent.name
    return FileResponse(file, media_type="application/octet-stream",
                        filename=f"{job_id}-{checkpoint}-encoder{file.suffix}")  # fmt: skip


@router.get("/jobs/{job_id}/logs", response_model=LogsOut, responses={404: PROBLEM})
def job_logs(
    job_id: str,
    service: ServiceDep,
    attempt: Annotated[
        int | None, Query(ge=1, le=MAX_INT32, description="default: the latest")
    ] = None,
    offset: Annotated[int, Query(ge=0, le=MAX_INT64)] = 0,
    limit: Annotated[int, Query(ge=1, le=LOG_PAGE_CHARS)] = LOG_PAGE_CHARS,
) -> LogsOut:
    """The Ray job's log of one attempt, as stored by the service: at most ``limit`` characters
    from character ``offset``. The service keeps the newest 4 Mi characters of each attempt's log;
    ``offset`` in the answer is later than the one asked for when older text was dropped."""
    try:
        chosen, start, text = service.store.read_log(job_id, attempt, offset, limit)
    except NotFound:
        raise
    except LookupError as error:  # the job has no such attempt
        raise ConfigError(
            [{"loc": ("query", "attempt"), "type": "attempt", "msg": str(error)}]
        ) from None
    return LogsOut(
        job_id=job_id, attempt=chosen.number, offset=start, next_offset=start + len(text),
        text=text, complete=chosen.state in FINISHED_ATTEMPT_STATES and
        start + len(text) >= chosen.log_size,
    )  # fmt: skip


@router.get("/jobs/{job_id}/attempts", response_model=list[AttemptOut], responses={404: PROBLEM})
def job_attempts(job_id: str, service: ServiceDep) -> list[AttemptOut]:
    return JobOut.of(service.store.get_job(job_id), service.dispatcher.dashboard_url).attempts


@router.get("/jobs/{job_id}/artifacts", response_model=list[ArtifactOut], responses={404: PROBLEM})
def job_artifacts(job_id: str, service: ServiceDep) -> list[ArtifactOut]:
    """Plots and sample grids the job's workers produced."""
    return [
        ArtifactOut(
            name=name,
            content_type=content_type,
            size=size,
            created_at=created,
            url=f"/v1/jobs/{job_id}/artifacts/{name}",
        )
        for name, content_type, size, created in service.store.list_artifacts(job_id)
    ]


@router.get("/jobs/{job_id}/artifacts/{name}", response_class=Response, responses={404: PROBLEM})
def job_artifact(job_id: str, name: str, service: ServiceDep) -> Response:
    """The artifact's bytes: pictures inline, text as a download; never sniffed, never run."""
    artifact = service.store.artifact(job_id, name)
    kind = media_type(artifact.content_type)
    if kind not in ARTIFACT_TYPES:  # stored by an older release, before the allow-list
        kind = "application/octet-stream"
    disposition = "inline" if kind.startswith("image/") else "attachment"
    headers = {
        "X-Content-Type-Options": "nosniff",
        "Content-Disposition": f'{disposition}; filename="{name}"',
        "Content-Security-Policy": "default-src 'none'; sandbox",
    }
    return Response(artifact.data, media_type=kind, headers=headers)
