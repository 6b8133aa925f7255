"""What a job's run left on the storage, read back into the record when an attempt ends.

Rank 0 appends every metrics row to ``<run dir>/metrics.jsonl`` and Ray Train writes each
checkpoint to ``<run dir>/step-<8 digits>/state.pt``, whether or not the service heard the
reports (``trainer.ray_session``). Reading both when an attempt ends makes the record complete even
when every report was lost (the service was down for the end of the run). A checkpoint counts
once Ray Train registered it in its ``checkpoint_manager_snapshot.json`` (an upload cut short, by a
full disk or a kill, is not registered, and Ray Train would not resume from it either); without
that file, every ``step-*`` directory holding a ``state.pt``. Only local or mounted storage is
read; the service never opens ``state.pt`` (it needs no torch). A malformed line is skipped and counted, never fatal: the file is the worker's, and a
torn last line is what a killed worker leaves.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from services.schemas import MAX_INT32, MetricPointIn
from services.store.store import Store
from trainer.reporter import INDEX_FIELDS

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"
CHECKPOINT_STATE = "state.pt"
CHECKPOINT_DIR = re.compile(r"^step-([0-9]{8,10})$")
BATCH = 5_000


def _points(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The metric points of one ``metrics.jsonl`` row (validated as a worker's report is)."""
    step, epoch = row.get("step"), row.get("epoch")
    points = []
    for name, value in row.items():
        if name in INDEX_FIELDS or not isinstance(value, int | float) or isinstance(value, bool):
            continue
        point = {"step": step, "epoch": epoch, "name": name, "value": value}
        points.append(MetricPointIn.model_validate(point).model_dump())
    return points


def read_metrics(path: Path) -> tuple[list[dict[str, Any]], dict[int, dict[str, Any]], int]:
    """The metric points of ``metrics.jsonl``, each step's row (for its checkpoint's metrics), and
    the number of lines skipped as malformed."""
    points: list[dict[str, Any]] = []
    rows: dict[int, dict[str, Any]] = {}
    skipped = 0
    with path.open(encoding="utf-8", errors="replace") as file:
        for line in file:
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError("not an object")
                row_points = _points(row)
                step = int(row["step"])
            except (ValueError, TypeError, KeyError, OverflowError, ValidationError):
                skipped += 1
                continue
            points += row_points
            rows[step] = row
    return points, rows, skipped


def backfill(store: Store, job_id: str, run_dir: str, keep: int | None) -> None:
    """Store every metric point and checkpoint found in the job's run directory that the record
    lacks (points already stored are rewritten with the same values)."""
    if "://" in run_dir:
        return  # remote storage: only the workers' reports reach the service
    directory = Path(run_dir)
    metrics_file = directory / METRICS_FILE
    rows: dict[int, dict[str, Any]] = {}
    if metrics_file.is_file():
        try:
            points, rows, skipped = read_metrics(metrics_file)
            for start in range(0, len(points), BATCH):
                store.add_metrics(job_id, points[start : start + BATCH])
            if skipped:
                log.warning("job %s: %d malformed line(s) of %s skipped", job_id, skipped,
                            metrics_file)  # fmt: skip
        except Exception:  # the checkpoints are recovered all the same
            log.exception("job %s: reading %s back failed", job_id, metrics_file)
    known = {checkpoint.name for checkpoint in store.list_checkpoints(job_id)}
    registered = ray_registered(directory / RAY_SNAPSHOT)
    found = sorted(
        (int(match.group(1)), child.name)
        for child in (directory.iterdir() if directory.is_dir() else ())
        if (match := CHECKPOINT_DIR.match(child.name))
        and (child / CHECKPOINT_STATE).is_file()
        and (registered is None or child.name in registered)
    )
    for step, name in found:
        if name in known or step > MAX_INT32:
            continue
        row = rows.get(step, {})
        metrics = {k: v for k, v in row.items() if isinstance(v, int | float | str | bool)}
        epoch = row.get("epoch", 0)
        store.add_checkpoint(
            job_id, name=name, step=step,
            epoch=int(epoch) if _finite(epoch) and 0 <= epoch <= MAX_INT32 else 0,
            path=f"{run_dir}/{name}", metrics=metrics, keep=keep,
        )  # fmt: skip
        log.info("job %s: checkpoint %s recovered from the storage", job_id, name)


def ray_registered(snapshot: Path) -> set[str] | None:
    """The checkpoint directories Ray Train's snapshot lists, or None without a readable one."""
    try:
        results = json.loads(snapshot.read_text())["checkpoint_results"]
        return {str(result["checkpoint_dir_name"]) for result in results}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)
