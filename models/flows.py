"""Invertible maps with their log-determinants, and a density built from them (theory.md section 2).

Every flow maps data towards the base density: ``forward(x) -> (z, log|det dz/dx|)`` per example,
and ``inverse(z) -> x``. Invertibility is built into each parametrisation, not hoped for:

- ``RadialFlow``: y = x + beta h(r) (x - x0), h = 1 / (alpha + r), with alpha = softplus(.) > 0 and
  beta = -alpha + softplus(.) >= -alpha (so rho(r) = r (1 + beta h) is strictly increasing).
  log|det| = (D - 1) log(1 + beta h) + log(1 + beta h - beta r / (alpha + r)^2). Closed-form inverse.
- ``PlanarFlow``: y = x + u tanh(w.x + b) with u reparametrised so that w.u >= -1 (Rezende &
  Mohamed 2015, appendix A); log|det| = log|1 + u.psi(x)|, psi = (1 - tanh^2(w.x + b)) w. The inverse
  solves the monotone scalar equation for a = w.x + b by bisection.
- ``SigmoidalFlow``: elementwise y = logit(sum_i w_i sigmoid(a_i x + b_i)), w = softmax(.),
  a = softplus(.) > 0: strictly increasing. dy/dx = sum_i w_i a_i s_i (1 - s_i) / (p (1 - p)), computed
  in log space (d logit(p)/dp = 1 / (p (1 - p)), no 1/ln 10). Inverse by bisection.
- ``ResidualFlow``: y = x + f(x), f an MLP whose linear maps are divided by their exact spectral norm
  (times ``lipschitz`` < 1) and whose activations are 1-Lipschitz, so Lip(f) < 1 (Behrmann et al.
  2019). log|det| = log det(I + J_f) computed exactly from the Jacobian (D backward passes: meant
  for low-dimensional data); the inverse is the fixed point of x <- y - f(x).
- ``ElementwiseAffine``: y = x exp(s) + t, the scale and shift a density model needs in front.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn


def _bisect(
    function, target: torch.Tensor, low: float = -1e3, high: float = 1e3, iterations: int = 100
):
    """Solve function(x) = target elementwise for an increasing ``function`` by bisection."""
    lower = torch.full_like(target, low)
    upper = torch.full_like(target, high)
    for _ in range(iterations):
        middle = (lower + upper) / 2
        below = function(middle) < target
        lower = torch.where(below, middle, lower)
        upper = torch.where(below, upper, middle)
    return (lower + upper) / 2


class ElementwiseAffine(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(dim))
        self.shift = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = x * self.log_scale.exp() + self.shift
        return y, self.log_scale.sum().expand(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.shift) * torch.exp(-self.log_scale)


class RadialFlow(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.center = nn.Parameter(torch.randn(dim) * 0.1)
        self.alpha_raw = nn.Parameter(torch.zeros(()))
        self.beta_raw = nn.Parameter(torch.zeros(()))

    @property
    def alpha(self) -> torch.Tensor:
        return F.softplus(self.alpha_raw)

    @property
    def beta(self) -> torch.Tensor:
        """beta >= -alpha: the invertibility condition."""
        return -self.alpha + F.softplus(self.beta_raw)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha, beta = self.alpha, self.beta
        difference = x - self.center
        r = difference.norm(dim=1, keepdim=True)
        h = 1 / (alpha + r)
        y = x + beta * h * difference
        dim = x.shape[1]
        tiny = torch.finfo(x.dtype).tiny
        log_det = (dim - 1) * torch.log((1 + beta * h).clamp(min=tiny)) + torch.log(
            (1 + beta * h - beta * r / (alpha + r) ** 2).clamp(min=tiny)
        )
        return y, log_det.squeeze(1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """rho = ||y - x0|| = r (1 + beta / (alpha + r)): r is the positive root of
        r^2 + (alpha + beta - rho) r - alpha rho = 0; then x = x0 + r (y - x0) / rho."""
        alpha, beta = self.alpha, self.beta
        difference = y - self.center
        rho = difference.norm(dim=1, keepdim=True)
        b = alpha + beta - rho
        r = (-b + torch.sqrt(b * b + 4 * alpha * rho)) / 2
        return self.center + difference * (r / rho.clamp(min=torch.finfo(y.dtype).tiny))


class PlanarFlow(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.w = nn.Parameter(torch.randn(dim) * 0.1)
        self.u_raw = nn.Parameter(torch.randn(dim) * 0.1)
        self.b = nn.Parameter(torch.zeros(()))

    @property
    def u(self) -> torch.Tensor:
        """u_hat = u + (m(w.u) - w.u) w / ||w||^2 with m(t) = -1 + softplus(t): w.u_hat >= -1."""
        wu = self.w @ self.u_raw
        return self.u_raw + (-1 + F.softplus(wu) - wu) * self.w / (self.w @ self.w + 1e-12)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u = self.u
        activation = torch.tanh(x @ self.w + self.b)
        y = x + activation[:, None] * u
        psi_u = (1 - activation**2) * (self.w @ u)
        return y, torch.log((1 + psi_u).abs().clamp(min=torch.finfo(x.dtype).tiny))

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """With a = w.x + b: w.y + b = a + (w.u) tanh(a), increasing in a; solve it, then
        x = y - u tanh(a)."""
        u = self.u
        wu = self.w @ u
        target = y @ self.w + self.b
        a = _bisect(lambda s: s + wu * torch.tanh(s), target)
        return y - torch.tanh(a)[:, None] * u


class SigmoidalFlow(nn.Module):
    """Elementwise on ``dim`` coordinates with ``components`` sigmoids each."""

    def __init__(self, dim: int, components: int = 8):
        super().__init__()
        self.scale_raw = nn.Parameter(torch.randn(dim, components) * 0.1)
        self.shift = nn.Parameter(torch.randn(dim, components))
        self.weight_logits = nn.Parameter(torch.zeros(dim, components))

    def _log_terms(self, x: torch.Tensor):
        scale = F.softplus(self.scale_raw) + 1e-3
        pre = x[..., None] * scale + self.shift  # (B, D, K)
        log_w = torch.log_softmax(self.weight_logits, dim=-1)
        return log_w, scale, pre

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_w, scale, pre = self._log_terms(x)
        log_p = torch.logsumexp(log_w + F.logsigmoid(pre), dim=-1)
        log_one_minus_p = torch.logsumexp(log_w + F.logsigmoid(-pre), dim=-1)  # sum_i w_i = 1
        y = log_p - log_one_minus_p  # logit(p)
        log_derivative = (
            torch.logsumexp(
                log_w + torch.log(scale) + F.logsigmoid(pre) + F.logsigmoid(-pre), dim=-1
            )
            - log_p
            - log_one_minus_p
        )
        return y, log_derivative.sum(dim=1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return _bisect(lambda x: self.forward(x)[0], y, low=-1e4, high=1e4, iterations=200)


class _SpectralLinear(nn.Module):
    """A linear map divided by its exact largest singular value times ``1 / lipschitz``."""

    def __init__(self, in_dim: int, out_dim: int, lipschitz: float):
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)
        self.lipschitz = lipschitz

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sigma = torch.linalg.matrix_norm(self.linear.weight, ord=2)
        return F.linear(x, self.linear.weight * (self.lipschitz / sigma), self.linear.bias)


class ResidualFlow(nn.Module):
    def __init__(self, dim: int, hidden: int = 64, layers: int = 2, lipschitz: float = 0.9):
        super().__init__()
        if not 0 < lipschitz < 1:
            raise ValueError(f"lipschitz must be in (0, 1), got {lipschitz}")
        sizes = [dim] + [hidden] * layers + [dim]
        modules: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            modules.append(_SpectralLinear(a, b, lipschitz))
            if i < len(sizes) - 2:
                modules.append(nn.ELU())  # 1-Lipschitz
        self.residual = nn.Sequential(*modules)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = x + self.residual(x)
        jacobian = torch.func.vmap(torch.func.jacrev(self.residual))(x)  # (B, D, D)
        eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
        _, log_det = torch.linalg.slogdet(eye + jacobian)
        return y, log_det

    @torch.no_grad()
    def inverse(
        self, y: torch.Tensor, iterations: int = 200, tolerance: float = 1e-7
    ) -> torch.Tensor:
        x = y.clone()
        for _ in range(iterations):
            updated = y - self.residual(x)
            if (updated - x).abs().max() < tolerance:
                return updated
            x = updated
        return x


FLOW_LAYERS = {
    "radial": RadialFlow,
    "planar": PlanarFlow,
    "sigmoidal": SigmoidalFlow,
    "residual": ResidualFlow,
}


class FlowDensity(nn.Module):
    """log p(x) = log N(f(x); 0, I) + sum_k log|det J_k| for the composition f of ``layers``
    (an elementwise affine first); samples by inverting the layers in reverse order."""

    def __init__(self, dim: int, layers: list[str]):
        super().__init__()
        unknown = sorted(set(layers) - set(FLOW_LAYERS))
        if unknown:
            raise ValueError(f"unknown flow layers {unknown}: expected {sorted(FLOW_LAYERS)}")
        self.dim = dim
        self.layers = nn.ModuleList(
            [ElementwiseAffine(dim)] + [FLOW_LAYERS[n](dim) for n in layers]
        )

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        z = x
        for layer in self.layers:
            z, log_det = layer(z)
            total = total + log_det
        base = -0.5 * (z.pow(2).sum(1) + self.dim * math.log(2 * math.pi))
        return base + total

    @torch.no_grad()
    def sample(self, count: int, device: torch.device | str = "cpu") -> torch.Tensor:
        x = torch.randn(count, self.dim, device=device)
        for layer in reversed(self.layers):
            x = layer.inverse(x)
        return x
