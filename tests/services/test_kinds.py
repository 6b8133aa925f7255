"""The registry of job kinds: a kind added in one row (here a toy, in this test alone) is
validated, documented and submitted by the API, gets its failure policy in the job spec, and is
run by the driver's dispatch; the built-in kinds' rows agree with what the service does."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import Field, ValidationError

from services.app import create_app
from services.dispatcher import NoopDispatcher, job_spec
from services.settings import Settings
from trainer.contracts.config import StrictModel
from trainer.contracts.kinds import KINDS, Kind, evaluation, kinds, protocols, register
from trainer.contracts.spec import JobSpec
from trainer.driver import build_trainer, ray_worker, run_kind
from trainer.session import LocalSession

RAN: list[dict[str, Any]] = []


class ToyConfig(StrictModel):
    steps: int = Field(default=3, ge=1, le=10)


def toy_worker(spec: JobSpec, session) -> None:
    """The toy kind's worker entry, with every kind's signature: its spec and a session."""
    RAN.append({"kind": spec.kind, "steps": spec.config.steps, "rank": session.rank})
    session.report_result({"steps": spec.config.steps})


@pytest.fixture
def toy():
    row = register(Kind("toy", ToyConfig, f"{__name__}:toy_worker", "generate", max_failures=1))
    yield row
    del KINDS["toy"]


class SpecDispatcher(NoopDispatcher):
    """Builds the spec the driver would get for each submission."""

    def __init__(self, settings: Settings):
        super().__init__()
        self.settings = settings
        self.specs: list[JobSpec] = []

    def submit(self, job, submission_id):
        self.specs.append(job_spec(job, self.settings))
        super().submit(job, submission_id)


def test_a_kind_added_in_one_row_runs_through_the_api_and_the_driver(toy, database_url, tmp_path):
    settings = Settings(database_url=database_url, storage_path=str(tmp_path / "runs"),
                        data_roots=[str(tmp_path / "data")])  # fmt: skip
    dispatcher = SpecDispatcher(settings)
    with TestClient(create_app(settings, dispatcher, reconcile=False)) as api:
        schema = api.get("/openapi.json").json()["components"]["schemas"]["JobCreate"]
        assert "toy" in schema["properties"]["kind"]["enum"]
        refused = api.post("/v1/jobs", json={"kind": "toy", "config": {"steps": 11}})
        assert refused.status_code == 422
        assert refused.json()["errors"][0]["field"] == "config.steps"
        answer = api.post("/v1/jobs", json={"kind": "toy", "config": {"steps": 5}})
        assert answer.status_code == 202, answer.text
        assert api.get(f"/v1/jobs/{answer.json()['id']}").json()["config"] == {"steps": 5}
    (spec,) = dispatcher.specs
    assert (spec.kind, spec.config, spec.max_failures) == ("toy", ToyConfig(steps=5), 1)

    trainer = build_trainer(spec)  # what the driver hands Ray Train: one function for all kinds
    assert trainer.train_loop_per_worker is ray_worker
    handed = JobSpec.model_validate(trainer.train_loop_config["spec"])
    run_kind(handed, LocalSession(tmp_path / "toy"))  # what ray_worker does, on a local session
    assert RAN[-1] == {"kind": "toy", "steps": 5, "rank": 0}
    assert json.loads((tmp_path / "toy" / "result.json").read_text()) == {"steps": 5}


def test_a_kind_is_taken_once_and_an_unknown_one_is_refused_by_name():
    with pytest.raises(ValueError, match="registered already"):
        register(Kind("simclr", ToyConfig, f"{__name__}:toy_worker", "pretrain"))
    with pytest.raises(ValidationError, match="no job kind 'nope'; the kinds are simclr"):
        JobSpec(job_id="j", kind="nope", config={}, storage_path="/runs")
    with pytest.raises(ValidationError, match="kind"):  # not a name at all: refused, not a crash
        JobSpec.model_validate({"job_id": "j", "kind": [], "config": {}, "storage_path": "/r"})
    with pytest.raises(ValidationError, match="kind 'simclr' takes a SimCLRConfig"):
        JobSpec(job_id="j", kind="simclr", config=ToyConfig(), storage_path="/runs")


def test_the_built_in_rows():
    assert kinds("pretrain") == ("simclr",)
    assert kinds("evaluate") == ("linear_probe", "knn", "finetune")
    assert set(kinds("generate")) == {"ddpm", "vae", "gan", "diffusevae", "flow"}
    assert [evaluation(p).name for p in protocols()] == ["linear_probe", "knn", "finetune"]
    for name in kinds("evaluate"):  # each has its settings, a part of its config
        row = KINDS[name]
        assert row.reads_checkpoint and row.settings is not None
        assert set(row.settings.model_fields) < set(row.config.model_fields)
    # a failed linear or kNN evaluation is final; fine-tuning resumes from its epoch checkpoints
    assert [KINDS[name].max_failures for name in kinds("evaluate")] == [0, 0, None]
    for kind in KINDS.values():  # every worker entry imports (on the workers: here, on CPU)
        assert callable(kind.entry())
