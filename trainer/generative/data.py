"""The data of the generative kinds, as float tensors held in memory.

Images are mapped to [-1, 1] on the data's own quantisation grid: ``levels`` evenly spaced values
(256 for 8-bit images; 17 for scikit-learn's digits, whose pixels take the values 0..16), so that the
discretised likelihoods and bits/dim are those of the data as recorded. Image folders are
centre-cropped and resized to a square side and held in memory (sets of up to some 100,000 small
images).

Toy densities are 2-D with an exact log-density: ``eight_gaussians`` (a mixture of eight isotropic
Gaussians, std 0.1, on the circle of radius 2), ``two_moons`` (points uniform along scikit-learn's
two half-circles plus Gaussian noise of std 0.1; the density integrates the noise along the arcs by
quadrature) and ``standard_normal`` (entropy 1 + ln 2 pi nats).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision.transforms.v2.functional as TF

from trainer.contracts.config import DatasetConfig
from trainer.contracts.generative import ToyDataConfig
from trainer.data.datasets import (
    ImageFolderImages,
    InMemoryImages,
    UnreadableImage,
    build_dataset,
    confine_dataset,
)
from trainer.generative.gaussian import gaussian_log_density

DEFAULT_FOLDER_SIDE = 32
DIGITS_LEVELS = 17
TOY_NOISE = 0.1
MOON_QUADRATURE_POINTS = 1_000


@dataclass
class GenerativeData:
    """``train`` and ``test`` float tensors; ``levels`` for quantised images, None for continuous
    data; ``labels`` of the train and test images when the set has classes."""

    train: torch.Tensor
    test: torch.Tensor
    levels: int | None
    train_labels: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None
    toy: ToyDensity | None = None

    @property
    def is_image(self) -> bool:
        return self.train.dim() == 4

    @property
    def dims(self) -> int:
        return self.train[0].numel()


def to_unit_interval_grid(images: torch.Tensor, levels: int) -> torch.Tensor:
    """uint8 images -> float on the ``levels``-value grid of [-1, 1]."""
    index = torch.round(images.float() * (levels - 1) / 255.0)
    return index * (2.0 / (levels - 1)) - 1.0


def _folder_images(dataset: ImageFolderImages, side: int) -> InMemoryImages:
    images, labels = [], []
    for index in range(len(dataset)):
        image, label = dataset[index]
        if isinstance(image, UnreadableImage):
            continue
        short = min(image.shape[-2:])
        image = TF.center_crop(image, [short, short])
        images.append(TF.resize(image, [side, side], antialias=True))
        labels.append(label)
    if not images:
        raise ValueError(f"no readable image under {dataset.root}")
    return InMemoryImages(torch.stack(images), torch.tensor(labels), dataset.classes)


def _plain_folder(config: DatasetConfig) -> bool:
    """An image folder without a val split (``load_images`` splits it 90/10)."""
    return config.name == "imagefolder" and not (Path(str(config.root)) / "val").is_dir()


def load_images(
    config: DatasetConfig, image_size: int | None, roots: Sequence[str] | None = None
) -> GenerativeData:
    """The train and test splits of an image set on [-1, 1]; a plain image folder without a val
    split is split 90/10 with a fixed seed. ``roots``: every folder and file read must resolve
    under one of these (None: unconfined; ``trainer.data.datasets.build_dataset``)."""
    levels = DIGITS_LEVELS if config.name == "digits" else 256
    side = image_size or DEFAULT_FOLDER_SIDE
    config = confine_dataset(config, roots)

    def split(name: str) -> InMemoryImages:
        dataset = build_dataset(config, name, roots)
        if isinstance(dataset, ImageFolderImages):
            return _folder_images(dataset, side)
        return dataset

    train = split("train")
    plain_folder = _plain_folder(config)
    if not plain_folder:
        test = split("test")
    else:
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
        cut = max(1, len(train) // 10)
        test = InMemoryImages(train.images[order[:cut]], train.labels[order[:cut]], train.classes)
        train = InMemoryImages(train.images[order[cut:]], train.labels[order[cut:]], train.classes)
    return GenerativeData(
        to_unit_interval_grid(train.images, levels), to_unit_interval_grid(test.images, levels),
        levels, train.labels, test.labels,
    )  # fmt: skip


class ToyDensity:
    """A 2-D density: ``sample(n, generator)`` and the exact ``log_prob(x)``."""

    def __init__(self, name: str):
        if name not in ("eight_gaussians", "two_moons", "standard_normal"):
            raise ValueError(f"unknown toy density {name!r}")
        self.name = name

    def _arc_points(self) -> torch.Tensor:
        """Quadrature nodes along both moons (midpoint rule), (2M, 2)."""
        theta = (
            (torch.arange(MOON_QUADRATURE_POINTS, dtype=torch.float64) + 0.5)
            * math.pi
            / MOON_QUADRATURE_POINTS
        )
        outer = torch.stack([torch.cos(theta), torch.sin(theta)], dim=1)
        inner = torch.stack([1 - torch.cos(theta), 0.5 - torch.sin(theta)], dim=1)
        return torch.cat([outer, inner])

    def _centres(self) -> torch.Tensor:
        angles = torch.arange(8, dtype=torch.float64) * math.pi / 4
        return 2 * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)

    def sample(self, count: int, generator: torch.Generator) -> torch.Tensor:
        if self.name == "standard_normal":
            return torch.randn(count, 2, generator=generator, dtype=torch.float64).float()
        if self.name == "eight_gaussians":
            centres = self._centres()[torch.randint(0, 8, (count,), generator=generator)]
        else:
            theta = torch.rand(count, generator=generator, dtype=torch.float64) * math.pi
            inner = torch.rand(count, generator=generator) < 0.5
            outer_point = torch.stack([torch.cos(theta), torch.sin(theta)], dim=1)
            inner_point = torch.stack([1 - torch.cos(theta), 0.5 - torch.sin(theta)], dim=1)
            centres = torch.where(inner[:, None], inner_point, outer_point)
        noise = torch.randn(count, 2, generator=generator, dtype=torch.float64) * TOY_NOISE
        return (centres + noise).float()

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) per point (nats), in float64."""
        x = x.double()
        if self.name == "standard_normal":
            return gaussian_log_density(x, 0.0, 0.0).sum(1)
        centres = self._centres() if self.name == "eight_gaussians" else self._arc_points()
        log_noise = math.log(TOY_NOISE**2)
        per_centre = gaussian_log_density(x[:, None, :], centres[None], log_noise).sum(2)
        return torch.logsumexp(per_centre, dim=1) - math.log(centres.shape[0])

    def entropy(self, samples: int = 50_000, seed: int = 12345) -> float:
        """H = -E log p: exact for the standard normal, Monte Carlo otherwise (standard error about
        0.005 nats; computed once per process)."""
        return _entropy(self.name, samples, seed)


@functools.cache
def _entropy(name: str, samples: int, seed: int) -> float:
    if name == "standard_normal":
        return 1 + math.log(2 * math.pi)
    density = ToyDensity(name)
    points = density.sample(samples, torch.Generator().manual_seed(seed))
    return -torch.cat([density.log_prob(chunk) for chunk in points.split(5_000)]).mean().item()


def load_toy(config: ToyDataConfig) -> GenerativeData:
    density = ToyDensity(config.name)
    generator = torch.Generator().manual_seed(config.seed)
    train = density.sample(config.train_size, generator)
    test = density.sample(config.test_size, generator)
    return GenerativeData(train, test, None, toy=density)


def load_generative_data(
    data: DatasetConfig | ToyDataConfig, image_size: int | None,
    roots: Sequence[str] | None = None,
) -> GenerativeData:  # fmt: skip
    """The data of a generative job; ``roots``: the data roots image files must lie under."""
    if isinstance(data, ToyDataConfig):
        return load_toy(data)
    return load_images(data, image_size, roots)
