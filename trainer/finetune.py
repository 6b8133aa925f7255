"""The fine-tuning evaluation job (kind ``finetune``): the paper's semi-supervised protocol (Chen
et al. 2020, App. B.6, its semi-supervised table).

The pretrained encoder (projection head dropped) and a new linear layer on its features are
trained together on a class-balanced fraction of the training labels (``label_fraction``, seeded)
or on the images a ``label_subset`` file lists (the official ImageNet 1 % and 10 % lists). Nesterov
momentum 0.9, lr = ``base_lr`` x B/256 (0.05: the paper's 0.8 at B = 4096) decayed by a per-step
cosine without warm-up, no weight decay, views by random-resized crop and horizontal flip only;
60 epochs on 1 % of the labels, 30 on 10 %. The encoder trains in train mode: its batch norms
update (global across the workers, as in pretraining). Test: top-1 and top-5 on the centre view
of the whole test split.

Data-parallel over the job's workers (``session.prepare_model``), checkpointed at every epoch's
end, so a run whose worker is lost resumes at the last finished epoch with the same data order
and augmentation draws as an uninterrupted run.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset

from trainer.contracts.config import FinetuneConfig, SimCLRConfig
from trainer.contracts.spec import JobSpec
from trainer.data.confine import read_listing
from trainer.data.datasets import ImageFolderImages, InMemoryImages, build_dataset
from trainer.data.loader import EpochBatches, iterate_batches
from trainer.distributed import mean_over_ranks
from trainer.linear_probe import crop_flip_augment, load_encoder, sharded_test_accuracy
from trainer.optim import set_learning_rate
from trainer.precision import at_least_fp32, autocast_for, resolve_precision
from trainer.session import TrainingSession
from trainer.simclr_recipe import build_model

log = logging.getLogger(__name__)

# An image list is a few MB at most (ImageNet's 10 % list: 128,116 names, about 3 MB).
MAX_IMAGE_LIST_BYTES = 64 << 20


def balanced_subset(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Sorted indices of a class-balanced ``fraction`` of ``labels``: from each class with n
    images, round(fraction x n) of them (at least one), drawn without replacement by ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label in labels.unique(sorted=True).tolist():
        members = (labels == label).nonzero().flatten()
        count = max(1, round(fraction * len(members)))
        chosen.append(members[torch.randperm(len(members), generator=generator)[:count]])
    return torch.cat(chosen).sort().values


def listed_subset(
    dataset: ImageFolderImages, path: str | Path, roots: Sequence[str] | None
) -> torch.Tensor:
    """Sorted indices of the images the file at ``path`` lists, one per line by file name or by
    path below the split's folder (blank lines and ``#`` comments ignored). The file must lie
    under ``roots`` (None: unconfined) and every line must name an image of the split; errors
    give line numbers and counts, never the file's text."""
    lines = read_listing(path, roots, "label subset", MAX_IMAGE_LIST_BYTES).splitlines()
    index: dict[str, int] = {}
    root = Path(os.path.realpath(dataset.root))  # the samples' paths are resolved ones
    for i, (image, _) in enumerate(dataset.samples):
        index.setdefault(Path(image).name, i)
        if Path(image).is_relative_to(root):  # a linked file elsewhere: by its name only
            index[Path(image).relative_to(root).as_posix()] = i
    chosen, missing = set(), []
    for number, line in enumerate(lines, 1):
        name = line.strip()
        if not name or name.startswith("#"):
            continue
        if name in index:
            chosen.add(index[name])
        else:
            missing.append(number)
    if missing:
        raise ValueError(
            f"label subset {path}: {len(missing)} line(s) name no image of {dataset.root} "
            f"(first at line {missing[0]})"
        )
    if not chosen:
        raise ValueError(f"label subset {path} lists no image")
    return torch.tensor(sorted(chosen))


def labelled_images(dataset, config: FinetuneConfig, roots: Sequence[str] | None):
    """The training images that keep their label: an in-memory set of them, or a ``Subset``."""
    if config.label_subset:
        if not isinstance(dataset, ImageFolderImages):
            raise ValueError("label_subset applies to image folders")
        indices = listed_subset(dataset, config.label_subset, roots)
    else:
        indices = balanced_subset(dataset.labels, config.label_fraction, config.seed)
    if isinstance(dataset, InMemoryImages):
        return InMemoryImages(dataset.images[indices], dataset.labels[indices], dataset.classes)
    subset = Subset(dataset, indices.tolist())
    subset.labels = dataset.labels[indices]  # what the loop reads of an in-memory set, too
    return subset


