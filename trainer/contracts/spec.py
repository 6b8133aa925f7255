"""The typed spec of one training job, shared by the control plane (which writes it) and the job
driver (which runs it). pydantic only: never torch."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, SerializeAsAny, field_validator, model_validator

from trainer.contracts.config import StrictModel
from trainer.contracts.kinds import KINDS

JOB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class Resources(StrictModel):
    """The Ray Train worker group: ``num_workers`` ranks, each with these resources."""

    num_workers: int = Field(default=1, ge=1, le=4096)
    use_gpu: bool = False
    cpus_per_worker: float = Field(default=1.0, gt=0, le=1024)
    gpus_per_worker: float = Field(default=1.0, ge=0, le=64, description="used only when use_gpu")


class JobSpec(StrictModel):
    """One job: ``job_id`` names the Ray Train run, so relaunching a job resumes it from its
    latest checkpoint under ``storage_path/<job_id>``."""

    job_id: str
    kind: str = Field(
        default="simclr", description="a kind of the registry (trainer.contracts.kinds)"
    )
    config: SerializeAsAny[BaseModel] = Field(description="validated by the kind's config model")
    resources: Resources = Field(default_factory=Resources)
    storage_path: str = Field(description="shared storage every node can reach (a path or a URI)")
    max_failures: int = Field(default=3, ge=-1, description="worker-group restarts; -1: unlimited")
    data_roots: list[str] | None = Field(
        default=None,
        description="the resolved directories the job may read data from: every dataset folder, "
        "class list, shard and image file must resolve under one of them (the service's "
        "SIMCLR_DATA_ROOTS); None: unconfined, for runs started by hand",
    )

    @model_validator(mode="before")
    @classmethod
    def _config_of_its_kind(cls, data: Any) -> Any:
        """Validate ``config`` with the model of ``kind`` (errors then name that model's fields)."""
        name = data.get("kind", "simclr") if isinstance(data, dict) else None
        kind = isinstance(name, str) and KINDS.get(name)
        if not kind:
            return data
        config = data.get("config")
        if isinstance(config, dict):
            return {**data, "config": kind.config.model_validate(config)}
        if isinstance(config, BaseModel) and not isinstance(config, kind.config):
            raise ValueError(f"config is a {type(config).__name__}; kind {kind.name!r} takes a "
                             f"{kind.config.__name__}")  # fmt: skip
        return data

    @field_validator("kind")
    @classmethod
    def _registered(cls, value: str) -> str:
        if value not in KINDS:
            raise ValueError(f"no job kind {value!r}; the kinds are {', '.join(KINDS)}")
        return value

    @field_validator("job_id")
    @classmethod
    def _safe_job_id(cls, value: str) -> str:
        if not JOB_ID_PATTERN.match(value):
            raise ValueError(
                "job_id must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
            )
        return value

    @classmethod
    def from_file(cls, path: str | Path) -> JobSpec:
        path = Path(path)
        try:
            return cls.model_validate_json(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"job spec not found: {path}") from None
