"""Variational auto-encoders (Kingma & Welling 2014) and the importance-weighted bound
(Burda et al. 2016): the objectives, with no network and no loop (theory.md section 4).

    ELBO(x) = E_q(z|x)[log p(x|z)] - KL(q(z|x) || p(z))  <=  log p(x)
    IWAE_k(x) = E[ log (1/k) sum_i p(x|z_i) p(z_i) / q(z_i|x) ],  z_i ~ q(z|x)

with q(z|x) = N(mean(x), diag exp(logvar(x))) and p(z) = N(0, I), the KL in closed form
(``trainer.generative.gaussian.gaussian_kl``). IWAE_1 = ELBO in expectation, IWAE_k is non-decreasing in k and
tends to log p(x).

A model has ``encode(x) -> (mean, logvar)`` and ``decode(z) -> decoder output``. Decoders:
``bernoulli`` (logits; x in {0, 1}, e.g. dynamically binarised images) and ``gaussian`` (mean and
log standard deviation stacked on dim 1; the discretised Gaussian for data on ``levels`` values in
[-1, 1], the density for continuous data when ``levels`` is None).
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F

from trainer.generative.gaussian import (
    discretized_gaussian_log_likelihood,
    gaussian_kl,
    gaussian_log_density,
)
from trainer.precision import at_least_fp32


class VAEModel(Protocol):
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def decode(self, z: torch.Tensor) -> torch.Tensor: ...


def decoder_log_likelihood(
    x: torch.Tensor, output: torch.Tensor, decoder: str, levels: int | None
) -> torch.Tensor:
    """log p(x | z) per example, summed over the dimensions of x."""
    if decoder == "bernoulli":
        log_p = -F.binary_cross_entropy_with_logits(output, x, reduction="none")
    elif decoder == "gaussian":
        mean, log_scale = output.chunk(2, dim=1)
        if levels is None:
            log_p = gaussian_log_density(x, mean, 2 * log_scale)
        else:
            log_p = discretized_gaussian_log_likelihood(x, mean, log_scale, levels)
    else:
        raise ValueError(f"unknown decoder {decoder!r}: expected 'bernoulli' or 'gaussian'")
    return log_p.flatten(1).sum(1)


def reparameterise(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)


def elbo(
    model: VAEModel, x: torch.Tensor, decoder: str, levels: int | None
) -> dict[str, torch.Tensor]:
    """Per-example ``elbo`` = ``reconstruction`` - ``kl`` with one reparameterised ``z`` (nats),
    at least in fp32 whatever the networks compute in (bf16 under autocast)."""
    mean, logvar = (at_least_fp32(part) for part in model.encode(x))
    z = reparameterise(mean, logvar)
    reconstruction = decoder_log_likelihood(x, at_least_fp32(model.decode(z)), decoder, levels)
    kl = gaussian_kl(mean, logvar).flatten(1).sum(1)
    return {"elbo": reconstruction - kl, "reconstruction": reconstruction, "kl": kl, "z": z}


@torch.no_grad()
def iwae_bound(
    model: VAEModel, x: torch.Tensor, k: int, decoder: str, levels: int | None
) -> torch.Tensor:
    """IWAE_k per example (nats): log of the mean over k importance weights, in log space."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    mean, logvar = model.encode(x)
    batch = x.shape[0]
    log_weights = []
    for _ in range(k):
        z = reparameterise(mean, logvar)
        log_p_x = decoder_log_likelihood(x, model.decode(z), decoder, levels)
        log_p_z = gaussian_log_density(z, 0.0, 0.0).flatten(1).sum(1)
        log_q_z = gaussian_log_density(z, mean, logvar).flatten(1).sum(1)
        log_weights.append(log_p_x + log_p_z - log_q_z)
    stacked = torch.stack(log_weights).view(k, batch)
    return torch.logsumexp(stacked, dim=0) - math.log(k)
