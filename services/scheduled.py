"""Evaluations a pretraining job asked for when it was submitted (``evaluate`` of ``POST
/v1/jobs``): each becomes an evaluation job of its own, as if posted to ``/v1/evaluations``,
never a part of the training job.

An item with ``every: checkpoint`` is submitted for every checkpoint the job reports while Ray
Train still keeps it (``keep_checkpoints``: one pruned before the next pass is skipped); one with
``at: end`` for the job's newest checkpoint once the job has succeeded. The reconciler's leader
runs ``schedule_evaluations`` on every pass; each evaluation it creates carries the idempotency
key ``scheduled:<job>:<item>:<checkpoint>``, so a pass repeated after a crash, or by another
leader, creates nothing twice, and its first attempt is submitted by the next pass like any new
attempt. A job is done with once it has ended and every item has been seen through; a job that
is retried is scheduled again. One job's failure to schedule is logged and retried next pass
without holding up the others; an item that no longer validates (stored by an older release)
is logged and skipped. Each pass costs two queries per job when nothing is due (its
checkpoints, the keys it has), and a job gets at most ``MAX_SCHEDULED_PER_JOB`` evaluations.
"""

from __future__ import annotations

import hashlib
import logging

from pydantic import ValidationError

from services.kinds import ConfigError
from services.schemas import ScheduledEvaluation
from services.store.store import JobRecord, Store
from services.submission import SCHEDULED_KEY_PREFIX, evaluation_job_config, evaluation_name
from trainer.contracts.kinds import evaluation
from trainer.contracts.states import TERMINAL

log = logging.getLogger(__name__)

# evaluation jobs one job may get from its ``evaluate`` list (every checkpoint of a long run with a
# short checkpoint interval would otherwise flood the cluster)
MAX_SCHEDULED_PER_JOB = 200


def schedule_evaluations(store: Store, max_attempts: int) -> None:
    """Create the evaluation jobs due for every job still scheduling evaluations."""
    for job in store.jobs_scheduling_evaluations():
        try:
            schedule_job(store, job, max_attempts)
        except Exception:
            log.exception("job %s: scheduling its evaluations failed; trying next pass", job.id)


def schedule_job(store: Store, job: JobRecord, max_attempts: int) -> None:
    """The evaluations of ``job`` due now: of each available checkpoint for ``every:
    checkpoint`` items, of the newest one for ``at: end`` items once it has succeeded; at most
    ``MAX_SCHEDULED_PER_JOB`` in all. Two queries when nothing is due."""
    checkpoints = [c for c in store.list_checkpoints(job.id) if c.available]
    made = store.idempotency_keys(f"{SCHEDULED_KEY_PREFIX}{job.id}:")
    for index, stored in enumerate(job.evaluate or []):
        if stored.get("every") == "checkpoint":
            due = checkpoints
        else:
            due = checkpoints[-1:] if job.status == "succeeded" else []
        keys = {f"{SCHEDULED_KEY_PREFIX}{job.id}:{index}:{c.name}": c for c in due}
        pending = [(key, checkpoint) for key, checkpoint in keys.items() if key not in made]
        if not pending:
            continue
        try:
            item = ScheduledEvaluation.model_validate(stored)
            kind = evaluation(item.protocol)
        except (ValidationError, KeyError) as error:
            log.error("job %s: evaluation %d cannot be made and is skipped: %s", job.id, index,
                      error)  # fmt: skip
            continue
        for key, checkpoint in pending:
            if len(made) >= MAX_SCHEDULED_PER_JOB:
                log.warning("job %s: %d scheduled evaluations, the most a job gets; no more",
                            job.id, len(made))  # fmt: skip
                break
            try:
                config = evaluation_job_config(kind, item, job.config["dataset"], job.id,
                                               checkpoint.name, checkpoint.path, ())  # fmt: skip
            except (ConfigError, KeyError) as error:
                log.error("job %s: evaluation %d of %s cannot be made and is skipped: %s",
                          job.id, index, checkpoint.name, error)  # fmt: skip
                break
            created_job, created = store.create_job(
                kind=kind.name, name=item.name or evaluation_name(kind, job.name, checkpoint.name),
                config=config.model_dump(mode="json"), resources=item.resources.model_dump(mode="json"),
                max_attempts=max_attempts, idempotency_key=key,
                request_hash=hashlib.sha256(key.encode()).hexdigest(), source_job_id=job.id,
            )  # fmt: skip
            made.add(key)
            if created:
                log.info("job %s: evaluation %s (%s of %s) scheduled", job.id, created_job.id,
                         item.protocol, checkpoint.name)  # fmt: skip
    if job.status in TERMINAL:
        store.mark_evaluations_scheduled(job.id)
