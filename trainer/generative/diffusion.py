"""Denoising diffusion probabilistic models (Ho et al. 2020): the math, with no network and no loop.

Notation of ../shared/reference/theory.md section 3, with t = 1..T stored at index t - 1:

    q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I),   abar_t = prod_{s<=t} (1 - beta_s)
    q(x_{t-1} | x_t, x_0) = N(mu~_t, beta~_t I)
    mu~_t = sqrt(abar_{t-1}) beta_t / (1 - abar_t) x_0 + sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) x_t
    beta~_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t
    mu_theta(x_t, t) = (x_t - beta_t / sqrt(1 - abar_t) eps_theta(x_t, t)) / sqrt(alpha_t)

The network ``eps_model(x_t, t_index, cond)`` predicts the noise; ``t_index`` is t - 1 (0..T-1).
The reverse variances are fixed: ``"large"`` sigma_t^2 = beta_t, ``"small"`` sigma_t^2 = beta~_t
(both from Ho et al.; at t = 1, where beta~_1 = 0, both use beta~_2 as improved-diffusion does).
Schedules are held in float64 and cast when used.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from trainer.generative.gaussian import (
    discretized_gaussian_log_likelihood,
    gaussian_kl,
    gaussian_log_density,
)
from trainer.precision import at_least_fp32

EpsModel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def linear_betas(steps: int = 1000, start: float = 1e-4, end: float = 0.02) -> torch.Tensor:
    """Ho et al.'s schedule: beta_1 = 1e-4 ... beta_T = 0.02 evenly spaced (T = 1000)."""
    return torch.linspace(start, end, steps, dtype=torch.float64)


