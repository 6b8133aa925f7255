"""Run SimCLR pretraining in one process, on the CPU or one GPU.

    python -m trainer.pretrain --config configs/digits-demo.yaml --output-dir runs/digits

The run resumes from the newest checkpoint in ``--output-dir`` when there is one: the learning-rate
sequence, the data order and the augmentation randomness continue exactly where they stopped.
Metrics go to ``<output-dir>/metrics.jsonl`` and the progress bar; checkpoints (model, head,
optimiser with the LARS momentum, step, epoch, position in the epoch, RNG states) to
``<output-dir>/checkpoints/step-*.pt``, written atomically.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from trainer.checkpoint import (
    checkpoint_name,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    rng_state,
    save_atomic,
    set_rng_state,
)
from trainer.config import SimCLRConfig, load_config
from trainer.data.datasets import build_dataset
from trainer.data.loader import EpochBatches, iterate_batches, steps_per_epoch
from trainer.optim import set_learning_rate
from trainer.simclr import (
    LearningRateSchedule,
    build_augment,
    build_model,
    build_optimizer,
    simclr_loss,
)

log = logging.getLogger("trainer.pretrain")


@dataclass
class PretrainResult:
    steps: int
    final_loss: float
    checkpoint: Path | None
    learning_rates: list[float]


def pretrain(
    config: SimCLRConfig,
    output_dir: str | Path,
    device: str | torch.device = "cpu",
    *,
    stop_after: int | None = None,
    progress: bool = True,
) -> PretrainResult:
    """Train (or resume) until the last step of the schedule, ``config.max_steps``, or ``stop_after``
    steps in this call, whichever comes first. Returns the steps done so far and the lrs used here."""
    output_dir = Path(output_dir)
    checkpoints = output_dir / "checkpoints"
    device = torch.device(device)
    if config.precision == "bf16" and device.type != "cuda":
        log.warning("precision bf16 needs CUDA; running in fp32 on %s", device)
    torch.manual_seed(config.seed)

    dataset = build_dataset(config.dataset, "train")
    per_epoch = steps_per_epoch(len(dataset), config.batch_size)
    schedule = LearningRateSchedule(config, per_epoch)
    model = build_model(config).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, config)
    augment = build_augment(config)
    forward = torch.compile(model) if config.compile_model else model

    step = 0
    resume_from = latest_checkpoint(checkpoints)
    if resume_from is not None:
        state = load_checkpoint(resume_from, map_location=device)
        model.backbone.load_state_dict(state["backbone"])
        model.head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        step = state["step"]
        log.info("resumed from %s at step %d", resume_from, step)

    last_step = min(schedule.total_steps, config.max_steps or math.inf)
    if stop_after is not None:
        last_step = min(last_step, step + stop_after)
    metrics_file = output_dir / "metrics.jsonl"
    output_dir.mkdir(parents=True, exist_ok=True)
    log.info(
        "SimCLR on %s: %d images, %d steps/epoch, steps %d..%d of %d, peak lr %.4g, device %s",
        config.dataset.name,
        len(dataset),
        per_epoch,
        step,
        last_step,
        schedule.total_steps,
        schedule.peak,
        device,
    )

    def save(loss: float) -> Path:
        """The state after ``step`` steps; the next step is batch ``batch_in_epoch`` of ``epoch``."""
        epoch, batch_in_epoch = divmod(step, per_epoch)
        state = {
            "kind": "simclr",
            "config": config.model_dump(mode="json"),
            "backbone": model.backbone.state_dict(),
            "head": model.head.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "epoch": epoch,
            "batch_in_epoch": batch_in_epoch,
            "rng": rng_state(),
            "loss": loss,
        }
        path = save_atomic(state, checkpoints / checkpoint_name(step))
        prune_checkpoints(checkpoints, config.keep_checkpoints)
        return path

    model.train()
    learning_rates: list[float] = []
    loss_value, saved = float("nan"), resume_from
    bar = tqdm(total=last_step, initial=step, disable=not progress, unit="step", dynamic_ncols=True)
    window_start, window_images = time.perf_counter(), 0
    with metrics_file.open("a") as metrics:
        while step < last_step:
            epoch, first_batch = divmod(step, per_epoch)
            batches = EpochBatches(
                len(dataset),
                config.batch_size,
                seed=config.seed,
                epoch=epoch,
                start_batch=first_batch,
            )
            for batch in iterate_batches(dataset, batches, config.dataset.loader_workers):
                if step >= last_step:
                    break
                if batch.skipped:
                    log.warning("step %d: %d unreadable images skipped", step, batch.skipped)
                lr = schedule(step)
                set_learning_rate(optimizer, lr)
                images = batch.images.to(device, non_blocking=True)
                sizes = batch.sizes.to(device) if batch.sizes is not None else None
                loss = simclr_loss(
                    forward, augment, images, sizes, config.temperature, config.precision
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                learning_rates.append(lr)
                window_images += images.shape[0]
                bar.update(1)
                if step % config.log_every_steps == 0 or step == last_step:
                    loss_value = loss.item()
                    if not math.isfinite(loss_value):
                        raise FloatingPointError(
                            f"loss became {loss_value} at step {step} (lr {lr:.4g})"
                        )
                    rate = window_images / (time.perf_counter() - window_start)
                    record = {
                        "step": step,
                        "epoch": epoch,
                        "loss": loss_value,
                        "lr": lr,
                        "images_per_s": rate,
                    }
                    metrics.write(json.dumps(record) + "\n")
                    metrics.flush()
                    bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.4g}", img_s=f"{rate:.0f}")
                    window_start, window_images = time.perf_counter(), 0
                periodic = (
                    config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0
                )
                if step % per_epoch == 0 or periodic or step == last_step:
                    saved = save(loss.item())
    bar.close()
    return PretrainResult(step, loss_value, saved, learning_rates)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="SimCLR pretraining in one process.")
    parser.add_argument("--config", required=True, help="YAML or JSON file of SimCLRConfig fields")
    parser.add_argument(
        "--output-dir", default=None, help="checkpoints and metrics (default runs/<config name>)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config = load_config(args.config)
    output_dir = args.output_dir or Path("runs") / Path(args.config).stem
    result = pretrain(config, output_dir, args.device)
    log.info(
        "done: %d steps, last loss %.4f, checkpoint %s",
        result.steps,
        result.final_loss,
        result.checkpoint,
    )


if __name__ == "__main__":
    main()
