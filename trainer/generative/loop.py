"""The training loop of every generative kind, written once (``trainer.generative.tasks`` holds what
differs per kind).

Per step: this rank's slice of the global batch (``EpochBatches``: seeded, sharded, resumable at
any step), the task's optimisation step(s) with gradients averaged over the ranks, its forward
passes under bf16 autocast where the run's precision resolves to bf16 (``trainer.precision``). Metrics (each
averaged over the ranks) every ``log_every_steps``; a checkpoint every ``checkpoint_every_steps``
and at the last step, holding every network, optimiser, each rank's RNG state and the metric
history, so that a resumed run continues exactly where it stopped. At evaluations (default: with
each checkpoint) rank 0 scores held-out data (the kind's bound or likelihood; a Frechet distance of
samples for labelled image sets) and leaves ``samples.png`` and ``curves.png`` as artifacts.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from trainer.artifacts import curves_png, image_grid_png, scatter_png
from trainer.contracts.generative import TrainingConfig
from trainer.data.loader import epoch_samplers, steps_per_epoch
from trainer.distributed import all_ranks_rng_states, mean_over_ranks, restore_rank_rng
from trainer.generative.data import GenerativeData, load_generative_data
from trainer.generative.frechet import ClassifierFeatures, FeatureDistance, InceptionFeatures
from trainer.generative.tasks import Task, task_of
from trainer.log import step_progress
from trainer.precision import Resolution, autocast_for, resolve_precision
from trainer.rng import forked_rng
from trainer.session import TrainingSession

log = logging.getLogger(__name__)

EVAL_SEED = 1234


@dataclass
class GenerativeRun:
    steps: int
    metrics: dict[str, float]
    history: list[dict[str, float]]


def _feature_distances(
    config: TrainingConfig, data: GenerativeData, device: torch.device
) -> list[FeatureDistance]:
    """The sample-quality scorers of a labelled image set, with the held-out images as reference."""
    if not data.is_image:
        return []
    scorers: list[FeatureDistance] = []
    if config.frechet_classifier_steps and data.train_labels is not None:
        scorers.append(
            ClassifierFeatures(
                data.train, data.train_labels, config.frechet_classifier_steps, device, config.seed
            )
        )
    if config.inception_weights:
        scorers.append(InceptionFeatures(config.inception_weights, device))
    for scorer in scorers:
        scorer.set_reference(data.test[: config.eval_examples])
    return scorers


def _evaluate(
    kind: str, task: Task, data: GenerativeData, scorers: list[FeatureDistance],
    config: TrainingConfig, session: TrainingSession, step: int, history: list[dict[str, float]],
) -> dict[str, float]:  # fmt: skip
    """Rank 0: held-out metrics, then the sample picture and the curves."""
    device = session.device
    test = data.test[: config.eval_examples].to(device)
    with forked_rng(device):
        torch.manual_seed(EVAL_SEED)  # every evaluation draws the same noise: comparable points
        metrics = task.evaluate(test)
        if data.toy is not None:
            metrics["data_log_likelihood_nats"] = -data.toy.entropy()  # the best any model can do
        count = max(config.sample_count, config.eval_examples if scorers else 0)
        samples = task.samples(count).float()
    for scorer in scorers:
        metrics[scorer.name] = scorer.distance(samples)
    shown = samples[: config.sample_count].cpu()
    if data.is_image:
        picture = image_grid_png((shown + 1) / 2, per_row=math.ceil(math.sqrt(len(shown))))
    else:
        picture = scatter_png(shown, data.test, f"{kind} samples at step {step}")
    session.save_artifact("samples.png", picture, "image/png")
    rows = [*history, {"step": step, **metrics}]
    evaluated = sorted({name for row in rows for name in row if name in metrics})
    names = ["loss", *(name for name in evaluated if not name.startswith("data_"))]
    title = f"{kind} on {config.data.name}"
    session.save_artifact("curves.png", curves_png(rows, names, title), "image/png")
    return metrics


def run_generative(
    kind: str,
    config: TrainingConfig,
    session: TrainingSession,
    *,
    stop_after: int | None = None,
    progress: bool = True,
    roots: Sequence[str] | None = None,
) -> GenerativeRun:
    """Train (or resume) ``kind`` until ``config.steps`` or ``stop_after`` steps in this call.
    ``roots``: the directories image data must resolve under (the job spec's ``data_roots``)."""
    device, rank, world = session.device, session.rank, session.world_size
    if config.batch_size % world:
        raise ValueError(f"global batch {config.batch_size} is not divisible by {world} workers")
    data = load_generative_data(config.data, config.image_size, roots)
    per_epoch = steps_per_epoch(len(data.train), config.batch_size)
    torch.manual_seed(config.seed)  # the same initial weights on every rank
    task = task_of(kind)(config, data, device)
    scorers = _feature_distances(config, data, device) if rank == 0 else []
    step, history = 0, []
    torch.manual_seed(config.seed + 1 + rank)  # independent noise on every rank
    if task.bf16:
        resolved = resolve_precision(config.precision, device)
    else:
        resolved = Resolution("fp32", f"{kind} computes in fp32 on every device")
    precision = resolved.precision
    state = session.restore()
    if state is not None:
        for name, network in task.networks.items():
            network.load_state_dict(state["networks"][name])
        for name, optimizer in task.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
        step, history = state["step"], state["history"]
        restore_rank_rng(state["rng"], rank, world, config.seed, step)
        log.info("rank %d resumed at step %d", rank, step)
    last_step = config.steps if stop_after is None else min(config.steps, step + stop_after)
    if rank == 0:
        log.info(
            "%s on %s: %d training and %d held-out examples of %d dims, global batch %d over %d "
            "workers, steps %d..%d of %d, device %s",
            kind, config.data.name, len(data.train), len(data.test), data.dims, config.batch_size,
            world, step, last_step, config.steps, device,
        )  # fmt: skip
        log.info("precision %s (%s: %s) on %s", precision, config.precision, resolved.why, device)

    def checkpoint_state() -> dict | None:
        rngs = all_ranks_rng_states()  # every rank takes part
        if rank != 0:
            return None
        return {
            "kind": kind,
            "config": config.model_dump(mode="json"),
            "networks": {name: network.state_dict() for name, network in task.networks.items()},
            "optimizers": {
                name: optimizer.state_dict() for name, optimizer in task.optimizers.items()
            },
            "step": step,
            "epoch": step // per_epoch,
            "world_size": world,
            "rng": rngs,
            "history": history,
        }

    bar = step_progress(last_step, step, progress and rank == 0)
    window_start, window_examples = time.perf_counter(), 0
    latest: dict[str, float] = {}
    eval_every = config.eval_every_steps or config.checkpoint_every_steps
    samplers = epoch_samplers(
        len(data.train), config.batch_size, seed=config.seed, rank=rank, world_size=world,
        start_step=step,
    )  # fmt: skip
    for indices in itertools.chain.from_iterable(samplers):
        if step >= last_step:
            break
        epoch = step // per_epoch
        x = data.train[torch.tensor(indices)].to(device, non_blocking=True)
        with autocast_for(precision, device):  # the task's forward passes; Task.update leaves it
            step_metrics = task.train_step(x, step)
        step += 1
        window_examples += x.shape[0] * world
        bar.update(1)
        save = step % config.checkpoint_every_steps == 0 or step == last_step
        evaluate = step % eval_every == 0 or step == last_step
        if step % config.log_every_steps and not save and not evaluate:
            continue
        row = {name: mean_over_ranks(value) for name, value in step_metrics.items()}
        if not math.isfinite(row["loss"]):
            raise FloatingPointError(f"{kind} loss became {row['loss']} at step {step}")
        row |= {
            "step": step,
            "epoch": epoch,
            "total_steps": config.steps,
            "lr": task.learning_rate(step - 1),
            "images_per_s": window_examples / (time.perf_counter() - window_start),
            **resolved.metrics(),
            "time": time.time(),
        }
        if evaluate and rank == 0:
            row |= _evaluate(kind, task, data, scorers, config, session, step, history)
        history.append(row)
        latest = row
        session.report(row, checkpoint_state() if save else None)
        bar.set_postfix(loss=f"{row['loss']:.4f}")
        window_start, window_examples = time.perf_counter(), 0
    bar.close()
    return GenerativeRun(step, latest, history)
