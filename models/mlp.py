"""Small multi-layer perceptrons for 2-D (vector) data: the generative kinds' networks there."""

from __future__ import annotations

import torch
from torch import nn

from models.unet import timestep_embedding


def mlp(
    in_dim: int, hidden: int, out_dim: int, layers: int = 3, activation=nn.SiLU
) -> nn.Sequential:
    """``layers`` hidden layers of width ``hidden`` with ``activation``, then a linear output."""
    modules: list[nn.Module] = []
    previous = in_dim
    for _ in range(layers):
        modules += [nn.Linear(previous, hidden), activation()]
        previous = hidden
    modules.append(nn.Linear(previous, out_dim))
    return nn.Sequential(*modules)


class TimeConditionedMLP(nn.Module):
    """eps_theta(x_t, t, c) for vectors: [x_t, c, embed(t)] through an MLP."""

    def __init__(self, dim: int, hidden: int = 256, layers: int = 3, cond_dim: int = 0):
        super().__init__()
        self.time_dim = hidden
        self.time = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.net = mlp(dim + cond_dim + hidden, hidden, dim, layers)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None):
        parts = [x, self.time(timestep_embedding(t, self.time_dim))]
        if cond is not None:
            parts.insert(1, cond)
        return self.net(torch.cat(parts, dim=1))
