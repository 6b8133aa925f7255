"""Atomic checkpoints, and the one way every state file is read back.

A checkpoint is one ``torch.save`` file written to a temporary name in the target directory, flushed
to disk, then renamed over the final name: a crash leaves either the previous checkpoint or the new
one, never half of one. Files are named ``step-<8 digits>.pt`` (a Ray Train run keeps
``step-<8 digits>/state.pt``) so that the newest sorts last.

Every checkpoint (and every other state file a worker reads back, such as the feature cache of
``trainer.linear_probe``) is read by ``load_checkpoint``: ``torch.load(..., weights_only=True)``, which builds
only tensors, containers and plain Python values plus the few types in ``SAFE_GLOBALS``. A file that
names any other class or function (a pickle that would run code when loaded) is refused with a
``CheckpointError`` before anything in it runs: whoever can write to the storage must not be able to
run code in a worker.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_GLOB = "step-*.pt"
# The state file inside a Ray Train checkpoint directory (``trainer.ray_session`` writes it).
RAY_CHECKPOINT_FILE = "state.pt"


class CheckpointError(ValueError):
    """A state file that is unreadable, not a checkpoint, or holds objects a checkpoint may not hold."""


def _numpy_reconstruct():
    try:  # NumPy 2
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # NumPy 1.26
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


# Everything beyond tensors, containers and plain values that a checkpoint may hold: the one place to
# extend. Only NumPy's legacy RNG state needs any: ``np.random.get_state()`` (a uint32 ndarray), as
# checkpoints written before ``trainer.rng.rng_state`` stored it as plain ints hold it (under either module path
# of ``_reconstruct``: NumPy 1 pickles name ``numpy.core``, NumPy 2 ``numpy._core``). Only the uint32
# dtype can be built, so no array of Python objects loads.
SAFE_GLOBALS: list[Any] = [
    (_numpy_reconstruct(), "numpy._core.multiarray._reconstruct"),
    (_numpy_reconstruct(), "numpy.core.multiarray._reconstruct"),
    np.ndarray,
    np.dtype,
    type(np.dtype(np.uint32)),
]

# What torch's weights-only unpickler names when it refuses a type (names only: letters, digits, dots).
_REFUSED = (
    re.compile(r"GLOBAL ([\w.]{1,200})"),
    re.compile(r"Can only build .* but got <class '([\w.]{1,200})'>"),
)
# ``safe_globals`` changes a process-wide set while it is entered: one load at a time.
_LOAD_LOCK = threading.Lock()


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


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """What a state file written by ``torch.save`` holds, read with ``weights_only=True`` and
    ``SAFE_GLOBALS``. A missing file raises ``FileNotFoundError``; an unreadable one, or one that
    holds any other type (nothing in it is run), a ``CheckpointError`` naming the path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with _LOAD_LOCK, torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:  # the weights-only unpickler refused something
        names = [m.group(1) for pattern in _REFUSED if (m := pattern.search(str(error)))]
        what = (
            f"holds an object of a type a checkpoint may not hold ({names[0][:120]})"
            if names
            else "is corrupt or holds something a checkpoint may not hold"
        )
        raise CheckpointError(f"checkpoint {path} {what}: refused, nothing in it was run") from None
    except Exception as error:  # torch raises many types for a truncated or foreign file
        reason = str(error).splitlines()[0][:200] if str(error) else ""
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a checkpoint: {type(error).__name__}: {reason}"
        ) from None
