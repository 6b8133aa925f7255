"""The linear-evaluation job (kind ``linear_probe``): score a pretraining checkpoint with a linear
classifier on its frozen encoder (paper App. B.5; ``trainer.linear_classifier`` holds the classifier).

Two modes, and every result says which produced it:

- ``fast``: the train and test features of the un-augmented images (centre view) are extracted
  once, sharded over the workers, and cached on the storage under the checkpoint's id
  (``<storage>/features/<job>/<checkpoint>/<data key>/``); the classifier is then trained on the
  cached features. A second evaluation of the same checkpoint and data skips the encoder.
- ``augmented``: the paper's protocol. Every epoch, each worker draws its shard of the training
  images, a random-resized crop + horizontal flip of each goes through the frozen encoder, and the
  linear layer (data-parallel across workers) takes an SGD step. Features enter the classifier
  through a batch norm without affine parameters, an affine map at test time, so the classifier
  stays linear. Test on the centre view.

The encoder is frozen in both: eval mode (batch-norm statistics untouched), no gradient, the
projection head dropped. Any checkpoint of a pretraining job loads: written by any number of
workers, with or without a ``module.`` (DDP) or ``_orig_mod.`` (``torch.compile``) prefix, in any
floating precision. A missing or unreadable one raises ``CheckpointError`` saying which and why.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset

from trainer.checkpoint import RAY_CHECKPOINT_FILE, CheckpointError, load_checkpoint, save_atomic
from trainer.contracts.config import (
    CheckpointTarget,
    DatasetConfig,
    LinearProbeConfig,
    SimCLRConfig,
)
from trainer.contracts.spec import JobSpec
from trainer.data.augment import SimCLRAugment
from trainer.data.datasets import InMemoryImages, build_dataset
from trainer.data.loader import EpochBatches, collate_padded, iterate_batches
from trainer.distributed import is_distributed
from trainer.linear_classifier import ProbeResult, center_view, top_k_accuracy, train_linear_probe
from trainer.session import TrainingSession
from trainer.simclr_recipe import build_model

log = logging.getLogger(__name__)

STRIPPED_PREFIXES = ("module.", "_orig_mod.")


def load_encoder(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, SimCLRConfig]:
    """The frozen encoder (eval mode, no gradient, fp32) of a pretraining checkpoint and its config.

    ``path`` is a checkpoint directory (Ray Train's, holding ``state.pt``) or the file itself."""
    path = Path(path)
    file = path / RAY_CHECKPOINT_FILE if path.is_dir() else path
    if not file.is_file():
        raise CheckpointError(f"checkpoint {path} not found (looked for {file})")
    try:  # weights only (``trainer.checkpoint.load_checkpoint``): a file that would run code is refused
        state = load_checkpoint(file, map_location="cpu")
    except Exception as error:  # torch raises many types for a truncated or foreign file
        raise CheckpointError(f"unreadable checkpoint: {error}") from None
    if not isinstance(state, dict) or "backbone" not in state or "config" not in state:
        keys = ", ".join(list(state)[:8]) if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{file} is not a SimCLR pretraining checkpoint (no 'backbone' and 'config'; has {keys})"
        )
    config = SimCLRConfig.model_validate(state["config"])
    encoder = build_model(config).backbone
    weights = {}
    for name, tensor in state["backbone"].items():
        for prefix in STRIPPED_PREFIXES:
            name = name.removeprefix(prefix)
        weights[name] = tensor.float() if tensor.is_floating_point() else tensor
    try:
        encoder.load_state_dict(weights)
    except RuntimeError as error:
        raise CheckpointError(f"{file} does not fit a {config.backbone.name}: {error}") from None
    encoder.requires_grad_(False)
    return encoder.to(device).eval(), config


def feature_cache_dir(storage: str | Path, config: CheckpointTarget) -> Path:
    """Where the features of this checkpoint on this data live: keyed by what changes them."""
    data = config.dataset
    key_fields = {"name": data.name, "root": data.root, "class_list": data.class_list,
                  "size": data.view_size, "max_side": data.max_side}  # fmt: skip
    key = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()[:16]
    return (
        Path(storage) / "features" / config.source_job_id / config.checkpoint / f"{data.name}-{key}"
    )


def center_views(
    batch_images: torch.Tensor, sizes: torch.Tensor | None, data: DatasetConfig
) -> torch.Tensor:
    """Evaluation views of a batch; images padded to a canvas are cropped to their own size first."""
    size, fraction = data.view_size, data.eval_crop_fraction
    if sizes is None:
        return center_view(batch_images, size, fraction)
    return torch.cat([
        center_view(image[None, :, :h, :w], size, fraction)
        for image, (h, w) in zip(batch_images, sizes.tolist(), strict=True)
    ])  # fmt: skip