class Classifier(nn.Module):
    """The encoder and the new linear layer on its features: what fine-tuning trains."""

    def __init__(self, encoder: nn.Module, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.linear = nn.Linear(encoder.feature_dim, num_classes)

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        return self.linear(self.encoder(views))


def run_finetune(spec: JobSpec, session: TrainingSession) -> dict | None:
    """Fine-tune ``spec.config``'s checkpoint on its data set (``fine_tune``); the result on rank
    0, None on the other ranks."""
    config: FinetuneConfig = spec.config
    train = build_dataset(config.dataset, "train", spec.data_roots)
    test = build_dataset(config.dataset, "test", spec.data_roots)
    labelled = labelled_images(train, config, spec.data_roots)
    state = session.restore()
    if state is None:
        encoder, pretraining = load_encoder(config.checkpoint_path, "cpu")
    else:  # the run's own checkpoint holds the encoder: the source one may be pruned by now
        pretraining = SimCLRConfig.model_validate(state["pretraining"])
        encoder = build_model(pretraining).backbone
    return fine_tune(encoder, labelled, train, test, config, session, pretraining, state)


def fine_tune(
    encoder: nn.Module, labelled, train, test, config: FinetuneConfig, session: TrainingSession,
    pretraining: SimCLRConfig | None = None, state: dict | None = None,
) -> dict | None:  # fmt: skip
    """Train ``encoder`` and a new linear layer (a class for each of ``train``'s) on the
    ``labelled`` images of the ``train`` split by ``config`` (its data set gives the view size and
    the test crop), resuming from ``state`` (the session's checkpoint) when given; then score the
    centre views of ``test``.
    ``pretraining``: the encoder's config, kept in the checkpoints so that a resumed run rebuilds
    the encoder without the source checkpoint. The result on rank 0, None on the other ranks."""
    rank, world, device = session.rank, session.world_size, session.device
    start = time.perf_counter()
    resolved = resolve_precision(config.precision, device)
    precision = resolved.precision
    data = config.dataset
    fraction = len(labelled) / len(train)
    epochs = config.resolved_epochs(fraction)
    # as many steps as the chosen batch needs to see every labelled image, with the images
    # shared evenly among them (at most world - 1 left out an epoch, where the batch must divide)
    steps = math.ceil(len(labelled) / config.resolved_batch_size)
    batch = len(labelled) // steps // world * world
    if batch == 0:
        raise ValueError(f"{len(labelled)} labelled images cannot be shared by {world} workers")
    peak_lr = config.base_lr * batch / 256
    encoder.requires_grad_(True)
    torch.manual_seed(config.seed)  # the same new layer on every rank
    net = Classifier(encoder, int(train.labels.max()) + 1)
    if state is not None:
        net.load_state_dict(state["model"])
    model = session.prepare_model(net)
    optimizer = torch.optim.SGD(model.parameters(), lr=peak_lr, momentum=0.9, nesterov=True,
                                weight_decay=0.0)  # fmt: skip
    first_epoch = 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        first_epoch = state["epoch"]
        log.info("rank %d resumed fine-tuning at epoch %d", rank, first_epoch)
    if rank == 0:
        log.info("fine-tuning %s/%s on %d labelled images (%.2f %% of %d), %d epochs of %d steps, "
                 "batch %d over %d worker(s), lr %.4g", config.source_job_id, config.checkpoint,
                 len(labelled), 100 * fraction, len(train), epochs, steps, batch, world,
                 peak_lr)  # fmt: skip
        log.info("precision %s (%s: %s) on %s", precision, config.precision, resolved.why, device)
    crop_flip = crop_flip_augment(data.view_size, scale=(0.08, 1.0), flip=True)
    loss = torch.tensor(math.nan, device=device)
    for epoch in range(first_epoch, epochs):
        model.train()
        torch.manual_seed(config.seed + 1 + rank + world * epoch)  # the same draws after a resume
        batches = EpochBatches(len(labelled), batch, seed=config.seed, epoch=epoch, rank=rank,
                               world_size=world)  # fmt: skip
        for i, step_batch in enumerate(iterate_batches(labelled, batches, data.loader_workers)):
            progress = (epoch * steps + i) / (epochs * steps)
            set_learning_rate(optimizer, peak_lr * 0.5 * (1 + math.cos(math.pi * progress)))
            images = step_batch.images.to(device)
            sizes = step_batch.sizes.to(device) if step_batch.sizes is not None else None
            views, _ = crop_flip(images, sizes)  # the second view is not used
            with autocast_for(precision, device):  # the forward pass; logits and loss in fp32
                logits = model(views)
            loss = F.cross_entropy(at_least_fp32(logits), step_batch.labels.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        metrics = {"step": (epoch + 1) * steps, "epoch": epoch + 1, "total_steps": epochs * steps,
                   "loss": mean_over_ranks(loss),
                   "lr": optimizer.param_groups[0]["lr"], "time": time.time(),
                   **resolved.metrics()}  # fmt: skip
        checkpoint = None
        if rank == 0:
            checkpoint = {"kind": "finetune", "model": net.state_dict(),
                          "optimizer": optimizer.state_dict(), "epoch": epoch + 1,
                          "step": metrics["step"],
                          "pretraining": pretraining and pretraining.model_dump(mode="json")}  # fmt: skip
            log.info("fine-tuning epoch %d/%d: loss %.4f", epoch + 1, epochs, metrics["loss"])
        session.report(metrics, checkpoint)
    net.eval()
    top1, top5, total = sharded_test_accuracy(net, test, data, rank, world, device)
    if rank != 0:
        return None
    return {"protocol": "finetune", "top1": top1, "top5": top5, "label_fraction": fraction,
            "epochs": epochs, "train_images": len(labelled), "test_images": total,
            "seconds": time.perf_counter() - start}  # fmt: skip


def finetune_worker(spec: JobSpec, session: TrainingSession) -> None:
    """The ``finetune`` kind's worker entry: ``run_finetune``; rank 0 reports the result."""
    result = run_finetune(spec, session)
    if result is not None:
        log.info("fine-tuning of %s: %s", spec.config.checkpoint, result)
        session.report_result(result)
