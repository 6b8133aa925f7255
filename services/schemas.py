"""The REST API's request and response bodies."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    WithJsonSchema,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from trainer.contracts.config import DatasetConfig, LinearProbeConfig
from trainer.contracts.kinds import KINDS, protocols
from trainer.contracts.spec import Resources
from trainer.contracts.states import JOB_STATUSES


def submittable_kinds() -> list[str]:
    """What ``POST /v1/jobs`` runs: every registered kind but those that read another job's
    checkpoint (evaluations), which come through ``/v1/evaluations`` that resolves it."""
    return [name for name, kind in KINDS.items() if not kind.reads_checkpoint]


def one_of(value: str, allowed: Sequence[str]) -> str:
    """``value``, or refused as pydantic refuses a value outside a ``Literal`` (the error clients
    know): the registry's names are known only at run time."""
    if value not in allowed:
        quoted = [repr(name) for name in allowed]
        expected = " or ".join([", ".join(quoted[:-1]), quoted[-1]] if len(quoted) > 1 else quoted)
        raise PydanticCustomError("literal_error", "Input should be {expected}",
                                  {"expected": expected})  # fmt: skip
    return value


def submittable(kind: str) -> str:
    return one_of(kind, submittable_kinds())


JobKind = Annotated[
    str,
    AfterValidator(submittable),
    # the registry as it is when the OpenAPI document is made
    Field(json_schema_extra=lambda schema: schema.update(enum=submittable_kinds())),
]


def known_protocol(protocol: str) -> str:
    return one_of(protocol, protocols())


Protocol = Annotated[
    str,
    AfterValidator(known_protocol),
    Field(json_schema_extra=lambda schema: schema.update(enum=list(protocols()))),
]
# SQLite returns naive datetimes; every stored time is UTC.
UtcDatetime = Annotated[
    datetime, AfterValidator(lambda value: value if value.tzinfo else value.replace(tzinfo=UTC))
]
JobStatus = Literal[JOB_STATUSES]  # type: ignore[valid-type]
# A name or id a client sends: no NUL character (PostgreSQL text cannot hold it).
Text = Annotated[str, Field(pattern=r"^[^\x00]*$")]
# Bounds of stored numbers: the database's INTEGER columns, and byte sizes.
MAX_INT32 = 2**31 - 1
MAX_INT64 = 2**63 - 1
# What a worker may name a metric, and the directory names Ray Train's checkpoints get
# (trainer.ray_session: ``step-<8+ digits>``).
METRIC_NAME = r"^[A-Za-z0-9_./-]{1,64}$"
CHECKPOINT_NAME = r"^step-[0-9]{8,10}$"


def checkpoint_step(name: str) -> int | None:
    """The step in a checkpoint's name (``step-<digits>``); None for another name."""
    digits = name.removeprefix("step-")
    return int(digits) if digits.isdigit() else None


class AttemptOut(BaseModel):
    model_config = ConfigDict(from_attributes=True, allow_inf_nan=False)

    number: int = Field(ge=1, le=MAX_INT32)
    submission_id: str
    state: str
    message: str | None
    dashboard_url: str | None = None
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None


class BestScore(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)

    top1: float
    protocol: str
    dataset: str | None = Field(description="the data set the evaluation scored on")
    checkpoint: str | None


class ProgressOut(BaseModel):
    """How far a job is, from what its workers reported: for a jobs table."""

    model_config = ConfigDict(allow_inf_nan=False)

    step: int | None = Field(default=None, description="the newest step its loss was reported at")
    total_steps: int | None = Field(default=None, description="the step the run ends at")
    loss: float | None = Field(
        default=None, description="the newest training loss; null when it is not finite"
    )
    eta_seconds: float | None = Field(
        default=None,
        description="a running job's time left at its pace over the last tenth of its steps",
    )
    best: BestScore | None = Field(
        default=None, description="the evaluation of its checkpoints with the highest top-1"
    )

    @classmethod
    def of(cls, reported: dict[str, Any]) -> ProgressOut:
        """From ``Store.progress``'s entry for a job. A reported ``total_steps`` that is no step a
        worker may report (1 to 2^31 - 1) says nothing: beyond it the time left would overflow,
        below it a run would end before it started."""
        step, total, pace = (reported.get(k) for k in ("step", "total_steps", "steps_per_s"))
        total = total if total is not None and 1 <= total <= MAX_INT32 else None
        eta = max(total - step, 0) / pace if step is not None and total and pace else None
        return cls(step=step, total_steps=total, loss=reported.get("loss"), eta_seconds=eta,
                   best=reported.get("best"))  # fmt: skip


