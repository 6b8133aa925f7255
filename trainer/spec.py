"""The typed spec of one training job, shared by the control plane (which writes it) and the job
driver (which runs it). pydantic only: never torch."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from trainer.config import LinearProbeConfig, SimCLRConfig, StrictModel
from trainer.generative.config import (
    GENERATIVE_CONFIGS,
    DDPMConfig,
    DiffuseVAEConfig,
    FlowConfig,
    GANConfig,
    VAEConfig,
)

# Each job kind's config model; the kind names the worker loop that runs it (trainer.driver).
CONFIG_MODELS: dict[str, type[BaseModel]] = {
    "simclr": SimCLRConfig,
    "linear_probe": LinearProbeConfig,
    **GENERATIVE_CONFIGS,
}
JobKind = Literal["simclr", "linear_probe", "ddpm", "vae", "gan", "diffusevae", "flow"]
JobConfig = (
    SimCLRConfig
    | LinearProbeConfig
    | DDPMConfig
    | VAEConfig
    | GANConfig
    | DiffuseVAEConfig
    | FlowConfig
)
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
    kind: JobKind = "simclr"
    config: JobConfig
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
        if isinstance(data, dict) and isinstance(data.get("config"), dict):
            model = CONFIG_MODELS.get(data.get("kind", "simclr"))
            if model is not None:
                data = {**data, "config": model.model_validate(data["config"])}
        return data

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
