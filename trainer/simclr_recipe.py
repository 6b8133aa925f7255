"""SimCLR pieces shared by every runner (the single-process ``trainer.pretrain`` and the Ray workers):
building the network and optimiser from a config, the learning-rate schedule, and the loss of a batch.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim import SGD, Optimizer

from models import ProjectionHead, SimCLRNet, build_backbone
from trainer.contracts.config import SimCLRConfig
from trainer.data.augment import SimCLRAugment
from trainer.losses import nt_xent
from trainer.optim import LARS, lars_param_groups, scaled_learning_rate, warmup_cosine
from trainer.precision import autocast_for


def build_model(config: SimCLRConfig) -> SimCLRNet:
    """Encoder and projection head; inputs are always 3-channel (the augmentation expands grey)."""
    backbone = build_backbone(
        config.backbone.name, config.backbone.cifar_stem, width=config.backbone.width
    )
    head = ProjectionHead(
        backbone.feature_dim, config.head.hidden_dim, config.head.out_dim, config.head.num_layers
    )
    return SimCLRNet(backbone, head)


def build_augment(config: SimCLRConfig) -> SimCLRAugment:
    return SimCLRAugment(
        config.dataset.view_size,
        strength=config.augment.strength,
        blur=config.augment.blur,
        compile=config.augment.compile,
    )


def build_optimizer(model: nn.Module, config: SimCLRConfig) -> Optimizer:
    """LARS (or SGD) over the two parameter groups: biases and norm parameters get no decay (nor LARS)."""
    opt = config.optimizer
    groups = lars_param_groups(model, opt.weight_decay)
    if opt.name == "lars":
        return LARS(groups, lr=0.0, momentum=opt.momentum, eta=opt.eta)
    return SGD(groups, lr=0.0, momentum=opt.momentum)


class LearningRateSchedule:
    """Per-iteration learning rate: the config's scaled peak, linear warm-up, cosine decay to 0
    at ``config.schedule_steps`` (``epochs``, or ``train_steps`` where given)."""

    def __init__(self, config: SimCLRConfig, steps_per_epoch: int):
        opt = config.optimizer
        self.peak = scaled_learning_rate(opt.resolved_base_lr, config.batch_size, opt.lr_scaling)
        self.warmup_steps = round(opt.warmup_epochs * steps_per_epoch)
        self.total_steps = config.schedule_steps(steps_per_epoch)

    def __call__(self, step: int) -> float:
        return warmup_cosine(step, self.peak, self.warmup_steps, self.total_steps)


def use_channels_last(config: SimCLRConfig, device: torch.device) -> bool:
    """``config.channels_last``, or by default: on CUDA only."""
    return config.channels_last if config.channels_last is not None else device.type == "cuda"


def model_layout(views: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """Views in the memory layout of the model's weights (``use_channels_last``)."""
    return views.contiguous(memory_format=torch.channels_last) if channels_last else views


def simclr_loss(
    model: nn.Module,
    augment: SimCLRAugment,
    images: torch.Tensor,
    sizes: torch.Tensor | None,
    temperature: float,
    precision: str = "fp32",
    channels_last: bool = False,
) -> torch.Tensor:
    """Augment a uint8 batch into two views on its device, embed both in one forward pass (batch
    statistics over all 2n views, as in the official code), and return the NT-Xent loss."""
    view_a, view_b = augment(images, sizes)
    views = model_layout(torch.cat([view_a, view_b]), channels_last)
    with autocast_for(precision, views.device):
        z = model(views)
    z_a, z_b = z.chunk(2)
    return nt_xent(z_a, z_b, temperature)
