"""Typed configs of the generative job kinds: ``ddpm``, ``vae``, ``gan``, ``diffusevae``, ``flow``.

pydantic only (the service validates submissions with these). Defaults follow each kind's paper:
DDPM (Ho et al. 2020, CIFAR-10: T = 1000, linear betas 1e-4..0.02, U-Net 128 channels x (1, 2, 2, 2),
attention at 16, dropout 0.1, Adam 2e-4, batch 128, warm-up 5,000 steps, gradient clip 1, EMA
0.9999); VAE (Kingma & Welling 2014 / Burda et al. 2016: Adam 1e-3, IWAE evaluation); DCGAN
(Radford et al. 2016: Adam 2e-4, beta1 0.5, batch 128) with R1 (Mescheder et al. 2018, gamma 10 in
the (gamma / 2) E||grad||^2 convention); DiffuseVAE (Pandey et al. 2022: the VAE, then a DDPM on its
reconstruction); flows (theory.md section 2). ``data`` is an image set (``DatasetConfig``) or a 2-D
toy density with a known log-likelihood (``ToyDataConfig``).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from trainer.contracts.config import (
    MAX_BATCH,
    MAX_DIM,
    MAX_IMAGE_SIZE,
    MAX_STEPS,
    MAX_WIDTH,
    DatasetConfig,
    EverySteps,
    KeepCheckpoints,
    LearningRate,
    Precision,
    Seed,
    StrictModel,
)

ToyName = Literal["eight_gaussians", "two_moons", "standard_normal"]

# Bounded numbers of the generative kinds (subclasses that change a default re-use the same type:
# a plain ``steps: int = 800_000`` would drop the parent's bounds).
Steps = Annotated[int, Field(ge=1, le=MAX_STEPS)]
WarmupSteps = Annotated[int, Field(ge=0, le=MAX_STEPS)]
AdamBeta = Annotated[float, Field(ge=0, lt=1)]  # torch.optim.Adam: 0 <= beta < 1
AdamBetas = tuple[AdamBeta, AdamBeta]
GradClip = Annotated[float, Field(gt=0, le=1e6)]
Decay = Annotated[float, Field(ge=0, lt=1)]
ToySize = Annotated[int, Field(ge=16, le=10**7)]


class ToyDataConfig(StrictModel):
    """Samples of a 2-D density whose log-likelihood is computed exactly (trainer.generative.data)."""

    name: ToyName
    train_size: ToySize = 20_000
    test_size: ToySize = 2_000
    seed: Seed = 0


DataConfig = Annotated[DatasetConfig | ToyDataConfig, Field(union_mode="left_to_right")]


class TrainingConfig(StrictModel):
    """What every generative kind shares: data, the Adam optimiser, the step budget, reporting."""

    data: DataConfig = Field(
        description="an image set (digits, cifar10, imagefolder...) or a toy density"
    )
    image_size: int | None = Field(
        default=None,
        ge=8,
        le=MAX_IMAGE_SIZE,
        description="image folders: centre-cropped and resized to this side (default 32)",
    )
    batch_size: int = Field(default=128, ge=2, le=MAX_BATCH, description="GLOBAL batch")
    steps: Steps = 100_000
    learning_rate: LearningRate = 2e-4
    betas: AdamBetas = Field(
        default=(0.9, 0.999), description="Adam's (beta1, beta2), each in [0, 1)"
    )
    warmup_steps: WarmupSteps = Field(default=0, description="linear learning-rate warm-up")
    grad_clip: GradClip | None = Field(default=None, description="clip the global gradient norm")
    seed: Seed = 0
    precision: Precision = "auto"
    log_every_steps: EverySteps = 50
    checkpoint_every_steps: EverySteps = 1_000
    keep_checkpoints: KeepCheckpoints = 2
    eval_every_steps: EverySteps | None = Field(
        default=None, description="evaluate on held-out data (default: at checkpoints)"
    )
    eval_examples: int = Field(
        default=256, ge=1, le=100_000, description="held-out examples per evaluation"
    )
    sample_count: int = Field(
        default=64, ge=1, le=100_000, description="samples in each grid or scatter plot"
    )
    frechet_classifier_steps: int = Field(
        default=300,
        ge=0,
        le=10**7,
        description="labelled image sets: steps of the in-project classifier whose features give the "
        "reported Frechet distance (0: none)",
    )
    inception_weights: str | None = Field(
        default=None,
        description="pytorch-fid's FID Inception-v3 weights as a local file "
        "(pt_inception-2015-12-05-6726825d.pth): also report true FID (never downloaded)",
    )


class UNetConfig(StrictModel):
    base_channels: int = Field(default=128, ge=4, le=MAX_WIDTH)
    channel_mults: tuple[Annotated[int, Field(ge=1, le=64)], ...] = Field(
        default=(1, 2, 2, 2),
        min_length=1,
        max_length=10,
        description="one per resolution level: channels = base_channels x mult",
    )
    blocks_per_resolution: int = Field(default=2, ge=1, le=32)
    attention_resolutions: tuple[Annotated[int, Field(ge=1, le=MAX_IMAGE_SIZE)], ...] = Field(
        default=(16,), max_length=10, description="feature-map sides with self-attention"
    )
    dropout: float = Field(default=0.1, ge=0, lt=1)


class DiffusionSettings(StrictModel):
    schedule: Literal["linear", "cosine"] = "linear"
    timesteps: int = Field(default=1000, ge=2, le=100_000)
    variance: Literal["large", "small"] = Field(
        default="large",
        description="reverse variance: beta_t (large, Ho et al.'s CIFAR-10 choice) or the posterior's "
        "beta~_t (small). Training (L_simple) is the same. Small is tight only for a near-exact "
        "denoiser (two levels, exact denoiser: 0.006 nats from -H against 0.34); large forgives a "
        "learned denoiser's errors at small t (digits, 1,800 steps: 3.28 against 3.60 bits/dim)",
    )
    unet: UNetConfig = Field(default_factory=UNetConfig)
    mlp_hidden: int = Field(default=256, ge=8, le=MAX_DIM, description="2-D data: width of the MLP")
    ema_decay: Decay = 0.9999


class DDPMConfig(TrainingConfig, DiffusionSettings):
    steps: Steps = 800_000
    warmup_steps: WarmupSteps = 5_000
    grad_clip: GradClip | None = 1.0


class VAESettings(StrictModel):
    latent_dim: int = Field(default=32, ge=1, le=MAX_DIM)
    width: int = Field(
        default=32, ge=4, le=MAX_WIDTH, description="first convolution's channels (images)"
    )
    hidden: int = Field(default=128, ge=4, le=MAX_DIM, description="2-D data: MLP width")
    decoder: Literal["bernoulli", "gaussian"] = Field(
        default="gaussian",
        description="bernoulli: dynamically binarised images; gaussian: discretised on the data's "
        "levels for images, a density for 2-D data",
    )
    iwae_k: int = Field(
        default=100,
        ge=1,
        le=100_000,
        description="importance samples of the IWAE bound at evaluation",
    )


class VAEConfig(TrainingConfig, VAESettings):
    learning_rate: LearningRate = 1e-3

    @model_validator(mode="after")
    def _bernoulli_needs_images(self) -> VAEConfig:
        if self.decoder == "bernoulli" and isinstance(self.data, ToyDataConfig):
            raise ValueError(
                "the bernoulli decoder models binarised images; 2-D data needs 'gaussian'"
            )
        return self


class GANConfig(TrainingConfig):
    latent_dim: int = Field(default=100, ge=1, le=MAX_DIM)
    width: int = Field(default=64, ge=4, le=MAX_WIDTH)
    hidden: int = Field(default=128, ge=4, le=MAX_DIM, description="2-D data: MLP width")
    r1_gamma: float = Field(
        default=10.0, ge=0, le=1e6, description="critic loss += (gamma / 2) E_data ||grad_x C||^2"
    )
    betas: AdamBetas = Field(
        default=(0.5, 0.999), description="Adam's (beta1, beta2), each in [0, 1)"
    )
    ema_decay: Decay = 0.999


class DiffuseVAEConfig(TrainingConfig):
    vae: VAESettings = Field(default_factory=VAESettings)
    diffusion: DiffusionSettings = Field(default_factory=DiffusionSettings)
    vae_steps: Steps = Field(default=20_000, description="stage one; the DDPM trains for the rest")
    vae_learning_rate: LearningRate = 1e-3

    @model_validator(mode="after")
    def _both_stages(self) -> DiffuseVAEConfig:
        if self.vae_steps >= self.steps:
            raise ValueError(
                f"vae_steps ({self.vae_steps}) must be below steps ({self.steps}): "
                "stage two (the DDPM) needs steps too"
            )
        return self


class FlowConfig(TrainingConfig):
    layers: list[Literal["radial", "planar", "sigmoidal", "residual"]] = Field(
        default_factory=lambda: ["sigmoidal", "residual"] * 4, min_length=1, max_length=256
    )
    learning_rate: LearningRate = 1e-3
    precision: Literal["auto", "fp32"] = Field(
        default="auto",
        description="fp32 whatever the device: a flow's log-determinants (log|1 + u.psi|, the "
        "residual layers' power series) lose too much in bf16, and its small layers gain nothing",
    )
