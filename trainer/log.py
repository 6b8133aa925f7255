"""Logging set-up shared by the command-line entry points and the Ray workers."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format=FORMAT)
    # One line per HTTP request (the control-plane reporter's) would drown the training log.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def step_progress(last_step: int, step: int, enabled: bool):
    """The tqdm bar of a training loop: steps done out of ``last_step``, at most one refresh a second."""
    from tqdm import tqdm

    return tqdm(total=last_step, initial=step, disable=not enabled, unit="step", mininterval=1.0)
