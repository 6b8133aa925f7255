"""The SimCLR training loop, written once for every runner (see ``trainer.session``).

Per step: the global learning rate from the schedule, this rank's slice of the global batch, the
batched augmentation on the rank's device, one forward pass over both views, NT-Xent with negatives
from the global batch (or the gradient cache when ``chunk_size`` is set), backward and the
optimiser step. Metrics every ``log_every_steps``; checkpoints every ``checkpoint_every_steps``, at
each epoch end and at the last step. A resumed run continues at the saved step with the saved
optimiser, data order and random state, so its learning rates and updates are those of an
uninterrupted run.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import Dataset

from trainer.artifacts import views_grid_png
from trainer.contracts.config import SimCLRConfig
from trainer.contracts.spec import JobSpec
from trainer.data.datasets import build_dataset
from trainer.data.loader import steps_per_epoch
from trainer.data.sources import BatchSource, build_source
from trainer.distributed import all_ranks_rng_states, mean_over_ranks, restore_rank_rng
from trainer.gradient_cache import gradient_cache_backward
from trainer.knn import KnnMonitor
from trainer.log import step_progress
from trainer.optim import set_learning_rate
from trainer.precision import autocast_for, resolve_precision
from trainer.rng import forked_rng
from trainer.session import TrainingSession
from trainer.simclr_recipe import (
    LearningRateSchedule,
    build_augment,
    build_model,
    build_optimizer,
    model_layout,
    simclr_loss,
    use_channels_last,
)

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    steps: int
    final_loss: float
    learning_rates: list[float] = field(default_factory=list)


def _save_views_grid(
    session: TrainingSession, augment, images: torch.Tensor, sizes: torch.Tensor | None
) -> None:
    """``views.png``: augmented pairs of the first batch, drawn on a forked RNG so that the run's
    random stream is the one it would have without the picture."""
    with forked_rng(images.device):
        view_a, view_b = augment(images[:8], None if sizes is None else sizes[:8])
    session.save_artifact("views.png", views_grid_png(view_a, view_b), "image/png")


def run_simclr(
    config: SimCLRConfig,
    session: TrainingSession,
    *,
    stop_after: int | None = None,
    progress: bool = True,
    dataset: Dataset | None = None,
    source: BatchSource | None = None,
    roots: Sequence[str] | None = None,
) -> RunResult:
    """Train (or resume) until the schedule's last step, ``config.max_steps``, or ``stop_after``
    steps in this call, whichever comes first. Batches come from ``source`` (the Ray Data stream of a
    Ray job), else from ``config.dataset`` by its ``loader`` (``trainer.data.sources``); ``dataset``
    replaces the images that config names (images already in memory: a benchmark's split) while
    ``config.dataset`` still sets the view size. With ``config.monitor.every_steps``, rank 0
    reports ``knn_top1`` (``trainer.knn.KnnMonitor``) at every multiple of it; ``roots``: the
    data roots the monitor's images must lie under (None: unconfined)."""
    device, rank, world = session.device, session.rank, session.world_size
    if config.batch_size % world:
        raise ValueError(f"global batch {config.batch_size} is not divisible by {world} workers")
    resolved = resolve_precision(config.precision, device)
    precision = resolved.precision
    if rank == 0:
        log.info("precision %s (%s: %s) on %s", precision, config.precision, resolved.why, device)

    if source is None:
        source = build_source(
            config.dataset, config.batch_size, config.seed, rank, world, device, dataset
        )
    per_epoch = steps_per_epoch(source.num_images, config.batch_size)
    schedule = LearningRateSchedule(config, per_epoch)
    watched = config.monitor.every_steps and rank == 0
    monitor = start_monitor(config, device, roots) if watched else None
    torch.manual_seed(config.seed)  # the same initial weights on every rank (monitor or not)
    model = build_model(config)
    state = session.restore()
    if state is not None:
        model.backbone.load_state_dict(state["backbone"])
        model.head.load_state_dict(state["head"])
    channels_last = use_channels_last(config, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)  # the layout of ``model_layout`` views
    net = model
    model = session.prepare_model(model)
    forward = torch.compile(model) if config.compile_model else model
    optimizer = build_optimizer(model, config)
    augment = build_augment(config)
    step = 0
    torch.manual_seed(config.seed + 1 + rank)  # independent augmentations on every rank
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
        restore_rank_rng(state["rng"], rank, world, config.seed, step)
        log.info("rank %d resumed at step %d", rank, step)

    if rank == 0 and schedule.warmup_steps >= schedule.total_steps:
        log.warning(
            "the warm-up (%d steps) is not shorter than the schedule (%d steps): the learning "
            "rate only rises; give fewer warmup_epochs or more epochs or train_steps",
            schedule.warmup_steps, schedule.total_steps,
        )  # fmt: skip
    last_step = min(schedule.total_steps, config.max_steps or math.inf)
    if stop_after is not None:
        last_step = min(last_step, step + stop_after)
    if rank == 0:
        log.info(
            "SimCLR on %s: %d images, global batch %d over %d workers, %d steps/epoch, "
            "steps %d..%d of %d, peak lr %.4g, device %s",
            config.dataset.name, source.num_images, config.batch_size, world, per_epoch,
            step, last_step, schedule.total_steps, schedule.peak, device,
        )  # fmt: skip

    def checkpoint_state(loss: float) -> dict[str, Any] | None:
        """The state after ``step`` steps (rank 0), or None; every rank must call it."""
        rngs = all_ranks_rng_states()
        if rank != 0:
            return None
        epoch, batch_in_epoch = divmod(step, per_epoch)
        return {
            "kind": "simclr",
            "config": config.model_dump(mode="json"),
            "backbone": net.backbone.state_dict(),
            "head": net.head.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "epoch": epoch,
            "batch_in_epoch": batch_in_epoch,
            "world_size": world,
            "rng": rngs,
            "loss": loss,
        }

    model.train()
    learning_rates: list[float] = []
    loss_value = float("nan")
    bar = step_progress(last_step, step, progress and rank == 0)
    window_start, window_images = time.perf_counter(), 0
    for batch in source.batches(step) if step < last_step else ():
        if step >= last_step:
            break
        epoch = step // per_epoch
        if batch.skipped:
            log.warning("rank %d step %d: %d unreadable images skipped", rank, step, batch.skipped)
        lr = schedule(step)
        set_learning_rate(optimizer, lr)
        images = batch.images.to(device, non_blocking=True)
        sizes = batch.sizes.to(device) if batch.sizes is not None else None
        if step == 0 and rank == 0:
            _save_views_grid(session, augment, images, sizes)
        optimizer.zero_grad(set_to_none=True)
        if config.chunk_size:
            view_a, view_b = (model_layout(view, channels_last) for view in augment(images, sizes))
            loss = gradient_cache_backward(
                forward, view_a, view_b, config.temperature, config.chunk_size,
                lambda: autocast_for(precision, device),
            )  # fmt: skip
        else:
            loss = simclr_loss(
                forward, augment, images, sizes, config.temperature, precision,
                channels_last,
            )  # fmt: skip
            loss.backward()
        optimizer.step()
        step += 1
        learning_rates.append(lr)
        window_images += images.shape[0] * world
        bar.update(1)
        periodic = config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0
        save = step % per_epoch == 0 or periodic or step == last_step
        monitored = config.monitor.due(step)
        if step % config.log_every_steps == 0 or save or monitored:
            loss_value = mean_over_ranks(loss)
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"loss became {loss_value} at step {step} (lr {lr:.4g})")
            rate = window_images / (time.perf_counter() - window_start)
            metrics = {
                "step": step,
                "epoch": epoch,
                "total_steps": last_step,
                "loss": loss_value,
                "lr": lr,
                "images_per_s": rate,
                **resolved.metrics(),
                "time": time.time(),
            }
            if monitor is not None and monitored:
                try:
                    metrics["knn_top1"] = monitor.top1(net.backbone)
                except Exception:  # the run matters more than its monitor (out of memory, ...)
                    log.exception("the kNN monitor failed at step %d; it is off for this run", step)
                    monitor = None
            session.report(metrics, checkpoint_state(loss_value) if save else None)
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.4g}", img_s=f"{rate:.0f}")
            window_start, window_images = time.perf_counter(), 0
    bar.close()
    return RunResult(step, loss_value, learning_rates)


def start_monitor(
    config: SimCLRConfig, device: torch.device, roots: Sequence[str] | None
) -> KnnMonitor | None:
    """The run's kNN monitor, or None (logged) when its images cannot be read: the run goes on."""
    try:
        return KnnMonitor(config, device, roots)
    except Exception:
        log.exception("the kNN monitor could not start; the run goes on without knn_top1")
        return None


def simclr_worker(spec: JobSpec, session: TrainingSession) -> None:
    """The ``simclr`` kind's worker entry (``trainer.contracts.kinds``): the images of
    ``spec.config.dataset`` listed here, every folder and image resolved and checked against the
    job's data roots (``loader: torch``), or the session's stream of batches; then ``run_simclr``."""
    dataset = None
    if spec.config.dataset.loader == "torch":
        dataset = build_dataset(spec.config.dataset, "train", spec.data_roots)
    run_simclr(
        spec.config,
        session,
        progress=False,
        source=session.data_stream(),
        dataset=dataset,
        roots=spec.data_roots,
    )
