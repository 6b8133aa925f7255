"""A pretraining job's scores: every evaluation of its checkpoints (the table of ``GET
/v1/jobs/{id}/evaluations`` and ``simclr evals``) and ``evaluations.png``, top-1 against the
checkpoint's step with one line per protocol and data set, redrawn by the API process that takes
an evaluation's result. Draws under one lock per process; two processes that take results at the
same moment may leave the older picture until the next result."""

from __future__ import annotations

import io
import logging
import threading
from collections import defaultdict

from services.schemas import checkpoint_step
from services.store.store import JobRecord, Store
from trainer.contracts.kinds import KINDS, kinds
from trainer.plots import pyplot

log = logging.getLogger(__name__)

PLOT_NAME = "evaluations.png"
MAX_EVALUATIONS = 500
_drawing = threading.Lock()


def evaluations_of(store: Store, job_id: str) -> list[JobRecord]:
    """Every evaluation job of ``job_id``'s checkpoints, newest first (at most 500)."""
    jobs, _ = store.list_jobs(kinds=kinds("evaluate"), source_job_id=job_id, limit=MAX_EVALUATIONS)
    return jobs


def evaluations_png(series: dict[str, list[tuple[int, float]]], title: str) -> bytes:
    """Top-1 (percent) against step, one line per series label."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(7, 4), constrained_layout=True)
    for label, points in sorted(series.items()):
        steps, top1 = zip(*sorted(points), strict=True)
        axis.plot(steps, top1, marker="o", label=label)
    axis.set(xlabel="checkpoint step", ylabel="top-1 (%)", title=title)
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def redraw_evaluations_plot(store: Store, job_id: str) -> None:
    """``evaluations.png`` of ``job_id`` from the results its evaluations have reported. Never
    raises: the picture is not worth a failed report."""
    try:
        with _drawing:
            series: dict[str, list[tuple[int, float]]] = defaultdict(list)
            for job in evaluations_of(store, job_id):
                step = checkpoint_step(job.config["checkpoint"])
                if job.result and step is not None:
                    label = f"{KINDS[job.kind].protocol} on {job.config['dataset']['name']}"
                    series[label].append((step, job.result["top1"]))
            if series:
                png = evaluations_png(series, f"evaluations of {job_id}")
                store.put_artifact(job_id, PLOT_NAME, "image/png", png)
    except Exception:
        log.exception("job %s: redrawing %s failed", job_id, PLOT_NAME)
