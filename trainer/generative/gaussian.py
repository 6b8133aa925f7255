"""Gaussian densities and divergences: the one implementation every generative objective uses.

All functions work elementwise on tensors that broadcast; callers sum over the dimensions they
want. Variances are passed as log-variances (what networks predict). Natural logarithms.
"""

from __future__ import annotations

import math

import torch

LOG_2PI = math.log(2 * math.pi)
MIN_LOG_SCALE = -9.0


def gaussian_kl(
    mean_q: torch.Tensor,
    logvar_q: torch.Tensor,
    mean_p: torch.Tensor | float = 0.0,
    logvar_p: torch.Tensor | float = 0.0,
) -> torch.Tensor:
    """KL(q || p) for q = N(mean_q, exp(logvar_q)), p = N(mean_p, exp(logvar_p)), per element
    (theory.md section 1):

        KL = log(s_p / s_q) + (s_q^2 + (mu_q - mu_p)^2) / (2 s_p^2) - 1/2

    Against N(0, 1) (the defaults) this is 1/2 (mu^2 + s^2 - 1 - log s^2).
    """
    mean_p = torch.as_tensor(mean_p, dtype=mean_q.dtype, device=mean_q.device)
    logvar_p = torch.as_tensor(logvar_p, dtype=mean_q.dtype, device=mean_q.device)
    return 0.5 * (
        logvar_p
        - logvar_q
        + (torch.exp(logvar_q) + (mean_q - mean_p) ** 2) * torch.exp(-logvar_p)
        - 1.0
    )


def gaussian_log_density(
    x: torch.Tensor, mean: torch.Tensor | float, logvar: torch.Tensor | float
) -> torch.Tensor:
    """log N(x; mean, exp(logvar)) per element."""
    logvar = torch.as_tensor(logvar, dtype=x.dtype, device=x.device)
    return -0.5 * (LOG_2PI + logvar + (x - mean) ** 2 * torch.exp(-logvar))


def _standard_normal_log_cdf(x: torch.Tensor) -> torch.Tensor:
    return torch.special.log_ndtr(x)


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, levels: int = 256
) -> torch.Tensor:
    """log P(x) per element for data quantised to ``levels`` values evenly spaced on [-1, 1]:
    the Gaussian's mass over the bin of width 2 / (levels - 1) around x, with the first and last
    bins extended to -inf and +inf (Ho et al. 2020, eq. 13; openai/improved-diffusion
    ``discretized_gaussian_log_likelihood``, which uses 8-bit data: levels = 256).

    ``log_scale`` is the log standard deviation. Exact normal CDFs in log space (``log_ndtr``) keep
    the tails finite; the masses of all bins of one element sum to 1.
    """
    out_dtype = torch.promote_types(x.dtype, mean.dtype)
    # float64 inside: float32's log_ndtr gradient overflows for edges tens of thousands of standard
    # deviations away. A scale below e^-9 is over 30x narrower than an 8-bit bin (its bin holds all
    # the mass already); the floor keeps every branch below and its gradient finite.
    x, mean, log_scale = x.double(), mean.double(), log_scale.double()
    half_bin = 1.0 / (levels - 1)
    inv_scale = torch.exp(-log_scale.clamp(min=MIN_LOG_SCALE))
    upper = (x - mean + half_bin) * inv_scale
    lower = (x - mean - half_bin) * inv_scale
    log_cdf_upper = _standard_normal_log_cdf(upper)  # log P(X <= upper edge)
    log_survival_lower = _standard_normal_log_cdf(-lower)  # log P(X > lower edge)

    # log(Phi(upper) - Phi(lower)), from whichever tail is smaller for accuracy. The clamp keeps
    # both branches finite (a bin without representable mass scores log 1e-12, as improved-diffusion
    # clamps), so that the branch torch.where discards cannot put a NaN into the gradient.
    def log_one_minus_exp(d: torch.Tensor) -> torch.Tensor:
        return torch.log((-torch.expm1(d)).clamp(min=1e-12))

    mid = torch.where(
        lower > 0,
        log_survival_lower
        + log_one_minus_exp(_standard_normal_log_cdf(-upper) - log_survival_lower),
        log_cdf_upper + log_one_minus_exp(_standard_normal_log_cdf(lower) - log_cdf_upper),
    )
    eps = 1e-6
    log_p = torch.where(
        x < -1 + eps, log_cdf_upper, torch.where(x > 1 - eps, log_survival_lower, mid)
    )
    return log_p.to(out_dtype)


def bits_per_dim(nats: torch.Tensor | float, dims: int) -> torch.Tensor | float:
    """A negative log-likelihood of ``dims`` dimensions in nats as bits per dimension."""
    return nats / (dims * math.log(2))
