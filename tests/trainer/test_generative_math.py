"""The math of the generative kinds against closed forms, torch.distributions, Monte Carlo and
autograd (../shared/reference/theory.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from models.flows import FLOW_LAYERS, ElementwiseAffine, FlowDensity, RadialFlow
from trainer.generative import dirac_gan
from trainer.generative.data import ToyDensity
from trainer.generative.diffusion import GaussianDiffusion, cosine_betas
from trainer.generative.frechet import frechet_distance
from trainer.generative.gan import ExponentialMovingAverage, r1_penalty
from trainer.generative.gaussian import (
    discretized_gaussian_log_likelihood,
    gaussian_kl,
    gaussian_log_density,
)
from trainer.generative.vae import elbo, iwae_bound

STANDARD_NORMAL_2D_ENTROPY = 1 + math.log(2 * math.pi)


# -- Gaussian KL (section 1) ------------------------------------------------------------------


def test_gaussian_kl_matches_torch_distributions_and_is_not_symmetric():
    torch.manual_seed(0)
    mq, mp = torch.randn(100, dtype=torch.float64), torch.randn(100, dtype=torch.float64)
    lq, lp = torch.randn(100, dtype=torch.float64), torch.randn(100, dtype=torch.float64)
    reference = torch.distributions.kl_divergence(
        torch.distributions.Normal(mq, (0.5 * lq).exp()),
        torch.distributions.Normal(mp, (0.5 * lp).exp()),
    )
    assert torch.allclose(gaussian_kl(mq, lq, mp, lp), reference, atol=1e-12)
    assert not torch.allclose(gaussian_kl(mq, lq, mp, lp), gaussian_kl(mp, lp, mq, lq))
    # against N(0, 1): 1/2 (mu^2 + s^2 - 1 - log s^2)
    assert torch.allclose(gaussian_kl(mq, lq), 0.5 * (mq**2 + lq.exp() - 1 - lq), atol=1e-12)


def test_gaussian_kl_matches_a_monte_carlo_estimate():
    generator = torch.Generator().manual_seed(1)
    mq, lq, mp, lp = 0.3, math.log(0.5), -0.4, math.log(2.0)
    x = mq + math.exp(0.5 * lq) * torch.randn(400_000, generator=generator, dtype=torch.float64)
    estimate = (gaussian_log_density(x, mq, lq) - gaussian_log_density(x, mp, lp)).mean()
    exact = gaussian_kl(*(torch.tensor(v, dtype=torch.float64) for v in (mq, lq, mp, lp)))
    assert abs(estimate - exact) < 0.005


def test_discretised_gaussian_masses_over_all_levels_sum_to_one():
    for levels in (17, 256):
        grid = torch.linspace(-1, 1, levels, dtype=torch.float64)[:, None]
        mean = torch.tensor([[-1.2, -0.3, 0.0, 0.77, 1.5]], dtype=torch.float64)
        log_scale = torch.tensor([[-4.0, -1.0, 0.0, -2.0, 0.5]], dtype=torch.float64)
        total = discretized_gaussian_log_likelihood(grid, mean, log_scale, levels).exp().sum(0)
        assert torch.allclose(total, torch.ones(5, dtype=torch.float64), atol=1e-9)


def test_discretised_gaussian_gradients_stay_finite_at_extreme_scales():
    """float32 inputs far outside their bins (edges 1e5 standard deviations away) and tiny scales:
    the value and both gradients stay finite (a NaN here once killed a VAE run at step 65)."""
    torch.manual_seed(0)
    x = torch.linspace(-1, 1, 17).repeat_interleave(200)
    mean = (torch.randn(x.shape) * 10).requires_grad_(True)
    log_scale = (torch.rand(x.shape) * 40 - 30).requires_grad_(True)
    value = discretized_gaussian_log_likelihood(x, mean, log_scale, levels=17)
    value.sum().backward()
    assert value.dtype == torch.float32 and torch.isfinite(value).all()
    assert torch.isfinite(mean.grad).all() and torch.isfinite(log_scale.grad).all()


# -- DDPM (section 3) -------------------------------------------------------------------------


def test_linear_schedule_abar_T_and_the_cosine_schedule():
    diffusion = GaussianDiffusion.from_schedule("linear", 1000)
    assert diffusion.alphas_cumprod[-1].item() == pytest.approx(4.036e-5, rel=1e-3)
    assert math.log(diffusion.alphas_cumprod[-1].item()) == pytest.approx(-10.118, abs=1e-3)
    betas = cosine_betas(1000)
    abar = torch.cumprod(1 - betas, 0)
    t = torch.arange(1, 1001, dtype=torch.float64) / 1000
    expected = (
        torch.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        / math.cos(0.008 / 1.008 * math.pi / 2) ** 2
    )
    assert torch.allclose(abar[:-1], expected[:-1], rtol=1e-9)  # the last beta is clipped at 0.999
    assert betas.max() <= 0.999


def test_posterior_mean_and_variance_against_bayes_rule():
    """q(x_{t-1} | x_t, x_0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x_0): a product of Gaussians in x_{t-1}."""
    diffusion = GaussianDiffusion.from_schedule("linear", 1000)
    x0 = torch.tensor([0.7, -0.2], dtype=torch.float64)
    xt = torch.tensor([-0.1, 1.3], dtype=torch.float64)
    for t in (2, 10, 500, 1000):
        index = torch.tensor([t - 1, t - 1])
        mean, var = diffusion.q_posterior(x0, xt, index)
        beta, abar_prev = diffusion.betas[t - 1], diffusion.alphas_cumprod[t - 2]
        # precision-weighted product of N(x_t; sqrt(1-beta) y, beta) and N(y; sqrt(abar_prev) x0, 1-abar_prev)
        precision = (1 - beta) / beta + 1 / (1 - abar_prev)
        expected_mean = (
            (1 - beta).sqrt() * xt / beta + abar_prev.sqrt() * x0 / (1 - abar_prev)
        ) / precision
        assert torch.allclose(var.flatten(), (1 / precision).expand(2), rtol=1e-9)
        assert torch.allclose(mean, expected_mean, rtol=1e-9)


def _optimal_eps_for_standard_normal(diffusion: GaussianDiffusion):
    """For x_0 ~ N(0, I), x_t ~ N(0, I) for all t and E[eps | x_t] = sqrt(1 - abar_t) x_t."""

    def eps_model(xt, t_index, cond=None):
        abar = diffusion.alphas_cumprod[t_index].to(xt.dtype)[:, None]
        return (1 - abar).sqrt() * xt

    return eps_model


@pytest.mark.parametrize("variance", ["large", "small"])
def test_the_ddpm_bound_of_the_optimal_model_is_at_most_minus_the_entropy(variance):
    """E_data[bound] <= E_data[log p_model] <= -H. For x_0 ~ N(0, I) the true reverse step is
    N(sqrt(alpha_t) x_t, beta_t I): with the optimal denoiser and sigma_t^2 = beta_t the model is
    exact except at t = 1, where sigma_1^2 = beta~_2 (as in Ho et al.'s and improved-diffusion's
    code), so the bound sits below -H by exactly D KL(N(0, beta_1) || N(0, beta~_2))."""
    diffusion = GaussianDiffusion.from_schedule("linear", 1000, variance)
    torch.manual_seed(0)
    x0 = torch.randn(4000, 2, dtype=torch.float64)
    terms = diffusion.negative_bound(_optimal_eps_for_standard_normal(diffusion), x0, levels=None)
    bound = -terms["total"]
    standard_error = bound.std().item() / math.sqrt(len(bound))
    assert bound.mean().item() <= -STANDARD_NORMAL_2D_ENTROPY + 3 * standard_error
    if variance == "large":
        beta_1, sigma2_1 = diffusion.betas[0], diffusion.reverse_variance[0]
        gap = 2 * gaussian_kl(
            torch.zeros((), dtype=torch.float64), beta_1.log(), 0.0, sigma2_1.log()
        )
        assert bound.mean().item() == pytest.approx(
            -STANDARD_NORMAL_2D_ENTROPY - gap.item(), abs=3 * standard_error
        )
    assert terms["prior"].mean().item() == pytest.approx(0.0, abs=1e-3)  # L_T tiny but not zero
    assert terms["prior"].min().item() > 0


@pytest.mark.parametrize("variance", ["small", "large"])
def test_the_discrete_bound_of_the_optimal_model_on_two_levels(variance):
    """x_0 uniform on {-1, 1} (levels = 2, H = ln 2): with E[eps | x_t] exact,
    E[x_0 | x_t] = tanh(sqrt(abar) x_t / (1 - abar)), the discretised bound is at most -ln 2. With the
    posterior variance it is tight (the true reverse step narrows to beta~_t once x_0 is decided);
    with beta_t it is looser: a check of the decoder's edge bins and of every KL term."""
    diffusion = GaussianDiffusion.from_schedule("linear", 1000, variance)

    def eps_model(xt, t_index, cond=None):
        abar = diffusion.alphas_cumprod[t_index].to(xt.dtype)[:, None]
        x0_mean = torch.tanh(abar.sqrt() * xt / (1 - abar))
        return (xt - abar.sqrt() * x0_mean) / (1 - abar).sqrt()

    torch.manual_seed(0)
    x0 = torch.randint(0, 2, (2000, 1), dtype=torch.float64) * 2 - 1
    bound = -diffusion.negative_bound(eps_model, x0, levels=2)["total"]
    standard_error = bound.std().item() / math.sqrt(len(bound))
    assert bound.mean().item() <= -math.log(2) + 3 * standard_error
    gap = {"small": 0.02, "large": 0.5}[variance]
    assert bound.mean().item() > -math.log(2) - gap


