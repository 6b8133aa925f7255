"""Streaming packed shards (``trainer.data.pack``) to Ray Train workers with Ray Data.

Driver side (``training_stream``): one Ray Dataset for the rest of the run, epoch after epoch,
each epoch's shards in their own seeded random order (``epoch_plan``) and cut to exactly the rows
its steps use. Each planned read is one Ray Data task (``map_batches``, 1 CPU, on whatever node has
the resources; ``decode_resources`` pins them to decode nodes) that streams the shard's row groups
with pyarrow and decodes every JPEG once into a uint8 canvas of side ``max_side``, keeping the valid
height and width. Training workers receive only decoded uint8 canvases; both SimCLR views are cut
from one decoded image by the batched augmentation on the worker's device.

Worker side (``RayDataSource``): ``ray.train.get_dataset_shard("train").iter_torch_batches`` with
``drop_last``. Ray Train's ``DataConfig`` splits the stream with ``streaming_split(equal=True)``, so
every rank receives the same number of rows, hence of batches; with ``preserve_order`` the blocks
come in plan order and the split is deterministic: the same plan gives each rank the same rows in
the same order every time.

Resuming: the driver starts the plan at the epoch of the run's latest checkpoint, and each rank
discards the batches of that epoch the checkpoint had already trained on (decoded again, at most
one epoch's worth, but not trained on twice).

Why not ``read_parquet`` per epoch joined with ``union``: ``read_parquet`` drops repeated paths,
and ``union`` interleaved the epochs' blocks here even with ``preserve_order``, so ranks mixed
epochs. ``randomize_block_order`` would materialise the whole data set in the object store. The
per-epoch shuffle is therefore the seeded shard order, on top of the packer's seeded shuffle of the
images across shards.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.contracts.config import DatasetConfig
from trainer.data.confine import confined
from trainer.data.folders import DECODE_ERRORS, decode_rgb
from trainer.data.loader import Batch, steps_per_epoch
from trainer.data.pack import manifest_shards

log = logging.getLogger(__name__)

DECODE_BATCH = 64  # images per decode task call


def read_shards(
    config: DatasetConfig, split: str = "train", roots: Sequence[str] | None = None
) -> tuple[list[tuple[str, int]], int]:
    """The split's shards as (resolved path, rows), in manifest order, and its image count; the
    packed root must lie under ``roots`` (None: unconfined) and every shard inside the packed root
    (``trainer.data.pack.manifest_shards``)."""
    assert config.root is not None
    return manifest_shards(config.root, split, roots)


def epoch_order(shards: list, seed: int, epoch: int) -> list:
    """The shards in the seeded random order of ``epoch``."""
    order = list(shards)
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def epoch_plan(
    shards: list[tuple[str, int]], rows_per_epoch: int, seed: int, start_epoch: int, epochs: int
) -> list[dict[str, Any]]:
    """``{"path", "rows"}`` reads, epoch after epoch: each epoch's shards in its own order, the last
    one cut so that the epoch holds exactly ``rows_per_epoch`` rows."""
    plan = []
    for epoch in range(start_epoch, epochs):
        remaining = rows_per_epoch
        for path, rows in epoch_order(shards, seed, epoch):
            if remaining <= 0:
                break
            plan.append({"path": path, "rows": min(rows, remaining)})
            remaining -= rows
    return plan


def read_and_decode(
    item: dict[str, np.ndarray], max_side: int, roots: Sequence[str] | None = None
) -> Iterator[dict[str, np.ndarray]]:
    """One planned read: the first ``rows`` rows of a shard, streamed by row group and decoded in
    batches of ``DECODE_BATCH``. The shard is resolved again on the decoding node and must lie under
    ``roots`` (None: unconfined)."""
    import pyarrow.parquet as pq

    path, wanted = str(item["path"][0]), int(item["rows"][0])
    path = str(confined(path, roots, "shard"))
    shard = pq.ParquetFile(path)
    for table in shard.iter_batches(batch_size=DECODE_BATCH, columns=["index", "image", "label"]):
        if wanted <= 0:
            return
        table = table.slice(0, wanted)
        wanted -= table.num_rows
        yield decode_batch({name: table.column(name).to_numpy(zero_copy_only=False)
                            for name in ("index", "image", "label")}, max_side)  # fmt: skip


def decode_batch(batch: dict[str, np.ndarray], max_side: int) -> dict[str, np.ndarray]:
    """JPEG bytes -> uint8 canvases (n, max_side, max_side, 3), valid (h, w) in ``size``. An image
    that does not decode is dropped and logged (the packer checked them all, so this is rare)."""
    kept, sizes = [], []
    for position, data in enumerate(batch["image"]):
        try:
            kept.append((position, decode_rgb(bytes(data), max_side)))
        except DECODE_ERRORS as error:
            log.warning("dropping image %d: %s", int(batch["index"][position]), error)
    canvas = np.zeros((len(kept), max_side, max_side, 3), dtype=np.uint8)
    for row, (_, pixels) in enumerate(kept):
        canvas[row, : pixels.shape[0], : pixels.shape[1]] = pixels
        sizes.append(pixels.shape[:2])
    rows = [position for position, _ in kept]
    return {
        "image": canvas,
        "size": np.asarray(sizes, dtype=np.int64).reshape(-1, 2),
        "label": batch["label"][rows].astype(np.int64),
        "index": batch["index"][rows].astype(np.int64),
    }


def training_stream(
    config: DatasetConfig, global_batch: int, seed: int, start_epoch: int, epochs: int,
    roots: Sequence[str] | None = None,
):  # fmt: skip
    """The Ray Dataset of epochs ``start_epoch``..``epochs - 1``, decoded (driver side). Each epoch
    holds exactly its steps x ``global_batch`` rows (the rest is dropped), so that epoch e begins at
    the same place of the stream whichever epoch the stream starts at. Every shard must lie under
    ``roots`` (None: unconfined), checked here and again by each decode task."""
    import ray.data

    shards, images = read_shards(config, roots=roots)
    rows = steps_per_epoch(images, global_batch) * global_batch
    plan = epoch_plan(shards, rows, seed, start_epoch, epochs)
    decode_kwargs = {"max_side": config.max_side, "roots": None if roots is None else list(roots)}
    return ray.data.from_items(plan, override_num_blocks=len(plan)).map_batches(
        read_and_decode, fn_kwargs=decode_kwargs, batch_format="numpy",
        batch_size=1, num_cpus=1, resources=config.decode_resources or None,
    )  # fmt: skip


def data_config():
    """Ray Train's ingest options with a deterministic, order-preserving split of ``train``."""
    import ray.train

    options = ray.train.DataConfig.default_ingest_options()
    options.preserve_order = True
    return ray.train.DataConfig(datasets_to_split=["train"], execution_options=options)


