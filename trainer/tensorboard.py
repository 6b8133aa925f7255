"""A run's TensorBoard event files: ``<run dir>/tensorboard/``, written by rank 0, so that
``tensorboard --logdir <storage>`` shows and compares every job (its runs are named by job id).

What goes in: every scalar the run reports (the loss, the learning rate, images/s, the kNN
monitor's top-1, the generative kinds' bounds: the same names and steps the service stores), the
PNG artifacts as images at the step they were made, and the job's config as text.

An attempt that resumes from a checkpoint (or starts over) opens a new event file whose first
event purges what earlier attempts logged after the checkpoint's step: TensorBoard then shows
each step once, from the attempt that got furthest, as the service's record does.

Like the reports to the service, writing never stops training: a failure is logged once and the
log is switched off for the rest of the run.
"""

from __future__ import annotations

import io
import json
import logging
import numbers
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from trainer.reporter import INDEX_FIELDS

log = logging.getLogger(__name__)

DIRECTORY = "tensorboard"


class TensorBoardLog:
    def __init__(self, run_dir: str | Path, config: dict[str, Any] | None = None):
        """Event files under ``<run_dir>/tensorboard``, opened at the first write; ``config`` is
        written once as text."""
        self.directory = Path(run_dir) / DIRECTORY
        self._config = config
        self._writer = None
        self._failed = False
        self._purge_step: int | None = None
        self._step = 0

    def restart_after(self, step: int) -> None:
        """The run goes on after ``step`` (0: from the start): what an earlier attempt logged at
        later steps is dropped. Called before the first write."""
        self._purge_step = step + 1
        self._step = step

    def scalars(self, metrics: dict[str, Any]) -> None:
        """Every number of a metrics row but its index fields, at the row's ``step`` (and wall
        time, when it has ``time``). Non-finite values are written as they are."""

        def write(writer) -> None:
            self._step = int(metrics.get("step", self._step))
            for name, value in metrics.items():
                if (name in INDEX_FIELDS or isinstance(value, bool)
                        or not isinstance(value, numbers.Real)):  # fmt: skip
                    continue
                writer.add_scalar(name, float(value), self._step, walltime=metrics.get("time"))

        self._write(write)

    def image(self, name: str, data: bytes, content_type: str) -> None:
        """A PNG artifact (``views.png``, ``samples.png``, ...) at the newest step reported;
        other files are not pictures TensorBoard shows, and one that does not decode is skipped
        (logged)."""
        if content_type != "image/png":
            return
        try:
            with Image.open(io.BytesIO(data)) as picture:
                pixels = np.asarray(picture.convert("RGB"))
        except Exception:
            log.warning("%s is not a PNG TensorBoard can show; skipped", name)
            return
        self._write(lambda writer: writer.add_image(
            name.removesuffix(".png"), pixels, self._step, dataformats="HWC"
        ))  # fmt: skip

    def flush(self) -> None:
        """Everything written so far onto the disk; the log stays open."""
        if self._writer is not None:
            self._write(lambda writer: writer.flush())

    def _write(self, write: Callable[[Any], None]) -> None:
        if self._failed:
            return
        try:
            if self._writer is None:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(
                    str(self.directory), flush_secs=30, purge_step=self._purge_step
                )
                if self._config is not None:
                    text = json.dumps(self._config, indent=2, sort_keys=True)
                    self._writer.add_text("config", f"```json\n{text}\n```")
            write(self._writer)
        except Exception:  # the run matters more than its TensorBoard log (a full disk, ...)
            log.exception("writing TensorBoard events under %s failed; they stop here",
                          self.directory)  # fmt: skip
            self._failed = True
            self._close_after_failure()

    def _close_after_failure(self) -> None:
        """What was written before the failure onto the disk, as far as it still goes, and the
        writer's thread ended."""
        if self._writer is None:
            return
        try:
            self._writer.close()
        except Exception:
            log.warning("closing the TensorBoard log under %s failed too", self.directory)