def test_a_wrong_denoiser_gives_a_much_lower_bound():
    diffusion = GaussianDiffusion.from_schedule("linear", 1000)
    x0 = torch.randn(500, 2, dtype=torch.float64)
    bound = -diffusion.negative_bound(lambda x, t, c=None: torch.zeros_like(x), x0, levels=None)[
        "total"
    ]
    assert bound.mean().item() < -STANDARD_NORMAL_2D_ENTROPY - 1


def test_ancestral_sampling_with_the_optimal_denoiser_recovers_the_data_distribution():
    diffusion = GaussianDiffusion.from_schedule("linear", 1000)
    torch.manual_seed(0)
    samples = diffusion.sample(_optimal_eps_for_standard_normal(diffusion), (4000, 2))
    assert samples.mean(0).abs().max() < 0.08
    assert (samples.var(0) - 1).abs().max() < 0.1


# -- VAE and IWAE (section 4) -----------------------------------------------------------------


class LinearGaussianVAE(nn.Module):
    """p(z) = N(0, I), p(x|z) = N(a z, s^2 I) with a^2 + s^2 = 1, so p(x) = N(0, I); the encoder is
    the exact posterior N(a x, s^2 I) scaled by ``encoder_scale`` (1: exact)."""

    def __init__(self, noise_std: float = 0.6, encoder_scale: float = 1.0):
        super().__init__()
        self.s, self.a, self.encoder_scale = noise_std, math.sqrt(1 - noise_std**2), encoder_scale

    def encode(self, x):
        return self.encoder_scale * self.a * x, torch.full_like(x, 2 * math.log(self.s))

    def decode(self, z):
        return torch.cat([self.a * z, torch.full_like(z, math.log(self.s))], dim=1)