class RayDataSource:
    """This rank's shard of the stream. ``stream_start_step``: the global step the stream's first
    batch belongs to (the start of the epoch the driver resumed at)."""

    def __init__(
        self, shard: Any, num_images: int, global_batch: int, world_size: int,
        stream_start_step: int, index_log: IndexLog | None = None,
    ):  # fmt: skip
        self.shard, self.num_images, self.index_log = shard, num_images, index_log
        self.local_batch = global_batch // world_size
        self.stream_start_step = stream_start_step

    def batches(self, start_step: int) -> Iterator[Batch]:
        if start_step < self.stream_start_step:
            raise ValueError(
                f"resumed at step {start_step}, before the stream's first step {self.stream_start_step}"
            )
        skip = start_step - self.stream_start_step
        if skip:
            log.info("skipping %d already trained batches of the stream", skip)
        step = self.stream_start_step
        batches = self.shard.iter_torch_batches(
            batch_size=self.local_batch, drop_last=True, prefetch_batches=4,
            dtypes={"image": torch.uint8, "size": torch.long, "label": torch.long, "index": torch.long},
        )  # fmt: skip
        for batch in batches:
            step += 1
            if skip:
                skip -= 1
                continue
            images = batch["image"].permute(0, 3, 1, 2)  # NHWC canvases -> NCHW (a view)
            yield Batch(images, batch["label"], batch["size"])
            # the loop asks for the next batch only after training on this one
            if self.index_log is not None:
                self.index_log.write(step, batch["index"])


class IndexLog:
    """Appends ``{"step", "indices"}`` of every batch a rank trains on to a JSON-lines file: the
    audit of the data order that ``DatasetConfig.log_indices`` asks for."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, step: int, indices: torch.Tensor) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, "indices": indices.tolist()}) + "\n")
