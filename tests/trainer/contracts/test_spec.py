import subprocess
import sys

import pytest
from pydantic import ValidationError

from trainer.contracts.spec import JobSpec
from trainer.driver import build_trainer


def spec_dict(**overrides):
    base = {
        "job_id": "simclr-1",
        "config": {"dataset": {"name": "digits"}, "batch_size": 64},
        "resources": {"num_workers": 2, "cpus_per_worker": 1},
        "storage_path": "/tmp/runs",
    }
    base.update(overrides)
    return base


def test_spec_round_trips_through_json(tmp_path):
    spec = JobSpec.model_validate(spec_dict())
    path = tmp_path / "spec.json"
    path.write_text(spec.model_dump_json())
    assert JobSpec.from_file(path) == spec
    assert spec.max_failures == 3 and spec.resources.use_gpu is False


@pytest.mark.parametrize("job_id", ["", "../escape", "a b", "-leading", "x" * 129])
def test_job_ids_that_would_not_be_safe_run_names_are_rejected(job_id):
    with pytest.raises(ValidationError, match="job_id"):
        JobSpec.model_validate(spec_dict(job_id=job_id))


def test_bad_resources_and_unknown_fields_name_the_field():
    with pytest.raises(ValidationError, match="num_workers"):
        JobSpec.model_validate(spec_dict(resources={"num_workers": 0}))
    with pytest.raises(ValidationError, match="gpus"):
        JobSpec.model_validate(spec_dict(resources={"gpus": 1}))
    with pytest.raises(FileNotFoundError, match="job spec not found"):
        JobSpec.from_file("/nonexistent/spec.json")


def test_trainer_carries_the_specs_scaling_storage_and_failure_settings(tmp_path):
    spec = JobSpec.model_validate(spec_dict(storage_path=str(tmp_path), max_failures=5))
    trainer = build_trainer(spec)
    assert trainer.scaling_config.num_workers == 2
    assert trainer.scaling_config.resources_per_worker == {"CPU": 1.0}
    assert trainer.run_config.name == "simclr-1"
    assert trainer.run_config.storage_path == str(tmp_path)
    assert trainer.run_config.failure_config.max_failures == 5
    assert trainer.run_config.checkpoint_config.num_to_keep == spec.config.keep_checkpoints


def test_driver_cli_reports_a_missing_spec_file():
    result = subprocess.run(
        [sys.executable, "-m", "trainer.driver", "--spec", "/nonexistent/spec.json"],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "job spec not found" in result.stderr


def test_a_failed_runs_reason_is_each_workers_own_error():
    """What the driver says last when a run fails: each worker's error as Ray Train hands it back
    (a ``WorkerGroupError`` that crossed a pickle, so chained causes are gone), once each; a
    controller's error; and an error's innermost cause where the chain survives."""
    import pickle

    from ray.train.v2.api.exceptions import ControllerError, WorkerGroupError

    from trainer.driver import failure_reason

    full = OSError(28, "No space left on device")
    failures = {0: full, 1: OSError(28, "No space left on device"), 2: ValueError("bad\nlast")}
    workers = pickle.loads(pickle.dumps(WorkerGroupError("rank 0: ...", failures)))
    assert failure_reason(workers) == (
        "OSError: [Errno 28] No space left on device; ValueError: last"
    )
    assert failure_reason(ControllerError(full)) == "OSError: [Errno 28] No space left on device"
    try:
        try:
            raise full
        except OSError as error:
            raise RuntimeError("Traceback ...\nOSError: wrapped") from error
    except RuntimeError as chained:
        assert failure_reason(chained) == "OSError: [Errno 28] No space left on device"
