"""Pure ``nn.Module`` definitions: backbones, heads and generative networks. No training logic."""

from models.backbones import ResNetBackbone, SmallCNN, build_backbone
from models.heads import ProjectionHead
from models.simclr import SimCLRNet

__all__ = ["ProjectionHead", "ResNetBackbone", "SimCLRNet", "SmallCNN", "build_backbone"]
