"""Linear evaluation on frozen features (the "fast mode" of the SimCLR protocol, App. B.5).

The encoder is frozen (eval mode, no gradient, batch-norm statistics untouched) and the projection
head is dropped; features of the un-augmented images are extracted once, standardised with the
training set's mean and deviation (an affine map, so the classifier on top stays linear in the
features), and one linear layer is trained with SGD, Nesterov momentum 0.9, lr 0.1 x B/256, no
weight decay and a per-step cosine schedule. Top-1 and top-5 are measured on the test split.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from trainer.data.augment import to_float_images


@dataclass
class ProbeResult:
    """Top-1 and top-5 test accuracy in percent, and how they were obtained."""

    top1: float
    top5: float
    epochs: int
    train_images: int
    test_images: int
    mode: str = "fast"
    seconds: float | None = None


def top_k_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Top-1 and top-5 accuracy (fractions) of ``logits`` (N, K); top-5 is top-K when K < 5."""
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices
    top1 = (top[:, 0] == labels).float().mean().item()
    top5 = (top == labels[:, None]).any(dim=1).float().mean().item()
    return top1, top5


def center_view(images: torch.Tensor, size: int, crop_fraction: float = 1.0) -> torch.Tensor:
    """The evaluation view: resize the shorter side to size / crop_fraction, then centre-crop ``size``.

    ``crop_fraction`` 0.875 is ImageNet's "resize 256, crop 224"; 1.0 uses the whole image (CIFAR,
    digits). Returns float (B, 3, size, size) in [0, 1]; grey images are expanded to 3 channels.
    """
    x = to_float_images(images)
    height, width = x.shape[-2:]
    scale = size / crop_fraction / min(height, width)
    resized = (max(size, round(height * scale)), max(size, round(width * scale)))
    if resized != (height, width):
        x = F.interpolate(
            x, size=resized, mode="bilinear", align_corners=False, antialias=True
        ).clamp_(0, 1)
    top, left = (resized[0] - size) // 2, (resized[1] - size) // 2
    x = x[..., top : top + size, left : left + size]
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    images: torch.Tensor,
    size: int,
    crop_fraction: float = 1.0,
    batch_size: int = 512,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Pooled features (N, d) of uint8 ``images`` (N, C, H, W) under the frozen ``encoder``."""
    was_training = encoder.training
    encoder.eval()
    features = [
        encoder(center_view(images[start : start + batch_size].to(device), size, crop_fraction))
        .float()
        .cpu()
        for start in range(0, images.shape[0], batch_size)
    ]
    encoder.train(was_training)
    return torch.cat(features)


def train_linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    epochs: int = 90,
    batch_size: int = 256,
    base_lr: float = 0.1,
    seed: int = 0,
) -> ProbeResult:
    """Fit a linear classifier on cached features and score it on the test features."""
    mean = train_features.mean(dim=0)
    std = train_features.std(dim=0).clamp_min(1e-6)
    train_x, test_x = (train_features - mean) / std, (test_features - mean) / std
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    generator = torch.Generator().manual_seed(seed)
    classifier = nn.Linear(train_x.shape[1], num_classes)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        classifier.reset_parameters()
    batch_size = min(batch_size, train_x.shape[0])  # a small set: one full batch per epoch
    peak_lr = base_lr * batch_size / 256
    optimizer = torch.optim.SGD(
        classifier.parameters(), lr=peak_lr, momentum=0.9, nesterov=True, weight_decay=0.0
    )
    steps_per_epoch = train_x.shape[0] // batch_size
    total_steps = epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    for _ in range(epochs):
        order = torch.randperm(train_x.shape[0], generator=generator)
        for step in range(steps_per_epoch):
            index = order[step * batch_size : (step + 1) * batch_size]
            loss = F.cross_entropy(classifier(train_x[index]), train_labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    with torch.no_grad():
        top1, top5 = top_k_accuracy(classifier(test_x), test_labels)
    return ProbeResult(100 * top1, 100 * top5, epochs, train_x.shape[0], test_x.shape[0])