class JobOut(BaseModel):
    model_config = ConfigDict(from_attributes=True, allow_inf_nan=False)

    id: str
    kind: str
    name: str
    status: JobStatus
    config: dict[str, Any]
    resources: dict[str, Any]
    attempts: list[AttemptOut]
    max_attempts: int = Field(ge=1, le=MAX_INT32)
    error: str | None
    result: dict[str, Any] | None = None
    source_job_id: str | None = None
    evaluate: list[dict[str, Any]] | None = None
    progress: ProgressOut | None = Field(
        default=None, description="in GET /v1/jobs and GET /v1/jobs/{id}: how far it is"
    )
    created_at: UtcDatetime
    updated_at: UtcDatetime

    @classmethod
    def of(
        cls, job: Any, dashboard_url: str | None, progress: dict[str, Any] | None = None
    ) -> JobOut:
        """``job`` (a ``JobRecord``) as the API shows it, each attempt linked to its Ray job on
        the dashboard when there is one; ``progress``: its entry of ``Store.progress``."""
        out = cls.model_validate(job)
        if progress is not None:
            out.progress = ProgressOut.of(progress)
        if dashboard_url:
            for attempt in out.attempts:
                attempt.dashboard_url = f"{dashboard_url}/#/jobs/{attempt.submission_id}"
        return out


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None = Field(
        description="pass as ?cursor= for the next page; null on the last"
    )


class EvaluationRequest(BaseModel):
    """What an evaluation scores with: its protocol, data, settings and workers."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    protocol: Protocol = Field(
        default="linear",
        description="linear: a linear classifier on the frozen features (paper App. B.5); knn: "
        "the weighted k-nearest-neighbour classifier (Wu et al. 2018), k 200, temperature 0.1; "
        "finetune: the whole encoder and a linear layer trained on 1 % or 10 % of the labels "
        "(paper App. B.6)",
    )
    dataset: dict[str, Any] | None = Field(
        default=None, description="a dataset config; default: the pretraining job's"
    )
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="the protocol's settings: linear: mode, epochs, batch_size, base_lr, crop_scale, "
        "flip, seed (paper defaults); knn: k, temperature; finetune: label_fraction, label_subset, "
        "epochs, batch_size, base_lr, seed",
    )
    resources: Resources = Field(default_factory=Resources)
    name: Text | None = Field(default=None, max_length=200)


class EvaluationCreate(EvaluationRequest):
    job_id: Text = Field(
        max_length=64, description="the pretraining job whose checkpoint is scored"
    )
    checkpoint: Text = Field(
        default="latest", max_length=100, description="'latest' or a checkpoint's name"
    )


class ScheduledEvaluation(EvaluationRequest):
    """An evaluation a pretraining job asks for when it is submitted: of every checkpoint it
    reports (``every: checkpoint``), or of its last one once it has succeeded (``at: end``)."""

    every: Literal["checkpoint"] | None = None
    at: Literal["end"] | None = None

    @model_validator(mode="after")
    def _when(self) -> ScheduledEvaluation:
        if (self.every is None) == (self.at is None):
            raise ValueError("give one of 'every': 'checkpoint' or 'at': 'end'")
        return self


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    kind: JobKind
    name: Text | None = Field(default=None, max_length=200)
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="validated by the kind's config model; unset fields take the paper's defaults",
    )
    resources: Resources = Field(default_factory=Resources)
    max_attempts: int | None = Field(
        default=None, ge=1, le=20, description="submissions of a job whose Ray job was lost"
    )
    evaluate: list[ScheduledEvaluation] = Field(
        default_factory=list,
        max_length=16,
        description="pretraining kinds: evaluations the service submits, each as its own job, "
        "for every checkpoint the job reports or for its last one when it succeeds; their "
        "scores: GET /v1/jobs/{id}/evaluations",
    )


class EvaluationResultOut(BaseModel):
    """An evaluation's result (reported by its workers): accuracies in percent, the image counts
    and the settings that decide the number (linear: mode and epochs; knn: k and temperature;
    finetune: the fraction of the training images labelled, and epochs; ``train_images`` counts
    the labelled ones)."""

    model_config = ConfigDict(allow_inf_nan=False)

    protocol: str = Field(default="linear", max_length=32)  # results before kNN were all linear
    top1: float = Field(ge=0, le=100)
    top5: float = Field(ge=0, le=100)
    train_images: int = Field(ge=0, le=10**12)
    test_images: int = Field(ge=0, le=10**12)
    seconds: float | None = Field(default=None, ge=0, le=10**9)
    mode: str | None = Field(default=None, max_length=32)
    epochs: int | None = Field(default=None, ge=0, le=100_000)
    k: int | None = Field(default=None, ge=1, le=10_000)
    label_fraction: float | None = Field(default=None, gt=0, le=1)
    temperature: float | None = Field(default=None, gt=0, le=100)

    @model_serializer(mode="wrap")
    def _settings_of_its_protocol(self, handler: SerializerFunctionWrapHandler):
        # no return annotation: OpenAPI then documents the fields, not a free-form object
        """Only the fields that were given: a linear result has no k, a kNN result no epochs."""
        return {name: value for name, value in handler(self).items() if value is not None}


class EvaluationOut(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)

    id: str
    job_id: str
    checkpoint: str
    step: int | None = Field(description="the checkpoint's step")
    status: JobStatus
    protocol: str
    mode: str | None = Field(description="linear: fast or augmented; None for other protocols")
    dataset: dict[str, Any]
    config: dict[str, Any]
    resources: dict[str, Any]
    attempts: list[AttemptOut]
    result: EvaluationResultOut | None
    error: str | None
    created_at: UtcDatetime
    updated_at: UtcDatetime

    @classmethod
    def of(cls, job: Any, dashboard_url: str | None) -> EvaluationOut:
        """An evaluation job as an evaluation. Its config as stored, not validated again: a row
        an older release wrote may break today's bounds."""
        stored, kind = job.config, KINDS[job.kind]
        settings = {name: stored[name] for name in kind.settings.model_fields if name in stored}
        mode = None
        if kind.config is LinearProbeConfig:
            dataset = DatasetConfig.model_construct(**stored["dataset"])
            mode = LinearProbeConfig.model_construct(**{**stored, "dataset": dataset}).resolved_mode
        out = JobOut.of(job, dashboard_url)
        return cls(
            id=job.id, job_id=stored["source_job_id"], checkpoint=stored["checkpoint"],
            step=checkpoint_step(stored["checkpoint"]), status=out.status, protocol=kind.protocol, mode=mode, dataset=stored["dataset"],
            config=settings, resources=job.resources, attempts=out.attempts, result=job.result,
            error=job.error, created_at=out.created_at, updated_at=out.updated_at,
        )  # fmt: skip


