"""GAN objectives (Goodfellow et al. 2014) with the R1 penalty (Mescheder et al. 2018), no network
and no loop.

With critic logits C(x) and f(t) = log sigmoid(t) (theory.md section 6):
- critic loss  -E_data f(C(x)) - E_G f(-C(G(z)))  = softplus(-C(x)) + softplus(C(G(z)))
- generator loss (non-saturating)  -E f(C(G(z)))  = softplus(-C(G(z)))
- R1 = E_data ||grad_x C(x)||^2, added to the critic's loss as (gamma / 2) R1: the convention of
  the reference, under which the Dirac-GAN Jacobian gains -gamma on the critic's weight
  (LMescheder/GAN_stability's ``reg_param`` multiplies R1 without the 1/2).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from trainer.precision import at_least_fp32


def critic_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """At least in fp32 whatever the logits' dtype (bf16 under autocast)."""
    real_logits, fake_logits = at_least_fp32(real_logits), at_least_fp32(fake_logits)
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """At least in fp32 whatever the logits' dtype (bf16 under autocast)."""
    return F.softplus(-at_least_fp32(fake_logits)).mean()


def r1_penalty(critic: nn.Module, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(R1, the critic's logits on ``real``): R1 = mean over the batch of ||grad_x C(x)||^2, with
    the graph kept so that the penalty trains the critic."""
    real = real.detach().requires_grad_(True)
    logits = critic(real)
    (gradient,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
    return gradient.pow(2).flatten(1).sum(1).mean(), logits


class ExponentialMovingAverage(nn.Module):
    """theta_ema <- d theta_ema + (1 - d) theta after step ``step`` (0-based), with
    d = min(decay, (1 + step) / (10 + step)) so that a short run is not dominated by the initial
    weights; buffers (BN statistics) are copied. Sample from ``ema.model`` (Karras et al. 2018;
    Yazici et al. 2019)."""

    def __init__(self, model: nn.Module, decay: float = 0.999):
        super().__init__()
        if not 0 <= decay < 1:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for average, current in zip(self.model.parameters(), model.parameters(), strict=True):
            average.lerp_(current.detach(), 1 - decay)
        for average, current in zip(self.model.buffers(), model.buffers(), strict=True):
            average.copy_(current)
