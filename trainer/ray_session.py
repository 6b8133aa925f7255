"""``TrainingSession`` for one rank of a Ray Train worker group.

Checkpoints go through ``ray.train.report(metrics, checkpoint=...)`` (rank 0 writes the state into a
temporary directory; every rank reports, as Ray Train requires) and come back from
``ray.train.get_checkpoint()`` after a restart. Metrics are also exported as Prometheus gauges
through ``ray.util.metrics`` (tagged with the job id), so they appear in the Ray dashboard, and
appended by rank 0 to ``<storage>/<job id>/metrics.jsonl`` and sent to the service
(``trainer.reporter``) with every checkpoint and artifact: Ray Train keeps only the metrics
that come with a checkpoint.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
from ray.util.metrics import Gauge
from torch import nn

from trainer.checkpoint import RAY_CHECKPOINT_FILE, load_checkpoint, save_atomic
from trainer.data.sources import BatchSource
from trainer.global_bn import convert_to_global_batch_norm
from trainer.reporter import Reporter
from trainer.tensorboard import TensorBoardLog

log = logging.getLogger(__name__)

_GAUGES = {
    "loss": "training loss of the global batch (NT-Xent for SimCLR)",
    "lr": "learning rate",
    "images_per_s": "images per second over all workers",
    "step": "optimiser steps done",
    "epoch": "current epoch",
    "knn_top1": "online kNN top-1 (percent) of the encoder on held-out images (monitor)",
}


class RaySession:
    def __init__(
        self, job_id: str, run_dir: str, keep_checkpoints: int | None,
        stream: dict[str, Any] | None = None, config: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        """``run_dir``: the run's directory on the storage (a path, or a URI for remote storage);
        ``keep_checkpoints``: how many Ray Train keeps (None: the kind keeps none); ``stream``:
        the Ray Data stream the driver started (``trainer.driver.ray_data_stream``), or None;
        ``config``: the job's config, written into its TensorBoard log."""
        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.device = ray.train.torch.get_device()
        self.job_id = job_id
        self.run_dir = run_dir
        self.keep_checkpoints = keep_checkpoints
        self.stream = stream
        local = "://" not in run_dir
        self.metrics_file = Path(run_dir) / "metrics.jsonl" if local and self.rank == 0 else None
        self.reporter = Reporter.from_env(job_id) if self.rank == 0 else None
        # TensorBoard's writer takes local paths only: a run on remote storage has no event files
        self.tensorboard = TensorBoardLog(run_dir, config) if local and self.rank == 0 else None
        self._gauges = (
            {
                name: Gauge(f"simclr_{name}", description, tag_keys=("job_id",))
                for name, description in _GAUGES.items()
            }
            if self.rank == 0
            else {}
        )

    def restore(self) -> dict[str, Any] | None:
        """The checkpoint's state, or None; the TensorBoard log then drops what an earlier
        attempt logged after the step the run goes on from."""
        checkpoint = ray.train.get_checkpoint()
        state = None
        if checkpoint is not None:
            with checkpoint.as_directory() as directory:
                state = load_checkpoint(
                    Path(directory) / RAY_CHECKPOINT_FILE, map_location=self.device
                )
        if self.tensorboard is not None:
            self.tensorboard.restart_after(int((state or {}).get("step", 0)))
        return state

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Global batch norm across ranks (the paper's), then DDP through Ray Train."""
        if self.world_size > 1:
            model = convert_to_global_batch_norm(model)
        # Global statistics keep the BN buffers equal on every rank: no per-step broadcast needed.
        return ray.train.torch.prepare_model(
            model, parallel_strategy_kwargs={"broadcast_buffers": False}
        )

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None = None) -> None:
        for name, gauge in self._gauges.items():
            if name in metrics:
                gauge.set(metrics[name], tags={"job_id": self.job_id})
        if self.metrics_file is not None:
            self.metrics_file.parent.mkdir(parents=True, exist_ok=True)
            with self.metrics_file.open("a") as f:
                f.write(json.dumps(metrics) + "\n")
        if self.reporter is not None:
            self.reporter.metrics(metrics)
        if self.tensorboard is not None:
            self.tensorboard.scalars(metrics)
        if state is None:
            ray.train.report(metrics)
            return
        name = f"step-{int(metrics['step']):08d}"
        with tempfile.TemporaryDirectory(prefix="simclr-checkpoint-") as directory:
            save_atomic(state, Path(directory) / RAY_CHECKPOINT_FILE)
            checkpoint = ray.train.Checkpoint.from_directory(directory)
            ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)
        if self.reporter is not None:
            self.reporter.checkpoint(
                name, int(metrics["step"]), int(metrics["epoch"]), f"{self.run_dir}/{name}",
                metrics, self.keep_checkpoints,
            )  # fmt: skip

    def save_artifact(self, name: str, data: bytes, content_type: str) -> None:
        if self.tensorboard is not None:
            self.tensorboard.image(name, data, content_type)
        if self.reporter is not None:
            self.reporter.artifact(name, data, content_type)
        elif "://" not in self.run_dir:
            Path(self.run_dir).mkdir(parents=True, exist_ok=True)
            (Path(self.run_dir) / name).write_bytes(data)

    def report_result(self, result: dict[str, Any]) -> None:
        """Sent to the service (retried until the flush deadline in ``close``: the result is an
        evaluation's point); without one, ``<run_dir>/result.json`` on local storage."""
        if self.reporter is not None:
            self.reporter.result(result)
        elif "://" not in self.run_dir:
            Path(self.run_dir).mkdir(parents=True, exist_ok=True)
            temporary = Path(self.run_dir) / "result.json.tmp"
            temporary.write_text(json.dumps(result) + "\n")
            temporary.replace(temporary.with_suffix(""))

    def data_stream(self) -> BatchSource | None:
        if self.stream is None:
            return None
        from trainer.data.ray_data import IndexLog, RayDataSource

        index_log = None
        if self.stream["log_indices"]:
            index_log = IndexLog(Path(self.run_dir, "indices", f"rank-{self.rank}.jsonl"))
        return RayDataSource(
            ray.train.get_dataset_shard("train"), self.stream["images"], self.stream["batch_size"],
            self.world_size, self.stream["start_step"], index_log,
        )  # fmt: skip

    def close(self) -> None:
        """Rank 0 flushes its reports to the service (for up to ``$SIMCLR_REPORT_FLUSH_S``,
        default 60 s; what is left is logged, and the service backfills metrics and checkpoints
        from the storage), and its TensorBoard events go onto the disk. Never raises; the
        session stays usable."""
        if self.tensorboard is not None:
            self.tensorboard.flush()
        if self.reporter is None:
            return
        try:
            self.reporter.flush()
        except Exception:  # flush does not raise; a failure here must not hide the run's own
            log.exception("flushing the reports to the control plane failed")
