"""Encoders that map images to pooled feature vectors.

Every backbone here is an ``nn.Module`` whose ``forward(x)`` takes a float batch (B, C, H, W) and
returns pooled features (B, feature_dim), and which carries that width as ``feature_dim``. The
projection head and the linear probe only need those two facts.
"""

from __future__ import annotations

from typing import Literal

import torch
import torchvision
from torch import nn

ResNetName = Literal["resnet18", "resnet34", "resnet50"]
BackboneName = Literal["resnet18", "resnet34", "resnet50", "small_cnn"]


class ResNetBackbone(nn.Module):
    """A torchvision ResNet without its classifier, returning the globally pooled features.

    With ``cifar_stem`` the 7x7 stride-2 convolution and the max-pool are replaced by a 3x3 stride-1
    convolution and no pooling, the stem the SimCLR paper uses for CIFAR-10 (App. B.9), so that
    32-px inputs are not reduced to 8 px before the first residual stage.
    """

    def __init__(
        self, name: ResNetName = "resnet50", cifar_stem: bool = False, in_channels: int = 3
    ):
        super().__init__()
        net: torchvision.models.ResNet = getattr(torchvision.models, name)(weights=None)
        if cifar_stem:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.feature_dim: int = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """A four-block convolutional encoder for 8-32 px inputs (tests, the digits demo).

    Each block is Conv3x3-BN-ReLU; blocks two and three halve the resolution, and a global average
    pool gives ``feature_dim`` features whatever the input size.
    """

    def __init__(self, in_channels: int = 3, width: int = 64):
        super().__init__()
        widths = (width, width * 2, width * 4, width * 4)
        strides = (1, 2, 2, 1)
        layers: list[nn.Module] = []
        previous = in_channels
        for channels, stride in zip(widths, strides, strict=True):
            layers += [
                nn.Conv2d(previous, channels, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
            ]
            previous = channels
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim: int = previous

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x)).flatten(1)


def build_backbone(
    name: BackboneName, cifar_stem: bool = False, in_channels: int = 3, width: int = 64
) -> ResNetBackbone | SmallCNN:
    """The backbone called ``name``; ``width`` applies to the small CNN, ``cifar_stem`` to ResNets."""
    if name == "small_cnn":
        return SmallCNN(in_channels=in_channels, width=width)
    if name in ("resnet18", "resnet34", "resnet50"):
        return ResNetBackbone(name, cifar_stem=cifar_stem, in_channels=in_channels)
    raise ValueError(
        f"unknown backbone {name!r}: expected one of resnet18, resnet34, resnet50, small_cnn"
    )
