"""Run one training job as a Ray Train run on a Ray cluster.

    python -m trainer.driver --spec job.json
    python -m trainer.driver --spec-json '{"job_id": ...}'    (how the service starts it)

The control plane starts this as a Ray Job; it also works by hand against any cluster
(``RAY_ADDRESS``, or a local one when none is set). The run is named after the job id under
``spec.storage_path``: a worker that dies makes Ray Train restart the worker group from the latest
checkpoint (up to ``max_failures`` times), and relaunching the same spec after the driver itself
died resumes from that checkpoint too (Ray Train V2 semantics).

Ray 2.60 clusters require token authentication by default. The driver does not change that: it
uses ``RAY_AUTH_TOKEN`` or the token file (``~/.ray/auth_token``) as Ray does, and says so when a
cluster refuses it. The Ray dashboard lists Train runs only when the driver runs with
``RAY_TRAIN_ENABLE_STATE_TRACKING=1``; the driver turns it on unless it is set to something else.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from trainer.contracts.config import MAX_EPOCHS
from trainer.contracts.kinds import KINDS
from trainer.contracts.ray_auth import use_token_auth_when_available
from trainer.contracts.spec import JobSpec
from trainer.log import configure_logging

if TYPE_CHECKING:
    from trainer.session import TrainingSession

log = logging.getLogger("trainer.driver")


def ray_worker(loop_config: dict[str, Any]) -> None:
    """What every Ray Train worker runs, whatever the kind: a ``RaySession`` for its rank, then
    the kind's worker entry on it (``run_kind``)."""
    from trainer.ray_session import RaySession

    configure_logging()
    spec = JobSpec.model_validate(loop_config["spec"])
    keep = getattr(
        spec.config, "keep_checkpoints", None
    )  # None: the kind writes none (linear, kNN)
    session = RaySession(
        spec.job_id, loop_config["run_dir"], keep, loop_config.get("stream"),
        config={"kind": spec.kind, **spec.config.model_dump(mode="json")},
    )  # fmt: skip
    run_kind(spec, session)


def run_kind(spec: JobSpec, session: TrainingSession) -> None:
    """``spec``'s kind's worker entry (its registry row's ``worker``) on ``session``, then the
    session's reports delivered, also when the run failed."""
    try:
        KINDS[spec.kind].entry()(spec, session)
    finally:
        session.close()


