"""Atomic checkpoints and the random state they carry.

A checkpoint is one ``torch.save`` file written to a temporary name in the target directory, flushed
to disk, then renamed over the final name: a crash leaves either the previous checkpoint or the new
one, never half of one. Files are named ``step-<8 digits>.pt`` so that the newest sorts last.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_GLOB = "step-*.pt"
# The state file inside a Ray Train checkpoint directory (``trainer.ray_session`` writes it).
RAY_CHECKPOINT_FILE = "state.pt"


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}.pt"


def save_atomic(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` so that readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def latest_step(run_dir: str | Path) -> int:
    """The step of the newest complete Ray Train checkpoint (``step-<n>/state.pt``) under a run's
    directory on local or mounted storage; 0 when there is none."""
    steps = [
        int(path.parent.name.removeprefix("step-"))
        for path in Path(run_dir).glob(f"step-*/{RAY_CHECKPOINT_FILE}")
        if path.parent.name.removeprefix("step-").isdigit()
    ]
    return max(steps, default=0)


def latest_checkpoint(directory: str | Path) -> Path | None:
    paths = sorted(Path(directory).glob(CHECKPOINT_GLOB))
    return paths[-1] if paths else None


def prune_checkpoints(directory: str | Path, keep: int) -> None:
    """Delete all but the ``keep`` newest checkpoints in ``directory``."""
    for path in sorted(Path(directory).glob(CHECKPOINT_GLOB))[:-keep]:
        path.unlink(missing_ok=True)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint; a missing or unreadable file is an error naming the path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:
        raise ValueError(f"checkpoint {path} is corrupt or not a checkpoint: {error}") from error


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and (when present) CUDA generator states of this process."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def forked_rng(device: torch.device):
    """A context in which random draws leave this process's streams (CPU, and ``device``'s when it
    is a CUDA device) as they were: pictures and evaluations that must not change training."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
