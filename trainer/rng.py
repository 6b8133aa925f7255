"""The random streams of a process: saved with every checkpoint, restored on resume (each rank its
own), and forked around draws that must not change training."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and (when present) CUDA generator states of this process."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": _numpy_rng_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def forked_rng(device: torch.device):
    """A context in which random draws leave this process's streams (CPU, and ``device``'s when it
    is a CUDA device) as they were: pictures and evaluations that must not change training."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


def _numpy_rng_state() -> dict[str, Any]:
    """NumPy's global generator state as plain values (``weights_only`` loads them as they are)."""
    name, key, position, has_gauss, gauss = np.random.get_state(legacy=True)
    return {"bit_generator": str(name), "key": key.tolist(), "pos": int(position),
            "has_gauss": int(has_gauss), "gauss": float(gauss)}  # fmt: skip


def _set_numpy_rng_state(state: dict[str, Any] | tuple) -> None:
    """Restore ``_numpy_rng_state``, or the ``np.random.get_state()`` tuple of older checkpoints."""
    if isinstance(state, dict):
        key = np.asarray(state["key"], dtype=np.uint32)
        state = (state["bit_generator"], key, state["pos"], state["has_gauss"], state["gauss"])
    np.random.set_state(state)


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore ``rng_state`` (the generator states are CPU tensors, wherever the checkpoint was
    mapped)."""
    random.setstate(state["python"])
    _set_numpy_rng_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
