"""The service's settings: environment variables with the prefix ``SIMCLR_`` (pydantic-settings).

The embedded default needs none of them: a SQLite database and job storage under ``./.simclr/``,
a local Ray head started and stopped by the service, the API on 127.0.0.1:8000 without a token.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

STATE_DIR = Path(".simclr")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SIMCLR_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    database_url: str = Field(
        default=f"sqlite:///{STATE_DIR / 'simclr.db'}",
        description="SQLAlchemy URL; postgresql+psycopg://user@host/db in production",
    )
    ray_address: str | None = Field(
        default=None,
        description="dashboard address of an existing cluster (http://host:8265); unset: the "
        "service starts a local head and stops it on shutdown",
    )
    dashboard_port: int = 8265
    storage_path: str = Field(
        default=str(STATE_DIR / "runs"),
        description="shared storage of the Ray Train runs (checkpoints); every node must reach it",
    )
    data_roots: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [str(Path.cwd())],
        description="comma-separated directories that dataset roots must lie under",
    )
    api_token: str | None = Field(
        default=None, description="when set, every endpoint but health requires it"
    )
    internal_token: str | None = Field(
        default=None,
        description="the token workers use to report metrics and checkpoints; unset: one is made "
        "once and kept in the state directory, so running jobs' reports survive a restart",
    )
    public_url: str | None = Field(
        default=None,
        description="the URL workers reach the service at; default http://<host>:<port>",
    )
    driver_python: str = Field(
        default=sys.executable, description="the Python that runs the trainer driver on the cluster"
    )
    max_attempts: int = Field(
        default=3, ge=1, description="submissions of a job whose Ray job was lost"
    )
    reconcile_interval_s: float = Field(default=2.0, gt=0)
    submit_timeout_s: float = Field(default=30.0, gt=0)
    check_capacity: bool = Field(
        default=True,
        description="reject jobs whose workers the cluster can never place (off for autoscaling clusters)",
    )

    @field_validator("data_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @property
    def callback_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"

    @property
    def state_dir(self) -> Path:
        """Where the embedded default keeps its Ray head's log and the internal token."""
        return Path(self.storage_path).parent
