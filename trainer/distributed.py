"""Helpers for the ranks of a ``torch.distributed`` process group (gloo or NCCL)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from trainer.rng import rng_state, set_rng_state

log = logging.getLogger(__name__)


def is_distributed() -> bool:
    """True when a process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def average_gradients(parameters: Iterable[nn.Parameter]) -> None:
    """Replace every gradient by its mean over the ranks, in one all-reduce of the flattened
    gradients: data parallelism for loops that DDP's hooks cannot serve (several networks with
    their own optimisers, gradients of gradients as in R1). A no-op on one process."""
    if not is_distributed():
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def all_ranks_rng_states() -> list[dict[str, Any]]:
    """Every rank's RNG state, in rank order (all ranks must call this)."""
    if not is_distributed():
        return [rng_state()]
    states: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(states, rng_state())
    return states


def restore_rank_rng(
    saved: list[dict[str, Any]], rank: int, world: int, seed: int, step: int
) -> None:
    """Resume this rank's random streams from ``saved`` (``all_ranks_rng_states`` at the checkpoint);
    when the checkpoint was written by another number of ranks, seed ``seed + 1 + rank + step``
    instead (each rank still independent, warned: the run no longer repeats exactly)."""
    if len(saved) == world:
        set_rng_state(saved[rank])
        return
    log.warning("checkpoint from %d workers resumed on %d: RNG reseeded", len(saved), world)
    torch.manual_seed(seed + 1 + rank + step)


def on_every_rank(flag: bool) -> bool:
    """Whether ``flag`` holds on every rank (all ranks must call this); ``flag`` on one process."""
    if not is_distributed():
        return flag
    flags: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(flags, flag)
    return all(flags)


def mean_over_ranks(value: torch.Tensor) -> float:
    """The mean of a scalar over the ranks (all ranks must call this)."""
    if is_distributed():
        value = value.detach().clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value.item()
