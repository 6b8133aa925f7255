"""The service's settings: environment variables with the prefix ``SIMCLR_`` (pydantic-settings).

The embedded default needs none of them: a SQLite database and job storage under ``./.simclr/``,
a local Ray head started and stopped by the service, the API on 127.0.0.1:8000 without a token,
data sets read from under ``./data``.

The state directory (the internal secret, the SQLite database, the job storage) can never be a
data root or lie under one: a job's data paths are what a user chooses, and a path that
reaches the secret would let a user read it back through an error message or forge reports.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url

from trainer.data.confine import is_under, real_roots

STATE_DIR = Path(".simclr")


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, where the system has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SIMCLR_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    workers: int = Field(
        default_factory=lambda: min(4, usable_cpus()),
        ge=1,
        le=64,
        description="API processes (one reconciles, elected by a lock in the database); default "
        "one per CPU this process may use, at most 4",
    )
    access_log: bool = Field(
        default=False,
        description="log a line per request (uvicorn's access log); request latencies by route "
        "are always on /metrics",
    )
    request_threads: int = Field(
        default=8,
        ge=1,
        le=256,
        description="threads per API process that run requests (each with a database "
        "connection); more threads than cores contend for Python's lock and raise the p99",
    )
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
        default_factory=lambda: [str(Path.cwd() / "data")],
        description="comma-separated directories that dataset roots must lie under; none may "
        "hold the state directory, the storage or the SQLite database",
    )
    api_token: str | None = Field(
        default=None, description="when set, every endpoint but /healthz requires it"
    )
    insecure: bool = Field(
        default=False,
        description="listen beyond loopback without SIMCLR_API_TOKEN (anyone who reaches the "
        "port can run jobs): refused unless this is set",
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

    @model_validator(mode="after")
    def _a_database_processes_share(self) -> Settings:
        url = make_url(self.database_url)
        if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
            raise ValueError(
                "an in-memory SQLite database lives in one connection of one process: set "
                "SIMCLR_DATABASE_URL to a database file (sqlite:///path) or PostgreSQL"
            )
        return self

    @model_validator(mode="after")
    def _no_open_api_beyond_loopback(self) -> Settings:
        if not self.api_token and not self.insecure and not is_loopback(self.host):
            raise ValueError(
                f"refusing to listen on {self.host} without SIMCLR_API_TOKEN: anyone who reaches "
                "the port could run jobs and read their data. Set SIMCLR_API_TOKEN, listen on "
                "127.0.0.1, or pass --insecure (SIMCLR_INSECURE=1) to accept that"
            )
        return self

    @model_validator(mode="after")
    def _data_roots_apart_from_state(self) -> Settings:
        protected = [self.state_dir, self.sqlite_dir]
        if "://" not in self.storage_path:
            protected.append(Path(self.storage_path))
        roots = real_roots(self.data_roots)
        for path in filter(None, protected):
            path = Path(os.path.realpath(path))
            for root in roots:
                if is_under(path, (root,)):
                    raise ValueError(
                        f"data root {root} holds the service's state at {path} (its secret, "
                        "database or job storage): set SIMCLR_DATA_ROOTS to the directories that "
                        "hold data sets only"
                    )
        return self

    @property
    def resolved_data_roots(self) -> list[str]:
        """The data roots with every symlink resolved: what workers check each path against."""
        return [str(root) for root in real_roots(self.data_roots)]

    @property
    def sqlite_dir(self) -> Path | None:
        url = make_url(self.database_url)
        if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
            return None
        return Path(url.database).parent

    @property
    def callback_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"

    @property
    def storage_root(self) -> str:
        """``storage_path`` as every node sees it: a URI as given, a path made absolute."""
        storage = self.storage_path
        return storage.rstrip("/") if "://" in storage else str(Path(storage).resolve())

    def run_dir(self, job_id: str) -> str:
        """Where Ray Train keeps the job's run: its checkpoints and ``metrics.jsonl``."""
        return f"{self.storage_root}/{job_id}"

    @property
    def state_dir(self) -> Path:
        """Where the embedded default keeps its Ray head's log and the internal token."""
        return Path(self.storage_path).parent
