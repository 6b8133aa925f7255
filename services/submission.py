"""Submitting a job: what ``POST /v1/jobs`` and ``POST /v1/evaluations`` do between parsing the
request and answering it.

A job's config is validated as its kind's model (``services.kinds``), its data paths confined to
the data roots (``services.data_roots``) and its workers checked against what the cluster can
place; then the job and its first attempt are written, and the attempt is submitted to Ray once
the response is sent (the reconciler submits it on its next pass if that fails). A request
repeated with the same ``Idempotency-Key`` finds the job the first one wrote
(``earlier_submission``), before any of those checks runs again.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from fastapi import BackgroundTasks, HTTPException
from pydantic import BaseModel

from services.checkpoints import pretraining_checkpoint
from services.data_roots import confine_config
from services.dispatcher import DispatchError, unplaceable_reason
from services.kinds import ConfigError, validate_model
from services.schemas import EvaluationCreate, EvaluationRequest, JobCreate
from services.store.store import JobRecord
from trainer.contracts.kinds import KINDS, Kind, evaluation

if TYPE_CHECKING:  # services.service builds the reconciler that schedules with this module
    from services.service import Service

# the idempotency keys of the evaluations a job asked for at submission (``services.scheduled``)
SCHEDULED_KEY_PREFIX = "scheduled:"


def submit(
    service: Service, background: BackgroundTasks, request: BaseModel, location: str, *,
    kind: str, config: BaseModel, config_loc: tuple[str, ...], resources: BaseModel,
    name: str | None = None, max_attempts: int | None = None,
    idempotency_key: str | None = None, source_job_id: str | None = None,
    evaluate: list[dict[str, Any]] | None = None,
) -> tuple[JobRecord, bool]:  # fmt: skip
    """Write the job ``request`` (a body posted to ``location``) asks for and submit it after the
    response; or find the one a concurrent request with ``idempotency_key`` wrote (``False``).
    Called after ``earlier_submission``, which refuses a key of the service's own. ``config_loc``:
    where the config sits in the request, for errors about its paths; ``evaluate``: the
    evaluations the job asks for (``scheduled_evaluations``)."""
    config = confine_config(config, service.settings.data_roots, config_loc)
    resources_json = resources.model_dump(mode="json")
    check_capacity(service, resources_json)
    job, created = service.store.create_job(
        kind=kind,
        name=name,
        config=config.model_dump(mode="json"),
        resources=resources_json,
        max_attempts=max_attempts or service.settings.max_attempts,
        idempotency_key=idempotency_key,
        request_hash=request_hash(location, request),
        source_job_id=source_job_id,
        evaluate=evaluate,
    )
    if created:
        service.after_response(
            background, service.reconciler.submit, job.attempts[-1].submission_id
        )
    return job, created


def earlier_submission(
    service: Service, request: BaseModel, location: str, idempotency_key: str | None
) -> JobRecord | None:
    """The job an earlier ``request`` to ``location`` with ``idempotency_key`` wrote, or None.
    Looked up before the request is validated again: a client resending a submission whose answer
    it lost must find its job even where the cluster shrank, the data roots moved or the checkpoint
    an evaluation names was pruned since. ``Conflict`` (409) for a key used with another request;
    422 for a key in the namespace of the service's own (``SCHEDULED_KEY_PREFIX``), before the
    lookup, so that no client learns of those jobs through a key."""
    if idempotency_key is None:
        return None
    if idempotency_key.startswith(SCHEDULED_KEY_PREFIX):
        raise HTTPException(
            422, f"Idempotency-Key: the prefix {SCHEDULED_KEY_PREFIX!r} is the service's own"
        )
    return service.store.job_by_idempotency_key(idempotency_key, request_hash(location, request))


def request_hash(location: str, request: BaseModel) -> str:
    """What identifies a request for its idempotency key: where it was posted and its body."""
    canonical = json.dumps(request.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(f"{location} {canonical}".encode()).hexdigest()


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
    config (``evaluation_job_config``) of the checkpoint the request names (``latest`` or a name)."""
    source, checkpoint = pretraining_checkpoint(service.store, body.job_id, body.checkpoint)
    kind = evaluation(body.protocol)
    config = evaluation_job_config(kind, body, source.config["dataset"], source.id,
                                   checkpoint.name, checkpoint.path, ("body",))  # fmt: skip
    return source, kind, config


def evaluation_name(kind: Kind, source_name: str, checkpoint: str) -> str:
    """The name an evaluation job gets when its request gives none."""
    return f"{kind.name.replace('_', ' ')} of {source_name} at {checkpoint}"[:200]


def evaluation_job_config(
    kind: Kind, request: EvaluationRequest, default_dataset: dict[str, Any], source_job_id: str,
    checkpoint: str, checkpoint_path: str, loc: tuple[str | int, ...],
) -> BaseModel:  # fmt: skip
    """An evaluation job's config: the protocol's settings ``request`` chose (checked as the
    kind's ``settings``), its data set (``default_dataset``, the pretraining job's, unless it names
    one) and the checkpoint; ``ConfigError`` names the field below ``loc`` that is wrong."""
    settings = validate_model(kind.settings, request.config, (*loc, "config"))
    config = validate_model(
        kind.config,
        {**settings.model_dump(), "dataset": request.dataset or default_dataset,
         "source_job_id": source_job_id, "checkpoint": checkpoint,
         "checkpoint_path": checkpoint_path},
        loc,
    )  # fmt: skip
    if config.dataset.name == "packed":  # streamed by Ray Data for pretraining only
        raise ConfigError([{"loc": (*loc, "dataset"), "type": "value_error",
                            "msg": "an evaluation reads an image folder, not packed shards: give "
                                   "'dataset' (the folder the shards were packed from)"}])  # fmt: skip
    return config


def scheduled_evaluations(
    service: Service, body: JobCreate, config: BaseModel
) -> list[dict[str, Any]]:
    """The ``evaluate`` list of a job submission, each item checked as the evaluation it will
    become (settings, data set, paths under the data roots, workers the cluster can place), as
    it is stored: the protocol's settings in full and the data set's paths resolved. ``config``:
    the job's validated config, whose data set an item without one evaluates on."""
    if not body.evaluate:
        return []
    if KINDS[body.kind].role != "pretrain":
        raise ConfigError([{"loc": ("body", "evaluate"), "type": "value_error",
                            "msg": f"a {body.kind} job has no encoder to evaluate"}])  # fmt: skip
    items = []
    dataset = config.dataset.model_dump(mode="json")
    for index, item in enumerate(body.evaluate):
        loc = ("body", "evaluate", index)
        kind = evaluation(item.protocol)
        evaluated = evaluation_job_config(kind, item, dataset, "pending", "pending", "pending", loc)
        evaluated = confine_config(evaluated, service.settings.data_roots, ("evaluate", str(index)))
        check_capacity(service, item.resources.model_dump(mode="json"))
        settings = {name: getattr(evaluated, name) for name in kind.settings.model_fields}
        stored = item.model_copy(update={
            "dataset": evaluated.dataset.model_dump(mode="json") if item.dataset else None,
            "config": kind.settings.model_validate(settings).model_dump(mode="json"),
        })  # fmt: skip
        items.append(stored.model_dump(mode="json"))
    return items
