"""LARS and the SimCLR learning-rate schedule.

LARS follows the official SimCLR optimiser (google-research/simclr ``tf2/lars_optimizer.py``,
classic momentum, no Nesterov). For a parameter w with gradient g in a group that is not
``lars_exclude``::

    g     <- g + weight_decay * w
    trust <- eta * ||w|| / ||g||   if ||w|| > 0 and ||g|| > 0, else 1
    v     <- momentum * v + lr * trust * g
    w     <- w - v

Excluded parameters (biases and normalisation parameters) get no weight decay and trust = 1. The
learning rate sits inside the momentum buffer, so changing it changes the update exactly as in the
official code. The strict ``>`` matters: with ``>=`` zero-initialised parameters never move.

The schedule (``tf2/model.py``, ``WarmUpAndCosineDecay``) is stepped per iteration: a linear warm-up
from 0 over the warm-up steps, then a cosine decay to 0 at the last step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal

import torch
from torch import nn
from torch.optim import Optimizer

LRScaling = Literal["linear", "sqrt"]


class LARS(Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al. 2017) as used by SimCLR.

    ``lr``, ``weight_decay``, ``momentum``, ``eta`` and ``lars_exclude`` are read per param group.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 1e-3,
    ):
        if lr < 0:
            raise ValueError(f"LARS: lr must be >= 0, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"LARS: momentum must be in [0, 1), got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"LARS: weight_decay must be >= 0, got {weight_decay}")
        if eta <= 0:
            raise ValueError(f"LARS: eta must be > 0, got {eta}")
        defaults = dict(
            lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars_exclude=False
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if not group["lars_exclude"]:
                if group["weight_decay"] != 0:
                    grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
                w_norms = torch.stack(torch._foreach_norm(params))
                g_norms = torch.stack(torch._foreach_norm(grads))
                trust = torch.where(
                    (w_norms > 0) & (g_norms > 0),
                    group["eta"] * w_norms / g_norms,
                    torch.ones_like(w_norms),
                )
                steps = torch._foreach_mul(grads, list((trust * group["lr"]).unbind()))
            else:
                steps = torch._foreach_mul(grads, group["lr"])
            buffers = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buffers.append(state["momentum_buffer"])
            torch._foreach_mul_(buffers, group["momentum"])
            torch._foreach_add_(buffers, steps)
            torch._foreach_sub_(params, buffers)
        return loss


def lars_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split trainable parameters: ndim <= 1 (biases, norm parameters) excluded from LARS and decay."""
    adapted, excluded = [], []
    for p in model.parameters():
        if p.requires_grad:
            (excluded if p.ndim <= 1 else adapted).append(p)
    return [
        {"params": adapted, "weight_decay": weight_decay},
        {"params": excluded, "weight_decay": 0.0, "lars_exclude": True},
    ]


def scaled_learning_rate(base_lr: float, batch_size: int, scaling: LRScaling) -> float:
    """Peak learning rate for a global batch: ``base_lr * B / 256`` (linear) or ``base_lr * sqrt(B)``.

    The paper's values are base 0.3 with linear scaling (4.8 at B = 4096) and 0.075 with square-root
    scaling (also 4.8 at B = 4096).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if scaling == "linear":
        return base_lr * batch_size / 256
    if scaling == "sqrt":
        return base_lr * math.sqrt(batch_size)
    raise ValueError(f"unknown learning-rate scaling {scaling!r}: expected 'linear' or 'sqrt'")


def warmup_cosine(step: int, peak_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Learning rate at iteration ``step`` (0-based): linear warm-up from 0, then cosine decay to 0."""
    if step < warmup_steps:
        return peak_lr * step / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return peak_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_learning_rate(optimizer: Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
