"""Run SimCLR pretraining in one process, on the CPU or one GPU.

    python -m trainer.pretrain --config configs/digits-demo.yaml --output-dir runs/digits

The run resumes from the newest checkpoint in ``--output-dir`` when there is one: the learning-rate
sequence, the data order and the augmentation randomness continue exactly where they stopped.
Metrics go to ``<output-dir>/metrics.jsonl`` and the progress bar; checkpoints (model, head,
optimiser with the LARS momentum, step, epoch, position in the epoch, RNG states) to
``<output-dir>/checkpoints/step-*.pt``, written atomically. ``python -m trainer.driver`` runs the
same loop on a Ray cluster.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from trainer.contracts.config import SimCLRConfig, load_config
from trainer.log import configure_logging
from trainer.session import LocalSession
from trainer.simclr_loop import RunResult, run_simclr

log = logging.getLogger("trainer.pretrain")


@dataclass
class PretrainResult(RunResult):
    checkpoint: Path | None = None


def pretrain(
    config: SimCLRConfig,
    output_dir: str | Path,
    device: str | torch.device = "cpu",
    *,
    stop_after: int | None = None,
    progress: bool = True,
) -> PretrainResult:
    """Train (or resume) in ``output_dir``; see ``trainer.simclr_loop.run_simclr``."""
    session = LocalSession(output_dir, device, keep=config.keep_checkpoints)
    result = run_simclr(config, session, stop_after=stop_after, progress=progress)
    return PretrainResult(
        result.steps, result.final_loss, result.learning_rates, session.last_checkpoint
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="SimCLR pretraining in one process.")
    parser.add_argument("--config", required=True, help="YAML or JSON file of SimCLRConfig fields")
    parser.add_argument(
        "--output-dir", default=None, help="checkpoints and metrics (default runs/<config name>)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    configure_logging()
    try:
        config = load_config(args.config)
    except (FileNotFoundError, ValueError) as error:  # pydantic's ValidationError is a ValueError
        parser.exit(2, f"error: {error}\n")
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