def test_the_elbo_of_the_exact_posterior_is_the_log_likelihood():
    torch.manual_seed(0)
    x = torch.randn(20_000, 2, dtype=torch.float64)
    value = elbo(LinearGaussianVAE(), x, "gaussian", None)["elbo"]
    log_p = gaussian_log_density(x, 0.0, 0.0).sum(1)
    gap = value - log_p  # zero in expectation over z (the closed-form KL is not a per-z value)
    assert abs(gap.mean().item()) < 3 * gap.std().item() / math.sqrt(len(x))
    assert value.mean().item() == pytest.approx(
        -STANDARD_NORMAL_2D_ENTROPY, abs=4 * value.std().item() / math.sqrt(len(x))
    )


def test_iwae_is_at_least_the_elbo_and_grows_with_k_up_to_log_p():
    torch.manual_seed(0)
    model = LinearGaussianVAE(encoder_scale=0.3)  # a poor encoder: a loose ELBO
    x = torch.randn(2000, 2, dtype=torch.float64)
    log_p = gaussian_log_density(x, 0.0, 0.0).sum(1).mean().item()
    elbo_mean = elbo(model, x, "gaussian", None)["elbo"].mean().item()
    bounds = [iwae_bound(model, x, k, "gaussian", None).mean().item() for k in (1, 5, 50, 500)]
    assert bounds[0] == pytest.approx(elbo_mean, abs=0.05)
    assert bounds == sorted(bounds) and bounds[-1] - bounds[0] > 0.1
    assert bounds[-1] <= log_p + 0.01
    assert elbo_mean <= log_p <= -STANDARD_NORMAL_2D_ENTROPY + 0.1


