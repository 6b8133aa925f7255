"""Variational auto-encoder networks: a Gaussian encoder q(z|x) and a decoder whose output has
``out_per_dim`` values per data dimension (1: Bernoulli logits; 2: Gaussian mean and log standard
deviation, stacked on dim 1). Convolutional for images, MLP for vectors."""

from __future__ import annotations

import math

import torch
from torch import nn

from models.mlp import mlp


class VAE(nn.Module):
    """``encoder`` maps x to (mean, logvar) stacked on dim 1; ``decoder`` maps z to the decoder's
    output."""

    encoder: nn.Module
    decoder: nn.Module

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)


class VectorVAE(VAE):
    def __init__(self, dim: int, latent_dim: int = 2, hidden: int = 128, out_per_dim: int = 2):
        super().__init__()
        self.encoder = mlp(dim, hidden, 2 * latent_dim, layers=2)
        self.decoder = mlp(latent_dim, hidden, out_per_dim * dim, layers=2)
        self.latent_dim = latent_dim


class ConvVAE(VAE):
    """Stride-2 convolutions down to 4x4, a linear map to (mean, logvar); the decoder mirrors it
    with nearest-neighbour upsampling."""

    def __init__(
        self,
        channels: int,
        image_size: int,
        latent_dim: int = 16,
        width: int = 32,
        out_per_dim: int = 2,
    ):
        super().__init__()
        downs = int(math.log2(image_size // 4))
        if image_size != 4 * 2**downs:
            raise ValueError(
                f"image size must be 4 x a power of 2 (8, 16, 32, 64...), got {image_size}"
            )
        encoder: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.SiLU()]
        ch = width
        for _ in range(downs):
            encoder += [nn.Conv2d(ch, 2 * ch, 4, stride=2, padding=1), nn.SiLU()]
            ch *= 2
        self.encoder = nn.Sequential(*encoder, nn.Flatten(), nn.Linear(ch * 16, 2 * latent_dim))
        decoder: list[nn.Module] = [nn.Linear(latent_dim, ch * 16), nn.Unflatten(1, (ch, 4, 4))]
        for _ in range(downs):
            decoder += [
                nn.SiLU(),
                nn.Upsample(scale_factor=2),
                nn.Conv2d(ch, ch // 2, 3, padding=1),
            ]
            ch //= 2
        decoder += [nn.SiLU(), nn.Conv2d(ch, out_per_dim * channels, 3, padding=1)]
        self.decoder = nn.Sequential(*decoder)
        self.latent_dim = latent_dim
