"""Logging set-up shared by the command-line entry points and the Ray workers."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format=FORMAT)
    # One line per HTTP request (the control-plane reporter's) would drown the training log.
    logging.getLogger("httpx").setLevel(logging.WARNING)
