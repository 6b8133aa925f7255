"""Where a training loop's batches come from, chosen by ``DatasetConfig.loader``.

A source yields this rank's ``Batch``es from a given global step on, across epochs, until the
loop stops asking; every rank gets the same number of batches per epoch.

- ``IndexedSource`` (``torch``): ``EpochBatches`` over an indexable data set, decoded by a
  DataLoader in worker processes; resumes at any step without reading the skipped images.
- ``SyntheticSource`` (``synthetic``): random uint8 images made on the training device, with the
  canvas and valid sizes the real path would deliver: no reading and no decoding, the ceiling of
  the trainer itself.
- ``RayDataSource`` (``ray_data``): this rank's shard of the Ray Data stream of packed shards
  (``trainer.data.ray_data``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import torch
from torch.utils.data import Dataset

from trainer.contracts.config import DatasetConfig
from trainer.data.datasets import build_dataset
from trainer.data.loader import Batch, epoch_samplers, iterate_batches


class BatchSource(Protocol):
    num_images: int

    def batches(self, start_step: int) -> Iterator[Batch]:
        """This rank's batches from global step ``start_step`` on."""


class IndexedSource:
    def __init__(
        self,
        dataset: Dataset,
        global_batch: int,
        seed: int,
        rank: int,
        world_size: int,
        loader_workers: int,
    ):
        self.dataset, self.num_images = dataset, len(dataset)
        self.global_batch, self.seed, self.rank, self.world = global_batch, seed, rank, world_size
        self.loader_workers = loader_workers

    def batches(self, start_step: int) -> Iterator[Batch]:
        for sampler in epoch_samplers(
            self.num_images, self.global_batch, seed=self.seed, rank=self.rank,
            world_size=self.world, start_step=start_step,
        ):  # fmt: skip
            yield from iterate_batches(self.dataset, sampler, self.loader_workers)


class SyntheticSource:
    """Uniform-noise images on ``canvas`` x ``canvas`` with valid sizes between half the canvas and
    all of it (photo folders), or full small images (the small sets); channels-last in memory, as
    decoded images come from the folder loader and Ray Data."""

    def __init__(self, config: DatasetConfig, local_batch: int, device: torch.device, seed: int):
        photo = config.name in ("imagenet", "imagefolder", "packed")
        self.canvas = config.max_side if photo else config.view_size
        self.photo = photo
        self.num_images = config.synthetic_images
        self.local_batch, self.device = local_batch, device
        self.generator = torch.Generator(device).manual_seed(seed)

    def batches(self, start_step: int) -> Iterator[Batch]:
        shape = (self.local_batch, self.canvas, self.canvas, 3)
        labels = torch.zeros(self.local_batch, dtype=torch.long, device=self.device)
        while True:
            images = torch.randint(
                0, 256, shape, dtype=torch.uint8, device=self.device, generator=self.generator
            ).permute(0, 3, 1, 2)
            sizes = None
            if self.photo:
                low = self.canvas // 2
                sizes = torch.randint(
                    low,
                    self.canvas + 1,
                    (self.local_batch, 2),
                    device=self.device,
                    generator=self.generator,
                )
            yield Batch(images, labels, sizes)


def build_source(
    config: DatasetConfig, global_batch: int, seed: int, rank: int, world_size: int,
    device: torch.device, dataset: Dataset | None = None, roots: Sequence[str] | None = None,
) -> BatchSource:  # fmt: skip
    """The source ``config.loader`` names, for one process (the ray_data source is built by the
    driver's worker loop, from the Ray Train dataset shard). ``roots``: the data roots every file
    read must lie under (None: unconfined; ``trainer.data.datasets.build_dataset``)."""
    if config.loader == "synthetic":
        return SyntheticSource(config, global_batch // world_size, device, seed + 1 + rank)
    if config.loader == "ray_data":
        raise ValueError("the ray_data loader streams packed shards to the workers of a Ray job: run "
                         "it through the service or trainer.driver")  # fmt: skip
    if dataset is None:
        dataset = build_dataset(config, "train", roots)
    return IndexedSource(dataset, global_batch, seed, rank, world_size, config.loader_workers)