def shard_batches(dataset, indices: list[int], batch_size: int, workers: int):
    """Batches of ``dataset[indices]`` in order (index for in-memory sets, a DataLoader otherwise)."""
    if isinstance(dataset, InMemoryImages):
        for start in range(0, len(indices), batch_size):
            index = torch.tensor(indices[start : start + batch_size], dtype=torch.long)
            yield dataset.images[index], None, dataset.labels[index]
        return
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, num_workers=workers,
                        collate_fn=collate_padded)  # fmt: skip
    for batch in loader:
        yield batch.images, batch.sizes, batch.labels


@torch.no_grad()
def extract_shard(
    encoder: nn.Module, dataset, data: DatasetConfig, rank: int, world: int, device: torch.device,
    batch_size: int = 256,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """This rank's features (every ``world``-th image from ``rank``), their labels and indices."""
    indices = list(range(rank, len(dataset), world))
    features, labels, kept = [], [], []
    position = 0
    for images, sizes, batch_labels in shard_batches(
        dataset, indices, batch_size, data.loader_workers
    ):
        views = center_views(images, sizes, data).to(device)
        features.append(encoder(views).float().cpu())
        labels.append(batch_labels)
        kept.append(torch.tensor(indices[position : position + len(batch_labels)]))
        position += len(batch_labels)
    return torch.cat(features), torch.cat(labels), torch.cat(kept)


def _barrier() -> None:
    if is_distributed():
        dist.barrier()


def cached_features(
    encoder: nn.Module, config: CheckpointTarget, storage: str | Path, rank: int, world: int,
    device: torch.device, roots: Sequence[str] | None = None,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]] | None:  # fmt: skip
    """Train and test ``(features, labels)`` from the cache, extracting them first (sharded over
    the ranks) when absent; rank 0 gets them, the other ranks None. All ranks must call this.
    ``roots``: the data roots the images must lie under (None: unconfined)."""
    directory = feature_cache_dir(storage, config)
    files = {split: directory / f"{split}.pt" for split in ("train", "test")}
    present = all(file.is_file() for file in files.values())
    if is_distributed():  # every rank takes the same branch
        flags = [None] * world
        dist.all_gather_object(flags, present)
        present = all(flags)
    if not present:
        # part files of this extraction only: another evaluation may be filling the same cache
        token = [uuid.uuid4().hex[:8]]
        if is_distributed():
            dist.broadcast_object_list(token, src=0)
        for split, file in files.items():
            dataset = build_dataset(config.dataset, split, roots)
            features, labels, indices = extract_shard(
                encoder, dataset, config.dataset, rank, world, device
            )
            parts = [directory / f"{split}.{token[0]}.part{r}.pt" for r in range(world)]
            save_atomic({"features": features, "labels": labels, "indices": indices}, parts[rank])
            _barrier()
            if rank == 0:
                shards = [load_checkpoint(path) for path in parts]
                order = torch.cat([shard["indices"] for shard in shards]).argsort()
                merged = {
                    key: torch.cat([shard[key] for shard in shards])[order]
                    for key in ("features", "labels")
                }
                save_atomic(merged, file)
                for path in parts:
                    path.unlink()
        log.info("features of %s cached in %s", config.checkpoint, directory)
    else:
        log.info("features of %s read from the cache %s", config.checkpoint, directory)
    _barrier()
    if rank != 0:
        return None
    loaded = {split: load_checkpoint(file) for split, file in files.items()}
    return {split: (value["features"], value["labels"]) for split, value in loaded.items()}


def _all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if is_distributed():
        dist.all_reduce(tensor)
    return tensor.tolist()


def crop_flip_augment(size: int, scale: tuple[float, float], flip: bool) -> SimCLRAugment:
    """The supervised protocols' training views: a random-resized crop of area ``scale`` to
    ``size`` and (``flip``) a horizontal flip, no colour distortion or blur."""
    return SimCLRAugment(size, strength=0.0, blur=False, jitter_p=0.0, grayscale_p=0.0,
                         scale=scale, flip_p=0.5 if flip else 0.0)  # fmt: skip


@torch.no_grad()
def sharded_test_accuracy(
    classify: Callable[[torch.Tensor], torch.Tensor], test, data: DatasetConfig, rank: int,
    world: int, device: torch.device,
) -> tuple[float, float, int]:  # fmt: skip
    """Top-1 and top-5 accuracy (percent) of ``classify`` (centre views -> logits) over the whole
    ``test`` set, each rank scoring every ``world``-th image from ``rank``, and the image count;
    the same on every rank (all ranks must call it)."""
    hits = [0.0, 0.0, 0.0]
    indices = list(range(rank, len(test), world))
    for images, sizes, labels in shard_batches(test, indices, 256, data.loader_workers):
        top1, top5 = top_k_accuracy(classify(center_views(images, sizes, data).to(device)),
                                    labels.to(device))  # fmt: skip
        hits = [hits[0] + top1 * len(labels), hits[1] + top5 * len(labels), hits[2] + len(labels)]
    top1_hits, top5_hits, total = _all_reduce_sum(hits, device)
    return 100 * top1_hits / total, 100 * top5_hits / total, int(total)


