"""Where a training loop sends its metrics and checkpoints, and where it resumes from.

Every kind's worker entry (``trainer.contracts.kinds``: the SimCLR loop, the linear probe, the
generative tasks) is written once against ``TrainingSession``; ``LocalSession`` runs it in one
process with checkpoints in a directory, ``trainer.ray_session.RaySession`` as one rank of a Ray
Train worker group.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from trainer.checkpoint import (
    checkpoint_name,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_atomic,
)

if TYPE_CHECKING:
    from trainer.data.sources import BatchSource


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

    def report_result(self, result: dict[str, Any]) -> None:
        """Record the job's result (an evaluation's scores); rank 0 only, once."""

    def data_stream(self) -> BatchSource | None:
        """This rank's part of a stream of batches started for the run (Ray Data's, for
        ``loader: ray_data``), or None: the loop reads its config's dataset itself."""

    def close(self) -> None:
        """Deliver what is pending; the run is over. Never raises."""


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

    def report_result(self, result: dict[str, Any]) -> None:
        """``<output_dir>/result.json``, written whole or not at all."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        temporary = self.output_dir / "result.json.tmp"
        temporary.write_text(json.dumps(result) + "\n")
        temporary.replace(self.output_dir / "result.json")

    def data_stream(self) -> None:
        return None

    def close(self) -> None:
        pass  # every report is written when made