# -- GAN: R1 and the EMA ------------------------------------------------------------------------


def test_r1_of_a_linear_critic_is_its_squared_weight_norm_and_trains_the_critic():
    critic = nn.Linear(3, 1)
    r1, logits = r1_penalty(lambda x: critic(x).squeeze(1), torch.randn(16, 3))
    assert r1.item() == pytest.approx(critic.weight.pow(2).sum().item(), rel=1e-6)
    assert logits.shape == (16,)
    r1.backward()
    assert torch.allclose(critic.weight.grad, 2 * critic.weight.detach())


def test_the_moving_average_follows_the_weights_with_its_warm_up():
    model = nn.Linear(2, 2)
    ema = ExponentialMovingAverage(model, decay=0.9)
    start = ema.model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model, step=0)  # decay min(0.9, 1/10) = 0.1
    assert torch.allclose(ema.model.weight, start + 0.9)
    assert not ema.model.weight.requires_grad


# -- Dirac-GAN (section 6) ----------------------------------------------------------------------


def test_dirac_gan_jacobian_and_eigenvalues():
    assert np.allclose(
        dirac_gan.numerical_jacobian(np.zeros(3)), dirac_gan.equilibrium_jacobian(), atol=1e-8
    )
    assert np.allclose(dirac_gan.equilibrium_eigenvalues(0.0), [-0.5, -0.5j, 0.5j])
    for gamma in (0.05, 0.3, 1.0, 4.0):
        eigen = dirac_gan.equilibrium_eigenvalues(gamma)
        assert np.allclose(
            dirac_gan.numerical_jacobian(np.zeros(3), gamma),
            dirac_gan.equilibrium_jacobian(gamma),
            atol=1e-8,
        )
        assert (eigen.real < 0).all()
        # (lambda + 1/2)(lambda^2 + gamma lambda + 1/4): the lambda coefficient is gamma/2 + 1/4
        assert np.allclose(
            np.poly(dirac_gan.equilibrium_jacobian(gamma)),
            [1, gamma + 0.5, gamma / 2 + 0.25, 0.125],
        )


def test_alternating_steps_converge_with_r1_and_not_without():
    without = dirac_gan.trajectory(0.0, 0.1, 5000, "alternating")
    distances = np.linalg.norm(without[:, [0, 2]], axis=1)
    assert distances[-1000:].min() > 0.5 * distances[0]  # a bounded orbit that never closes in
    assert distances.max() < 2 * distances[0]
    with_r1 = dirac_gan.trajectory(0.3, 0.1, 5000, "alternating")
    assert np.linalg.norm(with_r1[-1]) < 1e-6
    simultaneous = dirac_gan.trajectory(0.0, 0.1, 2000, "simultaneous")
    assert np.linalg.norm(simultaneous[-1, [0, 2]]) > 2 * np.linalg.norm(simultaneous[0, [0, 2]])


def test_dirac_gan_plot_is_written(tmp_path):
    summary = dirac_gan.plot(tmp_path / "dirac.png", gamma=0.3, steps=300)
    assert (tmp_path / "dirac.png").read_bytes().startswith(b"\x89PNG")
    assert summary["final_distance_alternating_gamma_0.3"] < 0.5