def augmented_probe(
    encoder: nn.Module, config: LinearProbeConfig, rank: int, world: int, device: torch.device,
    prepare: Any = None, roots: Sequence[str] | None = None,
) -> ProbeResult:  # fmt: skip
    """The paper's protocol; ``prepare`` wraps the classifier for data parallelism (Ray Train's
    ``prepare_model``), identity by default. The result is the same on every rank. ``roots``: the
    data roots the images must lie under (None: unconfined)."""
    data = config.dataset
    train, test = build_dataset(data, "train", roots), build_dataset(data, "test", roots)
    batch = min(config.resolved_batch_size, len(train)) // world * world
    feature_dim = encoder.feature_dim
    num_classes = int(train.labels.max()) + 1
    torch.manual_seed(config.seed)
    classifier = nn.Sequential(
        nn.BatchNorm1d(feature_dim, affine=False), nn.Linear(feature_dim, num_classes)
    ).to(device)
    model = prepare(classifier) if prepare else classifier
    optimizer = torch.optim.SGD(model.parameters(), lr=config.base_lr * batch / 256, momentum=0.9,
                                nesterov=True, weight_decay=0.0)  # fmt: skip
    steps = len(train) // batch
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * steps)
    crop_flip = crop_flip_augment(data.view_size, config.crop_scale, config.flip)
    torch.manual_seed(config.seed + 1 + rank)
    for epoch in range(config.epochs):
        batches = EpochBatches(
            len(train), batch, seed=config.seed, epoch=epoch, rank=rank, world_size=world
        )
        for step_batch in iterate_batches(train, batches, data.loader_workers):
            images = step_batch.images.to(device)
            sizes = step_batch.sizes.to(device) if step_batch.sizes is not None else None
            views, _ = crop_flip(images, sizes)  # the second view is not used
            with torch.no_grad():
                features = encoder(views).float()
            loss = F.cross_entropy(model(features), step_batch.labels.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        if rank == 0 and (epoch + 1) % max(1, config.epochs // 10) == 0:
            log.info("linear probe epoch %d/%d: loss %.4f", epoch + 1, config.epochs, loss.item())
    classifier.eval()
    top1, top5, total = sharded_test_accuracy(
        lambda views: classifier(encoder(views).float()), test, data, rank, world, device
    )
    return ProbeResult(top1, top5, config.epochs, len(train), total, mode="augmented")


def run_linear_probe(
    config: LinearProbeConfig, storage: str | Path, rank: int = 0, world: int = 1,
    device: torch.device | str = "cpu", prepare: Any = None, roots: Sequence[str] | None = None,
) -> ProbeResult | None:  # fmt: skip
    """Evaluate ``config.checkpoint_path``; the result on rank 0, None on the other ranks.
    ``roots``: the data roots (the job spec's ``data_roots``) every image read must lie under
    (None: unconfined)."""
    device = torch.device(device)
    start = time.perf_counter()
    encoder, pretraining = load_encoder(config.checkpoint_path, device)
    mode = config.resolved_mode
    if rank == 0:
        log.info("linear probe (%s) of %s/%s (%s) on %s over %d worker(s)", mode,
                 config.source_job_id, config.checkpoint, pretraining.backbone.name,
                 config.dataset.name, world)  # fmt: skip
    if mode == "augmented":
        result = augmented_probe(encoder, config, rank, world, device, prepare, roots)
    else:
        features = cached_features(encoder, config, storage, rank, world, device, roots)
        if features is None:
            return None
        (train_x, train_y), (test_x, test_y) = features["train"], features["test"]
        result = train_linear_probe(train_x, train_y, test_x, test_y, epochs=config.epochs,
                                    batch_size=config.resolved_batch_size, base_lr=config.base_lr,
                                    seed=config.seed)  # fmt: skip
    result.seconds = time.perf_counter() - start
    return result if rank == 0 else None


def linear_probe_worker(spec: JobSpec, session: TrainingSession) -> None:
    """The ``linear_probe`` kind's worker entry: ``run_linear_probe`` on the session's rank and
    device, the classifier made data-parallel by ``session.prepare_model`` (global batch norm
    over the ranks, as one process would see the global batch); rank 0 reports the result."""
    config: LinearProbeConfig = spec.config
    result = run_linear_probe(
        config, spec.storage_path, session.rank, session.world_size, session.device,
        prepare=session.prepare_model, roots=spec.data_roots,
    )  # fmt: skip
    if result is not None:
        log.info("linear probe of %s: %s", config.checkpoint, asdict(result))
        session.report_result({**asdict(result), "protocol": "linear"})
