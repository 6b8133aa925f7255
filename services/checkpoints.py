"""A pretraining job's checkpoint as a reader of it asks for it (an evaluation, an export): by
name or ``latest``, refused when the job does not pretrain an encoder or Ray Train pruned it."""

from __future__ import annotations

from fastapi import HTTPException

from services.store.store import JobRecord, Store
from services.store.tables import Checkpoint
from trainer.contracts.kinds import kinds


def pretraining_checkpoint(store: Store, job_id: str, name: str) -> tuple[JobRecord, Checkpoint]:
    """The job and its checkpoint ``name`` (``latest``: its newest available one); 404 for either
    missing, 422 for a job that is not a pretraining job, 409 for a pruned checkpoint (naming
    the ones kept)."""
    job = store.get_job(job_id)
    if job.kind not in kinds("pretrain"):
        raise HTTPException(422, f"job {job.id} is a {job.kind} job, not a pretraining job")
    checkpoint = store.checkpoint(job.id, name)
    if not checkpoint.available:
        kept = [c.name for c in store.list_checkpoints(job.id) if c.available]
        raise HTTPException(
            409, f"checkpoint {checkpoint.name} of job {job.id} was pruned by Ray Train "
                 f"(keep_checkpoints); available: {', '.join(kept) or 'none'}",
        )  # fmt: skip
    return job, checkpoint