# -- Flows (section 2) --------------------------------------------------------------------------


def _perturbed(flow: nn.Module, scale: float = 0.7) -> nn.Module:
    torch.manual_seed(3)
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.add_(scale * torch.randn_like(parameter))
    return flow.double()


@pytest.mark.parametrize("name", [*FLOW_LAYERS, "affine"])
def test_every_flow_inverts_and_its_log_determinant_matches_autograd(name):
    dim = 3
    flow = _perturbed(ElementwiseAffine(dim) if name == "affine" else FLOW_LAYERS[name](dim))
    x = torch.randn(6, dim, dtype=torch.float64) * 1.5
    y, log_det = flow(x)
    assert torch.allclose(flow.inverse(y), x, atol=1e-6)
    for i in range(len(x)):
        jacobian = torch.autograd.functional.jacobian(lambda v: flow(v[None])[0][0], x[i])
        assert torch.linalg.slogdet(jacobian).logabsdet.item() == pytest.approx(
            log_det[i].item(), abs=1e-8
        )


def test_the_radial_flow_stays_invertible_at_beta_equal_minus_alpha():
    flow = RadialFlow(2).double()
    with torch.no_grad():
        flow.alpha_raw.fill_(0.5)
        flow.beta_raw.fill_(-60.0)  # softplus(-60) ~ 1e-26: beta = -alpha
    assert (flow.beta + flow.alpha).item() < 1e-20
    x = torch.randn(200, 2, dtype=torch.float64) * 2
    y, log_det = flow(x)
    assert torch.isfinite(log_det).all()
    assert torch.allclose(flow.inverse(y), x, atol=1e-6)
    radii = (x - flow.center).norm(dim=1)
    order = radii.argsort()
    assert ((y - flow.center).norm(dim=1)[order].diff() > 0).all()  # rho strictly increasing


def test_the_residual_flow_is_contractive_and_the_planar_flow_keeps_w_dot_u_above_minus_one():
    residual = _perturbed(FLOW_LAYERS["residual"](4), scale=3.0)
    a, b = torch.randn(500, 4, dtype=torch.float64), torch.randn(500, 4, dtype=torch.float64)
    ratio = (residual.residual(a) - residual.residual(b)).norm(dim=1) / (a - b).norm(dim=1)
    assert ratio.max() < 0.9 + 1e-9
    planar = FLOW_LAYERS["planar"](4)
    with torch.no_grad():
        planar.u_raw.copy_(-10 * planar.w / planar.w.norm() ** 2)
    assert (planar.w @ planar.u).item() >= -1


def test_a_flow_density_integrates_to_one():
    density = _perturbed(FlowDensity(2, ["sigmoidal", "planar", "radial", "residual"]), scale=0.3)
    grid = torch.linspace(-12, 12, 601, dtype=torch.float64)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    points = torch.stack([xx.flatten(), yy.flatten()], dim=1)
    with torch.no_grad():
        mass = torch.cat([density.log_prob(chunk) for chunk in points.split(20_000)]).exp().sum()
    assert (mass * (grid[1] - grid[0]) ** 2).item() == pytest.approx(1.0, abs=0.02)


# -- toy densities and the Frechet distance -----------------------------------------------------


@pytest.mark.parametrize("name", ["eight_gaussians", "two_moons", "standard_normal"])
def test_toy_densities_normalise_and_their_entropy_matches_samples(name):
    density = ToyDensity(name)
    grid = torch.linspace(-6, 6, 241, dtype=torch.float64)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    points = torch.stack([xx.flatten(), yy.flatten()], dim=1)
    mass = torch.cat([density.log_prob(chunk) for chunk in points.split(20_000)]).exp().sum()
    assert (mass * (grid[1] - grid[0]) ** 2).item() == pytest.approx(1.0, abs=0.01)
    if name == "standard_normal":
        assert density.entropy() == pytest.approx(STANDARD_NORMAL_2D_ENTROPY)


