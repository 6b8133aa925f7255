"""The REST API's request and response bodies."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from services.kinds import TRAINING_KINDS
from trainer.spec import Resources

JobKind = Literal[TRAINING_KINDS]  # type: ignore[valid-type]
# SQLite returns naive datetimes; every stored time is UTC.
UtcDatetime = Annotated[
    datetime, AfterValidator(lambda value: value if value.tzinfo else value.replace(tzinfo=UTC))
]
JobStatus = Literal["queued", "running", "cancelling", "succeeded", "failed", "cancelled"]


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: JobKind
    name: str | None = Field(default=None, max_length=200)
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="validated by the kind's config model; unset fields take the paper's defaults",
    )
    resources: Resources = Field(default_factory=Resources)
    max_attempts: int | None = Field(
        default=None, ge=1, le=20, description="submissions of a job whose Ray job was lost"
    )


class AttemptOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    number: int
    submission_id: str
    state: str
    message: str | None
    dashboard_url: str | None = None
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None


class JobOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    kind: str
    name: str
    status: JobStatus
    config: dict[str, Any]
    resources: dict[str, Any]
    attempts: list[AttemptOut]
    max_attempts: int
    error: str | None
    result: dict[str, Any] | None = None
    source_job_id: str | None = None
    created_at: UtcDatetime
    updated_at: UtcDatetime


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None = Field(
        description="pass as ?cursor= for the next page; null on the last"
    )


class EvaluationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    job_id: str = Field(description="the pretraining job whose checkpoint is scored")
    checkpoint: str = Field(default="latest", description="'latest' or a checkpoint's name")
    dataset: dict[str, Any] | None = Field(
        default=None, description="a dataset config; default: the pretraining job's"
    )
    config: dict[str, Any] = Field(
        default_factory=dict, description="mode, epochs, batch_size, base_lr, seed (paper defaults)"
    )
    resources: Resources = Field(default_factory=Resources)
    name: str | None = Field(default=None, max_length=200)


class ProbeResultOut(BaseModel):
    top1: float
    top5: float
    mode: str
    epochs: int
    train_images: int
    test_images: int
    seconds: float | None = None


class EvaluationOut(BaseModel):
    id: str
    job_id: str
    checkpoint: str
    status: JobStatus
    mode: str
    dataset: dict[str, Any]
    config: dict[str, Any]
    resources: dict[str, Any]
    attempts: list[AttemptOut]
    result: ProbeResultOut | None
    error: str | None
    created_at: UtcDatetime
    updated_at: UtcDatetime


class MetricOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    step: int
    epoch: int
    name: str
    value: float


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
    name: str
    content_type: str
    size: int
    created_at: UtcDatetime
    url: str


class LogsOut(BaseModel):
    job_id: str
    attempt: int
    offset: int = Field(description="offset of the text's first character in the attempt's log")
    next_offset: int
    text: str
    complete: bool = Field(description="the attempt has ended: its log will not grow")


# -- reported by workers (internal endpoints) -------------------------------------------------


class MetricPointIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    step: int = Field(ge=0)
    epoch: int = Field(ge=0)
    name: str = Field(min_length=1, max_length=64)
    value: float


class MetricsIn(BaseModel):
    points: list[MetricPointIn] = Field(max_length=10_000)


class CheckpointIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    step: int = Field(ge=0)
    epoch: int = Field(ge=0)
    path: str
    metrics: dict[str, Any] = Field(default_factory=dict)
    keep: int | None = Field(default=None, ge=1)
