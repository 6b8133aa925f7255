"""A checkpoint's encoder for download: what ``GET /v1/jobs/{id}/checkpoints/{name}/export``
serves, and its model card.

The formats are written by ``python -m trainer.export`` (``trainer/export.py``), run as a process
of its own with this service's Python: the service never imports torch, but the host that runs it
needs the trainer's packages for an export (the same environment as ``simclr serve`` has here).
Each export is kept under ``<storage>/exports/<job>/<checkpoint>/`` once written (a checkpoint
never changes), written under a temporary name and renamed, so concurrent requests and a crash
leave either nothing or the whole file; an API process writes one export at a time (a request
that finds one being written gets a 503 with ``Retry-After``). Only a checkpoint of the job's own run directory, as the
store recorded it, is read.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from pydantic import ValidationError

from services.checkpoints import pretraining_checkpoint
from services.settings import Settings
from services.store.store import Store
from trainer.contracts.config import SimCLRConfig, torchvision_recipe
from trainer.contracts.kinds import kinds

log = logging.getLogger(__name__)

SUFFIXES = {"safetensors": "safetensors", "torchvision": "pth", "torchscript": "pt"}
EXPORT_TIMEOUT_S = 600
ONE_AT_A_TIME = threading.Lock()


def model_card(store: Store, job_id: str, checkpoint_name: str) -> dict[str, Any]:
    """What a downstream user needs to know about an exported encoder: the job, the checkpoint,
    the pretraining config and data, and every finished evaluation of that checkpoint."""
    job = store.get_job(job_id)
    checkpoint = store.checkpoint(job_id, checkpoint_name)
    evaluations, _ = store.list_jobs(kinds=kinds("evaluate"), source_job_id=job_id, limit=500)
    scores = [
        {"evaluation": e.id, "kind": e.kind, "dataset": e.config.get("dataset"),
         "result": e.result}
        for e in evaluations
        if e.config.get("checkpoint") == checkpoint.name and e.result is not None
    ]  # fmt: skip
    return {
        "job": job.id, "name": job.name, "kind": job.kind, "checkpoint": checkpoint.name,
        "step": checkpoint.step, "epoch": checkpoint.epoch, "config": job.config,
        "dataset": job.config.get("dataset"), "evaluations": scores,
        "torchvision": _recipe(job.config),
        "encoder": "the backbone without the projection head: pooled features of images",
    }  # fmt: skip


def _recipe(config: dict[str, Any]) -> dict[str, Any] | None:
    """How to build the torchvision model the encoder loads into, or None (no such model, or a
    config written by an older release that today's model refuses)."""
    try:
        return torchvision_recipe(SimCLRConfig.model_validate(config))
    except ValidationError:
        return None


def exported(settings: Settings, store: Store, job_id: str, checkpoint_name: str,
             format: str) -> Path:  # fmt: skip
    """The file of ``format`` for that checkpoint's encoder, written now if it is not yet."""
    _, checkpoint = pretraining_checkpoint(store, job_id, checkpoint_name)
    if "://" in settings.storage_root:
        raise HTTPException(422, "exports read checkpoints on a local or mounted storage only; "
                                 f"this service's storage is {settings.storage_root}")  # fmt: skip
    run_dir = Path(settings.run_dir(job_id)).resolve()
    source = Path(checkpoint.path).resolve()
    if not source.is_relative_to(run_dir):  # recorded by an older release, or planted
        raise HTTPException(409, f"checkpoint {checkpoint.name} lies outside job {job_id}'s run")
    target = Path(settings.storage_root, "exports", job_id, checkpoint.name,
                  f"encoder.{SUFFIXES[format]}")  # fmt: skip
    if target.is_file():
        return target
    # each export is a process with torch loaded, run on a request thread: one at a time, and a
    # request that finds one running is told to come back rather than holding a thread too
    if not ONE_AT_A_TIME.acquire(blocking=False):
        raise HTTPException(503, "another export is being written; try again shortly",
                            headers={"Retry-After": "10"})  # fmt: skip
    try:
        if target.is_file():  # written by the export that just finished
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "trainer.export", str(source), "--format", format,
                   "-o", str(target)]  # fmt: skip
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=EXPORT_TIMEOUT_S)
        except subprocess.TimeoutExpired:  # killed: its temporary file stays behind
            for left in target.parent.glob(f".{target.name}.*.tmp"):
                left.unlink(missing_ok=True)
            raise HTTPException(
                503, f"exporting {checkpoint.name} took over {EXPORT_TIMEOUT_S} s"
            ) from None
    finally:
        ONE_AT_A_TIME.release()
    if done.returncode == 2:  # trainer.export's own words: a format this backbone lacks
        said = done.stderr.strip().splitlines() or ["error: this format is not available"]
        raise HTTPException(422, said[-1].removeprefix("error: "))
    if done.returncode != 0:  # the reason may quote the file: the log has it, the client not
        log.error("export of %s/%s as %s failed (%d): %s", job_id, checkpoint.name, format,
                  done.returncode, done.stderr[-4000:])  # fmt: skip
        if done.returncode == 3:
            raise HTTPException(422, f"checkpoint {checkpoint.name} of job {job_id} does not load")
        raise HTTPException(500, "the export failed; the service log has the details")
    return target