def test_frechet_distance_against_the_closed_form_for_commuting_covariances():
    a, b = np.diag([1.0, 4.0, 0.25]), np.diag([4.0, 9.0, 1.0])
    mean_a, mean_b = np.zeros(3), np.array([1.0, -1.0, 2.0])
    expected = 6 + sum((np.sqrt(x) - np.sqrt(y)) ** 2 for x, y in [(1, 4), (4, 9), (0.25, 1)])
    assert frechet_distance(mean_a, a, mean_b, b) == pytest.approx(expected)
    assert frechet_distance(mean_a, a, mean_a, a) == pytest.approx(0.0, abs=1e-9)


def _levels_data(levels: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """float64 data on ``levels`` values evenly spaced on [-1, 1], interior values only (bins of
    finite width on both sides)."""
    generator = torch.Generator().manual_seed(seed)
    k = torch.randint(1, levels - 1, shape, generator=generator)
    return (k.double() / (levels - 1)) * 2 - 1


def _zero_denoiser(x, t_index, cond):
    return torch.zeros_like(x)


@pytest.mark.parametrize("variance", ["large", "small"])
def test_the_decoder_term_is_the_bin_mass_of_the_reverse_gaussian_at_256_levels(variance):
    """L_0 = -log p(x_0 | x_1) against the normal CDF evaluated here: the mass of
    N(mu_theta(x_1, 1), sigma_1^2) over x_0's bin of width 2/255. At 256 levels the bins are
    narrow against sigma_1 (about 0.01), so the term depends on the scale: passing the
    log-variance where the log standard deviation belongs changes it by nats."""
    diffusion = GaussianDiffusion.from_schedule("linear", 1000, variance)
    x0 = _levels_data(256, (6, 16), seed=0)
    first = torch.zeros(6, dtype=torch.long)
    torch.manual_seed(5)
    decoder = diffusion.step_term(_zero_denoiser, x0, first, None, levels=256)
    torch.manual_seed(5)  # the same draw of x_1 as step_term's
    noise = torch.randn_like(x0)
    abar, beta = diffusion.alphas_cumprod[0], diffusion.betas[0]
    x1 = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    mean = x1 / (1 - beta).sqrt()  # mu_theta with eps_theta = 0
    betas = diffusion.betas
    abar_1, abar_2 = 1 - betas[0], (1 - betas[0]) * (1 - betas[1])
    sigma = (
        (1 - abar_1) / (1 - abar_2) * betas[1]
    ).sqrt()  # beta~_2 for both, as improved-diffusion
    half_bin = 1 / 255
    normal = torch.distributions.Normal(mean, sigma)
    mass = normal.cdf(x0 + half_bin) - normal.cdf(x0 - half_bin)
    expected = -mass.log().sum(1)
    torch.testing.assert_close(decoder, expected, rtol=1e-6, atol=1e-6)
    assert expected.mean() / 16 > 0.3  # nats per value: the bins are narrow against sigma_1


def test_the_bound_is_the_sum_of_every_term_it_names():
    """total = L_T + sum_{t>=2} L_{t-1} + L_0, each term recomputed here from the same draws: a
    term left out of the sum (L_T is 2e-5 nats at T = 1000, below any bound test's resolution)
    shows here, where T = 20 leaves L_T large."""
    diffusion = GaussianDiffusion.from_schedule("linear", 20)
    x0 = _levels_data(256, (4, 8), seed=1)
    weight = torch.randn(8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def denoiser(x, t_index, cond):  # any fixed function of x_t and t
        return 0.1 * x @ weight + 0.01 * t_index.double()[:, None]

    torch.manual_seed(3)
    bound = diffusion.negative_bound(denoiser, x0, levels=256)
    torch.manual_seed(3)
    terms = [
        diffusion.step_term(denoiser, x0, torch.full((4,), t, dtype=torch.long), None, 256)
        for t in range(20)
    ]
    prior = diffusion.prior_kl(x0)
    assert prior.min() > 0.1  # large enough to notice
    torch.testing.assert_close(bound["prior"], prior)
    torch.testing.assert_close(bound["decoder"], terms[0])
    torch.testing.assert_close(bound["kl"], sum(terms[1:]))
    torch.testing.assert_close(bound["total"], prior + sum(terms))
