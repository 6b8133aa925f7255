"""Where a training loop sends its metrics and checkpoints, and where it resumes from.

The SimCLR loop (``trainer.loop``) is written once against ``TrainingSession``; ``LocalSession``
runs it in one process with checkpoints in a directory, ``trainer.ray_session.RaySession`` runs it
as one rank of a Ray Train worker group.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from trainer.checkpoint import (
    checkpoint_name,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_atomic,
)


class TrainingSession(Protocol):
    rank: int
    world_size: int
    device: torch.device

    def restore(self) -> dict[str, Any] | None:
        """The newest checkpoint's state, or None for a fresh run."""

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Move ``model`` to the device (keeping its memory format) and wrap it for data
        parallelism where there is any."""

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None = None) -> None:
        """Record ``metrics``; when ``state`` is given (rank 0 only), also persist it as a checkpoint.
        Every rank calls this the same number of times."""

    def save_artifact(self, name: str, data: bytes, content_type: str) -> None:
        """Keep a file for people to look at (a plot, a sample grid); rank 0 only."""


class LocalSession:
    """One process: checkpoints in ``<output_dir>/checkpoints``, metrics in ``metrics.jsonl``,
    artifacts beside them."""

    rank = 0
    world_size = 1

    def __init__(self, output_dir: str | Path, device: str | torch.device = "cpu", keep: int = 2):
        self.output_dir = Path(output_dir)
        self.checkpoints = self.output_dir / "checkpoints"
        self.device = torch.device(device)
        self.keep = keep
        self.last_checkpoint: Path | None = latest_checkpoint(self.checkpoints)

    def restore(self) -> dict[str, Any] | None:
        if self.last_checkpoint is None:
            return None
        return load_checkpoint(self.last_checkpoint, map_location=self.device)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None = None) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with (self.output_dir / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(metrics) + "\n")
        if state is not None:
            self.last_checkpoint = save_atomic(
                state, self.checkpoints / checkpoint_name(state["step"])
            )
            prune_checkpoints(self.checkpoints, self.keep)

    def save_artifact(self, name: str, data: bytes, content_type: str) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / name).write_bytes(data)
