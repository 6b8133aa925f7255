"""The SimCLR network: an encoder f(.) followed by a projection head g(.)."""

from __future__ import annotations

import torch
from torch import nn

from models.backbones import ResNetBackbone, SmallCNN
from models.heads import ProjectionHead


class SimCLRNet(nn.Module):
    """``forward(x)`` returns the projection z = g(f(x)); ``encode(x)`` the representation h = f(x)."""

    def __init__(self, backbone: ResNetBackbone | SmallCNN, head: ProjectionHead):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))
