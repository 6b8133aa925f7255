"""One class per generative kind: its networks, one optimisation step, its evaluation and its
samples. The loop that drives them (data, checkpoints, metrics, artifacts) is
``trainer.generative.loop``; the math they call lives in ``diffusion``, ``vae``, ``gan`` and
``models.flows``.

Every task is data-parallel the same way: each rank computes the loss of its slice of the global
batch, gradients are averaged over the ranks (``average_gradients``) and every rank takes the same
optimiser step from the same initial weights, so the replicas stay identical. Evaluation and
sampling run on rank 0, on the random stream the loop forks and seeds for them.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from models.flows import FlowDensity
from models.gan import ImageCritic, ImageGenerator, VectorCritic, VectorGenerator
from models.mlp import TimeConditionedMLP
from models.unet import UNet
from models.vae import ConvVAE, VectorVAE
from trainer.contracts.generative import (
    DDPMConfig,
    DiffuseVAEConfig,
    DiffusionSettings,
    FlowConfig,
    GANConfig,
    TrainingConfig,
    VAEConfig,
    VAESettings,
)
from trainer.contracts.kinds import KINDS
from trainer.contracts.spec import JobSpec
from trainer.distributed import average_gradients, is_distributed
from trainer.generative.data import GenerativeData
from trainer.generative.diffusion import GaussianDiffusion
from trainer.generative.gan import (
    ExponentialMovingAverage,
    critic_loss,
    generator_loss,
    r1_penalty,
)
from trainer.generative.vae import elbo, iwae_bound, reparameterise
from trainer.global_bn import convert_to_global_batch_norm
from trainer.optim import set_learning_rate
from trainer.session import TrainingSession

LN2 = math.log(2)


class Task:
    """The interface the loop drives. ``networks`` and ``optimizers`` are checkpointed by name."""

    networks: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    bf16: bool = True  # whether ``train_step``'s forward passes may run under bf16 autocast

    def __init__(self, config: TrainingConfig, data: GenerativeData, device: torch.device):
        self.config, self.data, self.device = config, data, device

    @classmethod
    def worker(cls, spec: JobSpec, session: TrainingSession) -> None:
        """The worker entry of the kind whose registry row names this task: the generative loop."""
        from trainer.generative.loop import run_generative  # the loop imports this module

        run_generative(spec.kind, spec.config, session, progress=False, roots=spec.data_roots)

    def learning_rate(self, step: int, base: float | None = None) -> float:
        base = base or self.config.learning_rate
        warmup = self.config.warmup_steps
        return base * min(1.0, (step + 1) / warmup) if warmup else base

    def adam(self, module: nn.Module, lr: float | None = None) -> torch.optim.Adam:
        return torch.optim.Adam(
            module.parameters(), lr=lr or self.config.learning_rate, betas=self.config.betas
        )

    def update(self, name: str, loss: torch.Tensor, lr: float) -> None:
        """Backward, average the gradients over the ranks, clip, step: outside any autocast the
        loop's forward passes run in (gradients and weights are fp32). Autocast's bf16 copies of
        the weights are then dropped, so that a later forward pass of the same step (the GAN's
        generator loss through the critic just updated) sees the new weights, as in fp32."""
        optimizer, module = self.optimizers[name], self.networks[name]
        with torch.autocast(self.device.type, enabled=False):
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            average_gradients(module.parameters())
            if self.config.grad_clip:
                nn.utils.clip_grad_norm_(module.parameters(), self.config.grad_clip)
            set_learning_rate(optimizer, lr)
            optimizer.step()
        torch.clear_autocast_cache()

    def train_step(self, x: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def evaluate(self, x: torch.Tensor) -> dict[str, float]:
        raise NotImplementedError

    def samples(self, count: int) -> torch.Tensor:
        raise NotImplementedError

    def likelihood_metrics(self, prefix: str, log_likelihood: torch.Tensor) -> dict[str, float]:
        """A mean log-likelihood (bound) per example: in nats, and in bits/dim for images."""
        mean = log_likelihood.mean().item()
        metrics = {f"{prefix}_nats": mean}
        if self.data.is_image:
            metrics[f"{prefix}_bpd"] = -mean / (self.data.dims * LN2)
        return metrics


def _image_shape(data: GenerativeData) -> tuple[int, int]:
    return data.train.shape[1], data.train.shape[-1]


def _vae_network(settings: VAESettings, data: GenerativeData) -> nn.Module:
    out_per_dim = 1 if settings.decoder == "bernoulli" else 2
    if data.is_image:
        channels, size = _image_shape(data)
        return ConvVAE(channels, size, settings.latent_dim, settings.width, out_per_dim)
    return VectorVAE(data.dims, settings.latent_dim, settings.hidden, out_per_dim)


def _denoiser(settings: DiffusionSettings, data: GenerativeData, conditioned: bool) -> nn.Module:
    if data.is_image:
        channels, size = _image_shape(data)
        unet = settings.unet
        return UNet(
            channels, size, unet.base_channels, unet.channel_mults, unet.blocks_per_resolution,
            unet.attention_resolutions, unet.dropout, cond_channels=channels if conditioned else 0,
        )  # fmt: skip
    return TimeConditionedMLP(
        data.dims, settings.mlp_hidden, cond_dim=data.dims if conditioned else 0
    )


class _VAEModel:
    """A VAE network with its decoder's data convention: Bernoulli decoders see binarised images
    on {0, 1}, Gaussian ones the data on [-1, 1]."""

    def __init__(self, network: nn.Module, settings: VAESettings, data: GenerativeData):
        self.network, self.decoder = network, settings.decoder
        self.levels = data.levels  # used by the gaussian decoder only

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Dynamic binarisation for the Bernoulli decoder: each pixel is 1 with probability its
        intensity (Burda et al. 2016)."""
        if self.decoder != "bernoulli":
            return x
        probability = (x + 1) / 2
        return torch.bernoulli(probability).to(x.dtype)

    def elbo(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return elbo(self.network, x, self.decoder, self.levels)

    def iwae(self, x: torch.Tensor, k: int) -> torch.Tensor:
        return iwae_bound(self.network, x, k, self.decoder, self.levels)

    def mean_image(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's mean on the data's scale: [-1, 1]."""
        output = self.network.decode(z)
        if self.decoder == "bernoulli":
            return torch.sigmoid(output) * 2 - 1
        return output.chunk(2, dim=1)[0]


class DDPMTask(Task):
    def __init__(self, config: DDPMConfig, data: GenerativeData, device: torch.device):
        super().__init__(config, data, device)
        self.diffusion = GaussianDiffusion.from_schedule(
            config.schedule, config.timesteps, config.variance
        )
        model = _denoiser(config, data, conditioned=False).to(device)
        self.ema = ExponentialMovingAverage(model, config.ema_decay)
        self.networks = {"model": model, "ema": self.ema}
        self.optimizers = {"model": self.adam(model)}

    def train_step(self, x: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        model = self.networks["model"]
        loss = self.diffusion.simple_loss(model, x)
        self.update("model", loss, self.learning_rate(step))
        self.ema.update(model, step)
        return {"loss": loss.detach()}

    def evaluate(self, x: torch.Tensor) -> dict[str, float]:
        terms = self.diffusion.negative_bound(self.ema.model, x, levels=self.data.levels)
        metrics = self.likelihood_metrics("bound", -terms["total"])
        metrics["prior_nats"] = terms["prior"].mean().item()
        metrics["decoder_nats"] = terms["decoder"].mean().item()
        return metrics

    def samples(self, count: int) -> torch.Tensor:
        shape = (count, *self.data.train.shape[1:])
        return self.diffusion.sample(
            self.ema.model, shape, device=self.device, clip=self.data.is_image
        )


class VAETask(Task):
    def __init__(self, config: VAEConfig, data: GenerativeData, device: torch.device):
        super().__init__(config, data, device)
        network = _vae_network(config, data).to(device)
        self.vae = _VAEModel(network, config, data)
        self.networks = {"vae": network}
        self.optimizers = {"vae": self.adam(network)}

    def train_step(self, x: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        terms = self.vae.elbo(self.vae.prepare(x))
        loss = -terms["elbo"].mean()
        self.update("vae", loss, self.learning_rate(step))
        return {"loss": loss.detach(), "kl": terms["kl"].mean().detach()}

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor) -> dict[str, float]:
        x = self.vae.prepare(x)
        metrics = self.likelihood_metrics("elbo", self.vae.elbo(x)["elbo"])
        metrics |= self.likelihood_metrics("iwae", self.vae.iwae(x, self.config.iwae_k))
        return metrics

    @torch.no_grad()
    def samples(self, count: int) -> torch.Tensor:
        z = torch.randn(count, self.config.latent_dim, device=self.device)
        return self.vae.mean_image(z)


class GANTask(Task):
    def __init__(self, config: GANConfig, data: GenerativeData, device: torch.device):
        super().__init__(config, data, device)
        if data.is_image:
            channels, size = _image_shape(data)
            generator = ImageGenerator(config.latent_dim, channels, size, config.width)
            critic = ImageCritic(channels, size, config.width)
        else:
            generator = VectorGenerator(config.latent_dim, data.dims, config.hidden)
            critic = VectorCritic(data.dims, config.hidden)
        if is_distributed():
            generator = convert_to_global_batch_norm(generator)  # equal BN statistics on every rank
        generator, critic = generator.to(device), critic.to(device)
        self.ema = ExponentialMovingAverage(generator, config.ema_decay)
        self.networks = {"generator": generator, "critic": critic, "ema": self.ema}
        self.optimizers = {"generator": self.adam(generator), "critic": self.adam(critic)}

    def train_step(self, x: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        generator, critic = self.networks["generator"], self.networks["critic"]
        lr = self.learning_rate(step)
        z = torch.randn(x.shape[0], self.config.latent_dim, device=x.device)
        fake = generator(z)
        if self.config.r1_gamma > 0:
            r1, real_logits = r1_penalty(critic, x)
        else:
            r1, real_logits = torch.zeros((), device=x.device), critic(x)
        loss_critic = critic_loss(real_logits, critic(fake.detach()))
        self.update("critic", loss_critic + self.config.r1_gamma / 2 * r1, lr)
        loss_generator = generator_loss(critic(fake))
        self.update("generator", loss_generator, lr)
        self.ema.update(generator, step)
        return {
            "loss": loss_critic.detach(),
            "generator_loss": loss_generator.detach(),
            "r1": r1.detach(),
        }

    def evaluate(self, x: torch.Tensor) -> dict[str, float]:
        if self.data.toy is None:
            return {}  # images: the loop adds the Frechet distance of the samples
        samples = self.samples(x.shape[0])
        return {"sample_log_density": self.data.toy.log_prob(samples.cpu()).mean().item()}

    @torch.no_grad()
    def samples(self, count: int) -> torch.Tensor:
        return self.ema.model(torch.randn(count, self.config.latent_dim, device=self.device))


class FlowTask(Task):
    bf16 = False  # FlowConfig.precision: the log-determinants stay fp32

    def __init__(self, config: FlowConfig, data: GenerativeData, device: torch.device):
        super().__init__(config, data, device)
        self.flow = FlowDensity(data.dims, list(config.layers)).to(device)
        self.networks = {"flow": self.flow}
        self.optimizers = {"flow": self.adam(self.flow)}

    def log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) for continuous data; for images on ``levels`` values, the dequantisation bound
        log P(x) >= E_u[log p(x + u)] + D log(bin width), u uniform over the bin."""
        if not self.data.is_image:
            return self.flow.log_prob(x)
        width = 2.0 / (self.data.levels - 1)
        noisy = x + (torch.rand_like(x) - 0.5) * width
        return self.flow.log_prob(noisy.flatten(1)) + self.data.dims * math.log(width)

    def train_step(self, x: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        loss = -self.log_likelihood(x).mean()
        self.update("flow", loss, self.learning_rate(step))
        return {"loss": loss.detach()}

    def evaluate(self, x: torch.Tensor) -> dict[str, float]:
        with torch.no_grad():
            return self.likelihood_metrics("log_likelihood", self.log_likelihood(x))

    def samples(self, count: int) -> torch.Tensor:
        return self.flow.sample(count, self.device).view(count, *self.data.train.shape[1:])


class DiffuseVAETask(Task):
    """Stage one (steps < ``vae_steps``) trains the VAE on the ELBO; stage two freezes it and
    trains a DDPM conditioned on its reconstruction decode(z), z ~ q(z|x). The bound of
    theory.md section 5 with c = x_0 is reported as its two terms."""

    def __init__(self, config: DiffuseVAEConfig, data: GenerativeData, device: torch.device):
        super().__init__(config, data, device)
        network = _vae_network(config.vae, data).to(device)
        self.vae = _VAEModel(network, config.vae, data)
        self.diffusion = GaussianDiffusion.from_schedule(
            config.diffusion.schedule, config.diffusion.timesteps, config.diffusion.variance
        )
        model = _denoiser(config.diffusion, data, conditioned=True).to(device)
        self.ema = ExponentialMovingAverage(model, config.diffusion.ema_decay)
        self.networks = {"vae": network, "model": model, "ema": self.ema}
        self.optimizers = {
            "vae": self.adam(network, config.vae_learning_rate),
            "model": self.adam(model),
        }

    def reconstruction(self, x: torch.Tensor) -> torch.Tensor:
        mean, logvar = self.vae.network.encode(self.vae.prepare(x))
        return self.vae.mean_image(reparameterise(mean, logvar))

    def train_step(self, x: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        if step < self.config.vae_steps:
            loss = -self.vae.elbo(self.vae.prepare(x))["elbo"].mean()
            self.update("vae", loss, self.learning_rate(step, self.config.vae_learning_rate))
            return {"loss": loss.detach(), "stage": loss.new_tensor(1.0)}
        self.vae.network.requires_grad_(False)  # frozen in stage two
        with torch.no_grad():
            condition = self.reconstruction(x)
        model = self.networks["model"]
        loss = self.diffusion.simple_loss(model, x, condition)
        self.update("model", loss, self.learning_rate(step - self.config.vae_steps))
        self.ema.update(model, step - self.config.vae_steps)
        return {"loss": loss.detach(), "stage": loss.new_tensor(2.0)}

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor) -> dict[str, float]:
        vae_terms = self.vae.elbo(self.vae.prepare(x))
        ddpm = self.diffusion.negative_bound(
            self.ema.model, x, self.vae.mean_image(vae_terms["z"]), levels=self.data.levels
        )
        metrics = self.likelihood_metrics("vae_term", vae_terms["elbo"])
        metrics |= self.likelihood_metrics("ddpm_term", -ddpm["total"])
        metrics["bound_nats"] = metrics["vae_term_nats"] + metrics["ddpm_term_nats"]
        return metrics

    @torch.no_grad()
    def samples(self, count: int) -> torch.Tensor:
        z = torch.randn(count, self.config.vae.latent_dim, device=self.device)
        condition = self.vae.mean_image(z)
        shape = (count, *self.data.train.shape[1:])
        return self.diffusion.sample(
            self.ema.model, shape, condition, self.device, clip=self.data.is_image
        )


def task_of(kind: str) -> type[Task]:
    """The task of a generative kind: the class whose ``worker`` its registry row names
    (``trainer.contracts.kinds``), the one place a kind is tied to its task."""
    entry = KINDS[kind].entry()
    task = getattr(entry, "__self__", None)
    if not (isinstance(task, type) and issubclass(task, Task)):
        raise ValueError(
            f"kind {kind!r} is not a generative kind (its worker is {KINDS[kind].worker})"
        )
    return task
