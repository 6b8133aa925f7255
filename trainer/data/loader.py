"""Batches of uint8 images for the training loops, resumable at any step, exact under sharding.

An epoch is a seeded permutation of the dataset cut into ``len // global_batch`` global batches
(the last partial batch is dropped, so every rank runs the same number of steps). Rank r of W takes
the r-th contiguous slice of each global batch, so the union over ranks of one step is exactly one
global batch whatever W is, and ``start_batch`` resumes an epoch at any step without reading the
skipped images.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from trainer.data.datasets import InMemoryImages, UnreadableImage


@dataclass
class Batch:
    """``images`` uint8 (B, C, H, W); ``sizes`` (B, 2) valid (h, w) when images were padded to a canvas;
    ``skipped`` counts unreadable images dropped from this batch."""

    images: torch.Tensor
    labels: torch.Tensor
    sizes: torch.Tensor | None = None
    skipped: int = 0

    def pin_memory(self) -> Batch:
        """Called by the DataLoader's pinning thread when ``pin_memory=True``."""
        sizes = self.sizes.pin_memory() if self.sizes is not None else None
        return Batch(self.images.pin_memory(), self.labels.pin_memory(), sizes, self.skipped)


def steps_per_epoch(num_images: int, global_batch: int) -> int:
    steps = num_images // global_batch
    if steps == 0:
        raise ValueError(
            f"the dataset has {num_images} images, fewer than one global batch of {global_batch}"
        )
    return steps


class EpochBatches(Sampler[list[int]]):
    """The index lists this rank reads in one epoch, from batch ``start_batch`` on."""

    def __init__(
        self,
        num_images: int,
        global_batch: int,
        *,
        seed: int,
        epoch: int,
        rank: int = 0,
        world_size: int = 1,
        start_batch: int = 0,
    ):
        if global_batch % world_size:
            raise ValueError(
                f"global batch {global_batch} is not divisible by {world_size} workers"
            )
        self.steps = steps_per_epoch(num_images, global_batch)
        if not 0 <= start_batch <= self.steps:
            raise ValueError(f"start_batch {start_batch} outside the epoch's {self.steps} batches")
        self.num_images = num_images
        self.global_batch = global_batch
        self.local_batch = global_batch // world_size
        self.seed, self.epoch, self.rank, self.start_batch = seed, epoch, rank, start_batch

    def __len__(self) -> int:
        return self.steps - self.start_batch

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.num_images, generator=generator)
        for step in range(self.start_batch, self.steps):
            begin = step * self.global_batch + self.rank * self.local_batch
            yield order[begin : begin + self.local_batch].tolist()


def epoch_samplers(
    num_images: int, global_batch: int, *, seed: int, rank: int = 0, world_size: int = 1,
    start_step: int = 0,
) -> Iterator[EpochBatches]:  # fmt: skip
    """This rank's ``EpochBatches`` of every epoch from global step ``start_step`` on, without end:
    the first starts mid-epoch at that step's batch (a resumed run reads nothing twice)."""
    epoch, first_batch = divmod(start_step, steps_per_epoch(num_images, global_batch))
    while True:
        yield EpochBatches(
            num_images, global_batch, seed=seed, epoch=epoch,
            rank=rank, world_size=world_size, start_batch=first_batch,
        )  # fmt: skip
        epoch, first_batch = epoch + 1, 0


def collate_padded(items: list[tuple[torch.Tensor | UnreadableImage, int]]) -> Batch:
    """Stack images of different sizes at the top-left of a zero canvas; drop unreadable ones.

    The canvas is channels-last in memory, the layout the decoder gives each image (height, width,
    channels): copying into it is a straight copy, and the augmentation's crop-by-crop resize
    reads it without a conversion (``trainer.data.augment.interpolated_crops``)."""
    kept = [(image, label) for image, label in items if isinstance(image, torch.Tensor)]
    skipped = len(items) - len(kept)
    if not kept:
        empty = torch.empty(0, dtype=torch.long)
        return Batch(torch.empty(0, 3, 1, 1, dtype=torch.uint8), empty, empty.view(0, 2), skipped)
    sizes = torch.tensor([list(image.shape[-2:]) for image, _ in kept])
    height, width = sizes.max(dim=0).values.tolist()
    canvas = torch.zeros(len(kept), height, width, kept[0][0].shape[0], dtype=torch.uint8)
    canvas = canvas.permute(0, 3, 1, 2)
    for i, (image, _) in enumerate(kept):
        canvas[i, :, : image.shape[1], : image.shape[2]] = image
    return Batch(canvas, torch.tensor([label for _, label in kept]), sizes, skipped)


def iterate_batches(
    dataset: Dataset, batches: EpochBatches, loader_workers: int = 0
) -> Iterator[Batch]:
    """Yield this rank's batches: by indexing for in-memory sets, through a DataLoader otherwise."""
    if isinstance(dataset, InMemoryImages):
        for indices in batches:
            index = torch.tensor(indices)
            yield Batch(dataset.images[index], dataset.labels[index])
        return
    loader = DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=loader_workers,
        collate_fn=collate_padded,
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=4 if loader_workers else None,
    )
    yield from loader
