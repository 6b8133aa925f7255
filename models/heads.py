"""The SimCLR projection head g(.) of Chen et al. (2020), section 2 and appendix B.

v1 (the default): Linear(d, 2048)-BN-ReLU-Linear(2048, 128)-BN. v2 uses three layers
(``num_layers=3``). As in the official code (``tf2/model.py``, ``LinearLayer``), a linear layer that
feeds a batch norm has no bias (the norm's shift replaces it), and the last batch norm has a scale
but no shift (``center=False``): its shift is held at zero and is not trained.
"""

from __future__ import annotations

import torch
from torch import nn


class ProjectionHead(nn.Module):
    def __init__(
        self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 128, num_layers: int = 2
    ):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {num_layers}")
        layers: list[nn.Module] = []
        previous = in_dim
        for _ in range(num_layers - 1):
            layers += [
                nn.Linear(previous, hidden_dim, bias=False),
                nn.BatchNorm1d(hidden_dim),
                nn.ReLU(inplace=True),
            ]
            previous = hidden_dim
        final_norm = nn.BatchNorm1d(out_dim)
        nn.init.zeros_(final_norm.bias)
        final_norm.bias.requires_grad_(False)
        layers += [nn.Linear(previous, out_dim, bias=False), final_norm]
        self.layers = nn.Sequential(*layers)
        self.out_dim = out_dim

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.layers(h)
