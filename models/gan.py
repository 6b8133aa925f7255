"""DCGAN-style networks (Radford et al. 2016): a generator of transposed-convolution-like
upsampling blocks with batch norm and ReLU ending in tanh, and a critic of stride-2 convolutions with
leaky ReLU and no normalisation (the R1 penalty differentiates the critic with respect to its input,
per example). MLP versions for vectors."""

from __future__ import annotations

import math

import torch
from torch import nn

from models.mlp import mlp


def _levels(image_size: int) -> int:
    levels = int(math.log2(image_size // 4))
    if image_size != 4 * 2**levels:
        raise ValueError(
            f"image size must be 4 x a power of 2 (8, 16, 32, 64...), got {image_size}"
        )
    return levels


class ImageGenerator(nn.Module):
    def __init__(self, latent_dim: int, channels: int, image_size: int, width: int = 64):
        super().__init__()
        levels = _levels(image_size)
        ch = width * 2**levels
        layers: list[nn.Module] = [
            nn.Linear(latent_dim, ch * 16, bias=False),
            nn.Unflatten(1, (ch, 4, 4)),
            nn.BatchNorm2d(ch),
            nn.ReLU(),
        ]
        for _ in range(levels):
            layers += [
                nn.Upsample(scale_factor=2),
                nn.Conv2d(ch, ch // 2, 3, padding=1, bias=False),
                nn.BatchNorm2d(ch // 2),
                nn.ReLU(),
            ]
            ch //= 2
        layers += [nn.Conv2d(ch, channels, 3, padding=1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.latent_dim = latent_dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class ImageCritic(nn.Module):
    def __init__(self, channels: int, image_size: int, width: int = 64):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.LeakyReLU(0.2)]
        ch = width
        for _ in range(_levels(image_size)):
            layers += [nn.Conv2d(ch, 2 * ch, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            ch *= 2
        layers += [nn.Flatten(), nn.Linear(ch * 16, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


class VectorGenerator(nn.Module):
    def __init__(self, latent_dim: int, dim: int, hidden: int = 128):
        super().__init__()
        self.net = mlp(latent_dim, hidden, dim, layers=3, activation=nn.ReLU)
        self.latent_dim = latent_dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class VectorCritic(nn.Module):
    def __init__(self, dim: int, hidden: int = 128):
        super().__init__()
        self.net = mlp(dim, hidden, 1, layers=3, activation=lambda: nn.LeakyReLU(0.2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)