class MetricOut(BaseModel):
    """A metric point; a non-finite value is written as ``"NaN"``, ``"Infinity"`` or
    ``"-Infinity"`` (JSON has no literal for them)."""

    model_config = ConfigDict(from_attributes=True, ser_json_inf_nan="strings")

    step: int
    epoch: int
    name: str
    value: Annotated[
        float,
        BeforeValidator(lambda value: math.nan if value is None else value),  # NULL stores NaN
        WithJsonSchema({"anyOf": [{"type": "number"},
                                  {"type": "string", "enum": ["NaN", "Infinity", "-Infinity"]}]}),
    ]  # fmt: skip


class CheckpointOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    step: int
    epoch: int
    path: str
    metrics: dict[str, Any]
    available: bool
    created_at: UtcDatetime


class ArtifactOut(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)

    name: str
    content_type: str
    size: int = Field(ge=0, le=MAX_INT64)
    created_at: UtcDatetime
    url: str


class KindOut(BaseModel):
    """A kind of job: what ``POST /v1/jobs`` takes as ``kind`` (role ``pretrain`` or ``generate``)
    or ``/v1/evaluations`` as ``protocol`` (role ``evaluate``), with its config's defaults and
    JSON schema."""

    name: str
    role: str
    protocol: str | None = Field(description="an evaluation kind's protocol name")
    defaults: dict[str, Any] = Field(
        description="the config a submission gets for every field it leaves out; a required "
        "field without a default is null (a required sub-config: its own fields' defaults)"
    )
    config_schema: dict[str, Any] = Field(description="the config model's JSON schema")


class LogsOut(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)

    job_id: str
    attempt: int = Field(ge=1, le=MAX_INT32)
    offset: int = Field(
        ge=0, description="offset of the text's first character in the attempt's log"
    )
    next_offset: int = Field(ge=0)
    text: str
    complete: bool = Field(description="the attempt has ended: its log will not grow")


# -- reported by workers (internal endpoints) -------------------------------------------------


class MetricPointIn(BaseModel):
    """A metric point as a worker reports it. ``value`` may be non-finite, sent as the string
    ``"NaN"``, ``"Infinity"`` or ``"-Infinity"`` (or JSON's extension literals)."""

    model_config = ConfigDict(extra="forbid")

    step: int = Field(ge=0, le=MAX_INT32)
    epoch: int = Field(ge=0, le=MAX_INT32)
    name: str = Field(min_length=1, max_length=64, pattern=METRIC_NAME)
    value: float


class MetricsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    points: list[MetricPointIn] = Field(max_length=10_000)


class CheckpointIn(BaseModel):
    """A checkpoint Ray Train wrote for the job: ``name`` is its directory (``step-<digits>``),
    ``path`` must be ``<the job's storage directory>/<name>`` (checked by the route)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=CHECKPOINT_NAME)
    step: int = Field(ge=0, le=MAX_INT32)
    epoch: int = Field(ge=0, le=MAX_INT32)
    path: str = Field(min_length=1, max_length=4096)
    metrics: dict[str, float | int | str | bool | None] = Field(
        default_factory=dict, max_length=256
    )
    keep: int | None = Field(default=None, ge=1, le=1000)