def cosine_betas(steps: int = 1000, offset: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal (2021), eq. 17: abar_t = f(t) / f(0), f(t) = cos^2((t/T + s) / (1 + s) pi/2),
    beta_t = 1 - abar_t / abar_{t-1} clipped at 0.999."""
    t = torch.arange(steps + 1, dtype=torch.float64) / steps
    f = torch.cos((t + offset) / (1 + offset) * math.pi / 2) ** 2
    abar = f / f[0]
    return (1 - abar[1:] / abar[:-1]).clamp(max=max_beta)


def _gather(values: torch.Tensor, t_index: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values[t_index] shaped to broadcast over ``like`` (batch first), in ``like``'s dtype."""
    out = values.to(like.device)[t_index].to(like.dtype)
    return out.view(-1, *([1] * (like.dim() - 1)))


@dataclass(frozen=True)
class GaussianDiffusion:
    betas: torch.Tensor
    variance: str = "large"

    def __post_init__(self) -> None:
        if self.betas.dim() != 1 or not bool(((self.betas > 0) & (self.betas < 1)).all()):
            raise ValueError("betas must be a 1-D tensor with every value in (0, 1)")
        if self.variance not in ("large", "small"):
            raise ValueError(f"variance must be 'large' or 'small', got {self.variance!r}")

    @classmethod
    def from_schedule(cls, schedule: str, steps: int = 1000, variance: str = "large"):
        betas = {"linear": linear_betas, "cosine": cosine_betas}[schedule](steps)
        return cls(betas.to(torch.float64), variance)

    @property
    def num_steps(self) -> int:
        return self.betas.shape[0]

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return torch.cumprod(1 - self.betas.double(), dim=0)

    @property
    def alphas_cumprod_prev(self) -> torch.Tensor:
        return torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])

    @property
    def posterior_variance(self) -> torch.Tensor:
        """beta~_t; zero at t = 1."""
        return (1 - self.alphas_cumprod_prev) / (1 - self.alphas_cumprod) * self.betas.double()

    @property
    def reverse_variance(self) -> torch.Tensor:
        """sigma_t^2 of p(x_{t-1} | x_t), with beta~_2 at t = 1 (beta~_1 = 0 has no density)."""
        posterior = self.posterior_variance
        chosen = self.betas.double() if self.variance == "large" else posterior
        return torch.cat([posterior[1:2], chosen[1:]])

    def q_sample(
        self, x0: torch.Tensor, t_index: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps."""
        abar = _gather(self.alphas_cumprod, t_index, x0)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def q_posterior(
        self, x0: torch.Tensor, xt: torch.Tensor, t_index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean mu~_t and variance beta~_t of q(x_{t-1} | x_t, x_0)."""
        abar = self.alphas_cumprod
        abar_prev = self.alphas_cumprod_prev
        betas = self.betas.double()
        coef_x0 = _gather(abar_prev.sqrt() * betas / (1 - abar), t_index, x0)
        coef_xt = _gather((1 - betas).sqrt() * (1 - abar_prev) / (1 - abar), t_index, x0)
        return coef_x0 * x0 + coef_xt * xt, _gather(self.posterior_variance, t_index, x0)

    def p_mean(self, xt: torch.Tensor, t_index: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """mu_theta(x_t, t) = (x_t - beta_t / sqrt(1 - abar_t) eps_theta) / sqrt(alpha_t)."""
        beta = _gather(self.betas, t_index, xt)
        abar = _gather(self.alphas_cumprod, t_index, xt)
        return (xt - beta / (1 - abar).sqrt() * eps) / (1 - beta).sqrt()

    def predict_x0(
        self, xt: torch.Tensor, t_index: torch.Tensor, eps: torch.Tensor
    ) -> torch.Tensor:
        abar = _gather(self.alphas_cumprod, t_index, xt)
        return (xt - (1 - abar).sqrt() * eps) / abar.sqrt()

    def simple_loss(
        self, eps_model: EpsModel, x0: torch.Tensor, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        """L_simple (Ho et al. eq. 14): || eps - eps_theta(x_t, t) ||^2 averaged over elements,
        t uniform on 1..T, one draw per example; at least in fp32 whatever the model computes in."""
        t_index = torch.randint(0, self.num_steps, (x0.shape[0],), device=x0.device)
        noise = torch.randn_like(x0)
        predicted = eps_model(self.q_sample(x0, t_index, noise), t_index, cond)
        return (noise - at_least_fp32(predicted)).pow(2).mean()

    def prior_kl(self, x0: torch.Tensor) -> torch.Tensor:
        """L_T = KL(q(x_T | x_0) || N(0, I)) per example (nats)."""
        last = torch.full((x0.shape[0],), self.num_steps - 1, device=x0.device)
        abar = _gather(self.alphas_cumprod, last, x0)
        kl = gaussian_kl(abar.sqrt() * x0, torch.log(1 - abar).expand_as(x0))
        return kl.flatten(1).sum(1)

    def step_term(
        self,
        eps_model: EpsModel,
        x0: torch.Tensor,
        t_index: torch.Tensor,
        cond: torch.Tensor | None = None,
        levels: int | None = 256,
    ) -> torch.Tensor:
        """One term of the bound per example (nats), for x_t ~ q(x_t | x_0):
        KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) for t >= 2, and -log p(x_0 | x_1) for t = 1,
        with the discretised Gaussian for data on ``levels`` values, or the Gaussian density when
        ``levels`` is None (continuous data)."""
        xt = self.q_sample(x0, t_index, torch.randn_like(x0))
        mean = self.p_mean(xt, t_index, eps_model(xt, t_index, cond))
        logvar = torch.log(_gather(self.reverse_variance, t_index, x0)).expand_as(x0)
        true_mean, true_var = self.q_posterior(x0, xt, t_index)
        kl = gaussian_kl(
            true_mean, torch.log(true_var.clamp(min=1e-30)).expand_as(x0), mean, logvar
        )
        if levels is None:
            nll = -gaussian_log_density(x0, mean, logvar)
        else:
            nll = -discretized_gaussian_log_likelihood(x0, mean, 0.5 * logvar, levels)
        return (
            torch.where((t_index == 0).view(-1, *[1] * (x0.dim() - 1)), nll, kl).flatten(1).sum(1)
        )

    @torch.no_grad()
    def negative_bound(
        self,
        eps_model: EpsModel,
        x0: torch.Tensor,
        cond: torch.Tensor | None = None,
        levels: int | None = 256,
    ) -> dict[str, torch.Tensor]:
        """-log p(x_0) <= L_T + sum_{t=2..T} L_{t-1} + L_0, every term evaluated (T network calls),
        one x_t draw per term. Returns per-example nats: ``total``, ``prior`` (L_T), ``kl``
        (the sum over t >= 2) and ``decoder`` (L_0 = -log p(x_0 | x_1))."""
        batch = x0.shape[0]
        kl = torch.zeros(batch, dtype=x0.dtype, device=x0.device)
        decoder = kl
        for index in range(self.num_steps):
            t_index = torch.full((batch,), index, device=x0.device, dtype=torch.long)
            term = self.step_term(eps_model, x0, t_index, cond, levels)
            if index == 0:
                decoder = term
            else:
                kl = kl + term
        prior = self.prior_kl(x0)
        return {"total": prior + kl + decoder, "prior": prior, "kl": kl, "decoder": decoder}

    @torch.no_grad()
    def sample(
        self,
        eps_model: EpsModel,
        shape: tuple[int, ...],
        cond: torch.Tensor | None = None,
        device: torch.device | str = "cpu",
        clip: bool = False,
    ) -> torch.Tensor:
        """Ancestral sampling: x_T ~ N(0, I), x_{t-1} = mu + sigma_t z (z = 0 at t = 1). With
        ``clip`` (image data on [-1, 1]) the mean comes from the x_0 prediction clipped to [-1, 1]
        and the posterior mean (improved-diffusion's ``clip_denoised``)."""
        x = torch.randn(shape, device=device)
        for index in reversed(range(self.num_steps)):
            t_index = torch.full((shape[0],), index, device=device, dtype=torch.long)
            eps = eps_model(x, t_index, cond)
            if clip:
                x0 = self.predict_x0(x, t_index, eps).clamp(-1, 1)
                mean, _ = self.q_posterior(x0, x, t_index)
            else:
                mean = self.p_mean(x, t_index, eps)
            if index == 0:
                x = mean
            else:
                x = mean + _gather(self.reverse_variance, t_index, x).sqrt() * torch.randn_like(x)
        return x