def build_trainer(spec: JobSpec):
    """The ``TorchTrainer`` for ``spec``: its scaling, storage, failure and checkpoint settings."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    resources = spec.resources
    per_worker: dict[str, float] = {"CPU": resources.cpus_per_worker}
    if resources.use_gpu:
        per_worker["GPU"] = resources.gpus_per_worker
    storage = spec.storage_path
    if "://" not in storage:
        storage = str(Path(storage).resolve())
    spec = spec.model_copy(
        update={"storage_path": storage}
    )  # the workers' working directory differs
    run_dir = f"{storage.rstrip('/')}/{spec.job_id}"
    loop_config: dict[str, Any] = {"spec": spec.model_dump(mode="json"), "run_dir": run_dir}
    streaming: dict[str, Any] = {}
    if spec.kind == "simclr" and spec.config.dataset.loader == "ray_data":
        loop_config["stream"], streaming = ray_data_stream(spec, run_dir)
    return TorchTrainer(
        ray_worker,
        train_loop_config=loop_config,
        **streaming,
        torch_config=TorchConfig(backend="nccl" if resources.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=resources.num_workers,
            use_gpu=resources.use_gpu,
            resources_per_worker=per_worker,
        ),
        run_config=ray.train.RunConfig(
            name=spec.job_id,
            storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                # a kind whose config keeps no checkpoints (an evaluation) leaves Ray's default
                num_to_keep=getattr(spec.config, "keep_checkpoints", None)
            ),
        ),
    )


def ray_data_stream(spec: JobSpec, run_dir: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The packed shards' Ray Data stream from the epoch of the run's latest checkpoint on (the
    workers skip what that epoch already trained on), and the TorchTrainer arguments carrying it."""
    from trainer.checkpoint import latest_step
    from trainer.data.loader import steps_per_epoch
    from trainer.data.ray_data import data_config, read_shards, training_stream

    config = spec.config
    _, images = read_shards(config.dataset, roots=spec.data_roots)
    per_epoch = steps_per_epoch(images, config.batch_size)
    # a finished run relaunched still gets its last epoch: the loop then has nothing left to do
    epochs = config.data_epochs(per_epoch)
    if epochs > MAX_EPOCHS:  # the plan holds every epoch's blocks
        raise ValueError(
            f"train_steps {config.train_steps} at {per_epoch} steps an epoch of these shards is "
            f"{epochs} epochs of data; at most {MAX_EPOCHS}"
        )
    start_epoch = min(latest_step(run_dir) // per_epoch, epochs - 1)
    stream = training_stream(
        config.dataset, config.batch_size, config.seed, start_epoch, epochs,
        roots=spec.data_roots,
    )  # fmt: skip
    log.info(
        "job %s: streaming %d packed images per epoch from epoch %d",
        spec.job_id,
        images,
        start_epoch,
    )
    return (
        {"images": images, "start_step": start_epoch * per_epoch, "batch_size": config.batch_size,
         "log_indices": config.dataset.log_indices},
        {"datasets": {"train": stream}, "dataset_config": data_config()},
    )  # fmt: skip


def run(spec: JobSpec):
    """Connect to the cluster, run the job to completion, and return Ray Train's ``Result``."""
    use_token_auth_when_available()  # read by Ray when it is imported
    import ray

    os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_TRACKING", "1")
    if not ray.is_initialized():
        try:
            ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=True)
        except ConnectionError as error:
            raise ConnectionError(
                f"cannot connect to the Ray cluster at {os.environ.get('RAY_ADDRESS', 'auto')}: {error}. "
                "Ray 2.60 clusters require token authentication: set RAY_AUTH_MODE=token and "
                "RAY_AUTH_TOKEN (or put the cluster's token in ~/.ray/auth_token)."
            ) from error
    trainer = build_trainer(spec)
    log.info(
        "job %s: %s on %d worker(s) (%s), storage %s",
        spec.job_id, spec.kind, spec.resources.num_workers,
        "GPU" if spec.resources.use_gpu else "CPU", spec.storage_path,
    )  # fmt: skip
    result = trainer.fit()
    log.info("job %s finished: %s, checkpoint %s", spec.job_id, result.metrics, result.checkpoint)
    return result


def failure_reason(error: BaseException) -> str:
    """One line per distinct root error of a failed run: each worker's own (Ray Train's
    ``WorkerGroupError.worker_failures``), else the controller's, each followed to the innermost
    exception of its ``__cause__``/``__context__`` chain."""
    failures = getattr(error, "worker_failures", None) or {}
    errors = list(failures.values()) or [getattr(error, "controller_failure", error)]
    reasons: list[str] = []
    for failure in errors:
        while (inner := failure.__cause__ or failure.__context__) is not None:
            failure = inner
        text = str(failure).strip().splitlines()
        reason = f"{type(failure).__name__}: {text[-1] if text else ''}"
        if reason not in reasons:
            reasons.append(reason)
    return "; ".join(reasons)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run one training job on a Ray cluster.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--spec", help="JSON file of a JobSpec")
    source.add_argument("--spec-json", help="a JobSpec as JSON text")
    args = parser.parse_args(argv)
    configure_logging()
    try:
        if args.spec_json is not None:
            spec = JobSpec.model_validate_json(args.spec_json)
        else:
            spec = JobSpec.from_file(args.spec)
    except (FileNotFoundError, ValidationError) as error:
        parser.exit(2, f"error: {error}\n")
    try:
        run(spec)
    except ConnectionError as error:
        parser.exit(3, f"error: {error}\n")
    except Exception as error:
        # Ray Train's message ends in a controller's or a worker's traceback: the job's reason,
        # the error underneath, is said last in the log, where the service reads it
        log.error("job %s failed", spec.job_id, exc_info=True)
        log.error("job %s failed: %s", spec.job_id, failure_reason(error))
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
