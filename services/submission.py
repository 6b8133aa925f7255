"""Submitting a job: what ``POST /v1/jobs`` and ``POST /v1/evaluations`` do between parsing the
request and answering it.

A job's config is validated as its kind's model (``services.kinds``), its data paths confined to
the data roots (``services.data_roots``) and its workers checked against what the cluster can
place; then the job and its first attempt are written, and the attempt is submitted to Ray once
the response is sent (the reconciler submits it on its next pass if that fails). A request
repeated with the same ``Idempotency-Key`` finds the job the first one wrote.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from fastapi import BackgroundTasks
from pydantic import BaseModel

from services.checkpoints import pretraining_checkpoint
from services.data_roots import confine_config
from services.dispatcher import DispatchError, unplaceable_reason
from services.kinds import ConfigError, validate_model
from services.schemas import EvaluationCreate
from services.service import Service
from services.store.store import JobRecord
from trainer.contracts.kinds import Kind, evaluation


def submit(
    service: Service, background: BackgroundTasks, request: BaseModel, location: str, *,
    kind: str, config: BaseModel, config_loc: tuple[str, ...], resources: BaseModel,
    name: str | None = None, max_attempts: int | None = None,
    idempotency_key: str | None = None, source_job_id: str | None = None,
) -> tuple[JobRecord, bool]:  # fmt: skip
    """Write the job ``request`` (a body posted to ``location``) asks for and submit it after the
    response; or find the one an earlier request with ``idempotency_key`` wrote (``False``).
    ``config_loc``: where the config sits in the request, for errors about its paths."""
    config = confine_config(config, service.settings.data_roots, config_loc)
    resources_json = resources.model_dump(mode="json")
    check_capacity(service, resources_json)
    canonical = json.dumps(request.model_dump(mode="json"), sort_keys=True)
    job, created = service.store.create_job(
        kind=kind,
        name=name,
        config=config.model_dump(mode="json"),
        resources=resources_json,
        max_attempts=max_attempts or service.settings.max_attempts,
        idempotency_key=idempotency_key,
        request_hash=hashlib.sha256(f"{location} {canonical}".encode()).hexdigest(),
        source_job_id=source_job_id,
    )
    if created:
        service.after_response(
            background, service.reconciler.submit, job.attempts[-1].submission_id
        )
    return job, created


def check_capacity(service: Service, resources: dict[str, Any]) -> None:
    """Refuse workers no node of the cluster can place (unless the cluster autoscales:
    ``SIMCLR_CHECK_CAPACITY=false``); an unreachable cluster refuses nothing."""
    if not service.settings.check_capacity:
        return
    try:
        nodes = service.dispatcher.capacity()
    except DispatchError:
        return  # Ray unreachable: the job queues until it comes back
    reason = nodes is not None and unplaceable_reason(resources, nodes)
    if reason:
        raise ConfigError([{"loc": ("body", "resources"), "type": "capacity", "msg": reason}])


def evaluation_config(
    service: Service, body: EvaluationCreate
) -> tuple[JobRecord, Kind, BaseModel]:
    """The pretraining job an evaluation scores, the kind of its protocol, and the evaluation's
    config: the protocol's settings, the checkpoint resolved (``latest`` or a name), and the data
    set the job trained on unless the request names one."""
    source, checkpoint = pretraining_checkpoint(service.store, body.job_id, body.checkpoint)
    kind = evaluation(body.protocol)
    settings = validate_model(kind.settings, body.config, ("body", "config"))
    config = validate_model(
        kind.config,
        {**settings.model_dump(), "dataset": body.dataset or source.config["dataset"],
         "source_job_id": source.id, "checkpoint": checkpoint.name,
         "checkpoint_path": checkpoint.path},
        ("body",),
    )  # fmt: skip
    return source, kind, config
