"""The DDPM noise-prediction U-Net (Ho et al. 2020, appendix B), sized by its config.

Wide residual blocks (GroupNorm, SiLU, the time embedding added after the first convolution,
dropout), a stride-2 convolution down and nearest-neighbour upsampling then a convolution up, skip
connections between the matching resolutions, and single-head self-attention at the resolutions in
``attention_resolutions``. Ho et al.'s CIFAR-10 network: 128 channels, multipliers (1, 2, 2, 2),
2 blocks per resolution, attention at 16x16, dropout 0.1. A conditioning image (DiffuseVAE's
reconstruction) is concatenated to the input channels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer sinusoidal embedding of integer steps: (B,) -> (B, dim)."""
    half = dim // 2
    frequencies = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device) / half)
    angles = t.float()[:, None] * frequencies[None]
    embedding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    return F.pad(embedding, (0, dim % 2))


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels // 4) or 1, channels)


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, time_dim: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = _norm(in_ch), nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.time = nn.Linear(time_dim, out_ch)
        self.norm2, self.conv2 = _norm(out_ch), nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time(time)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Attention(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, time: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        attended = F.scaled_dot_product_attention(
            q.transpose(1, 2)[:, None], k.transpose(1, 2)[:, None], v.transpose(1, 2)[:, None]
        )[:, 0]
        return x + self.out(attended.transpose(1, 2).reshape(b, c, h, w))


class UNet(nn.Module):
    def __init__(
        self,
        channels: int = 3,
        image_size: int = 32,
        base_channels: int = 128,
        channel_mults: tuple[int, ...] = (1, 2, 2, 2),
        blocks_per_resolution: int = 2,
        attention_resolutions: tuple[int, ...] = (16,),
        dropout: float = 0.1,
        cond_channels: int = 0,
    ):
        super().__init__()
        if image_size % 2 ** (len(channel_mults) - 1):
            raise ValueError(
                f"image size {image_size} is not divisible by 2^{len(channel_mults) - 1} "
                f"({len(channel_mults)} resolutions)"
            )
        time_dim = 4 * base_channels
        self.base_channels = base_channels
        self.time = nn.Sequential(
            nn.Linear(base_channels, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim)
        )
        self.stem = nn.Conv2d(channels + cond_channels, base_channels, 3, padding=1)
        self.down = nn.ModuleList()
        skips, ch, size = [base_channels], base_channels, image_size
        for level, mult in enumerate(channel_mults):
            for _ in range(blocks_per_resolution):
                self.down.append(ResBlock(ch, base_channels * mult, time_dim, dropout))
                ch = base_channels * mult
                if size in attention_resolutions:
                    self.down.append(Attention(ch))
                skips.append(ch)
            if level < len(channel_mults) - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
                size //= 2
        self.middle = nn.ModuleList(
            [
                ResBlock(ch, ch, time_dim, dropout),
                Attention(ch),
                ResBlock(ch, ch, time_dim, dropout),
            ]
        )
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mults))):
            for _ in range(blocks_per_resolution + 1):
                self.up.append(ResBlock(ch + skips.pop(), base_channels * mult, time_dim, dropout))
                ch = base_channels * mult
                if size in attention_resolutions:
                    self.up.append(Attention(ch))
            if level > 0:
                self.up.append(
                    nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(ch, ch, 3, padding=1))
                )
                size *= 2
        self.head = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(ch, channels, 3, padding=1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None):
        time = self.time(timestep_embedding(t, self.base_channels))
        h = self.stem(x if cond is None else torch.cat([x, cond], dim=1))
        stack = [h]
        for layer in self.down:
            h = layer(h, time) if isinstance(layer, (ResBlock, Attention)) else layer(h)
            if not isinstance(layer, Attention):
                stack.append(h)
            else:
                stack[-1] = h
        for layer in self.middle:
            h = layer(h, time)
        for layer in self.up:
            if isinstance(layer, ResBlock):
                h = layer(torch.cat([h, stack.pop()], dim=1), time)
            elif isinstance(layer, Attention):
                h = layer(h)
            else:
                h = layer(h)
        return self.head(h)
