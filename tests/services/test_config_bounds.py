"""Absurd or non-finite configs are refused (a security audit finding): NaN and Infinity in any
number, and numbers beyond what a real run could have, are 422 problems naming the field; every
number of every config and request model has bounds (checked on the models' JSON schema, so a
field added later without bounds fails here); the shipped configs still pass."""

from __future__ import annotations

import json
import math
import typing
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel, ValidationError

from services import auth
from services.app import create_app
from services.dispatcher import NoopDispatcher
from services.schemas import (
    ArtifactOut,
    AttemptOut,
    EvaluationCreate,
    EvaluationOut,
    EvaluationResultOut,
    JobCreate,
    JobOut,
    LogsOut,
)
from services.settings import Settings
from tests.services.test_api import INTERNAL, assert_problem
from trainer.contracts.config import KnnSettings, LinearProbeSettings, read_mapping
from trainer.contracts.kinds import KINDS
from trainer.contracts.spec import Resources

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
DIGITS = {"dataset": {"name": "digits"}, "backbone": {"name": "small_cnn"}, "max_steps": 2}
GENERATIVE = {"data": {"name": "digits"}, "steps": 10}
REQUEST_MODELS: list[type[BaseModel]] = [
    JobCreate,
    EvaluationCreate,
    EvaluationResultOut,
    Resources,
    LinearProbeSettings,
    KnnSettings,
]
RESPONSE_MODELS: list[type[BaseModel]] = [AttemptOut, JobOut, EvaluationOut, ArtifactOut, LogsOut]


@pytest.fixture
def api(tmp_path):
    """The API in-process (as tests/services/test_api.py builds it) on SQLite, with the no-op dispatcher
    and no capacity check, so a resource request is judged by its bounds alone. The service's
    state (database, job storage) lies apart from the data roots."""
    state = tmp_path / "state"
    state.mkdir()
    settings = Settings(
        database_url=f"sqlite:///{state / 'simclr.db'}", storage_path=str(state / "runs"),
        data_roots=[str(tmp_path / "data")], internal_token=INTERNAL, check_capacity=False,
    )  # fmt: skip
    app = create_app(settings, NoopDispatcher(), reconcile=False)
    with TestClient(app) as client:
        yield client


def assert_refused(api, response, field: str) -> None:
    body = assert_problem(response, 422, field)
    assert any(error["field"].startswith(field) for error in body["errors"]), body
    assert api.get("/v1/jobs").json()["items"] == []  # nothing was written


def worker_auth(job_id: str) -> dict[str, str]:
    """The header a job's workers report with: the job's own token where the service derives
    one from its internal secret, else the internal token itself."""
    job_token = getattr(auth, "job_token", None)
    token = job_token(INTERNAL, job_id) if job_token else INTERNAL
    return {"Authorization": f"Bearer {token}"}


# -- NaN and Infinity, as JSON literals -----------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('{"kind": "simclr", "config": {"dataset": {"name": "digits"}, "temperature": Infinity}}',
         "config.temperature"),
        ('{"kind": "simclr", "config": {"dataset": {"name": "digits"}, "temperature": NaN}}',
         "config.temperature"),
        ('{"kind": "simclr", "config": {"dataset": {"name": "digits"}, '
         '"optimizer": {"weight_decay": NaN}}}', "config.optimizer.weight_decay"),
        ('{"kind": "simclr", "config": {"dataset": {"name": "digits"}, '
         '"optimizer": {"warmup_epochs": -Infinity}}}', "config.optimizer.warmup_epochs"),
        ('{"kind": "simclr", "config": {"dataset": {"name": "digits"}, "epochs": Infinity}}',
         "config.epochs"),
        ('{"kind": "simclr", "config": {"dataset": {"name": "digits", '
         '"decode_resources": {"decode": Infinity}}}}', "config.dataset.decode_resources.decode"),
        ('{"kind": "simclr", "config": {"dataset": {"name": "digits"}, '
         '"augment": {"strength": Infinity}}}', "config.augment.strength"),
        ('{"kind": "simclr", "resources": {"cpus_per_worker": Infinity}}',
         "resources.cpus_per_worker"),
        ('{"kind": "simclr", "resources": {"gpus_per_worker": NaN}}', "resources.gpus_per_worker"),
        ('{"kind": "simclr", "config": {"dataset": {"name": "digits"}, "train_steps": NaN}}',
         "config.train_steps"),
        ('{"kind": "ddpm", "config": {"data": {"name": "digits"}, "learning_rate": NaN}}',
         "config.learning_rate"),
        ('{"kind": "ddpm", "config": {"data": {"name": "digits"}, "grad_clip": Infinity}}',
         "config.grad_clip"),
        ('{"kind": "ddpm", "config": {"data": {"name": "digits"}, "betas": [NaN, 0.999]}}',
         "config.betas.0"),
        ('{"kind": "gan", "config": {"data": {"name": "digits"}, "r1_gamma": Infinity}}',
         "config.r1_gamma"),
        ('{"kind": "diffusevae", "config": {"data": {"name": "digits"}, '
         '"diffusion": {"unet": {"dropout": NaN}}}}', "config.diffusion.unet.dropout"),
    ],
)  # fmt: skip
def test_nan_and_infinity_literals_are_422_naming_the_field(api, body, field):
    response = api.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
    assert_refused(api, response, field)


def test_non_finite_evaluation_resources_and_probe_results_are_refused(api):
    body = '{"job_id": "job-x", "resources": {"cpus_per_worker": Infinity}}'
    response = api.post(
        "/v1/evaluations", content=body, headers={"content-type": "application/json"}
    )
    assert_refused(api, response, "resources.cpus_per_worker")
    internal = {"content-type": "application/json", **worker_auth("job-x")}
    result = {"top1": 97.5, "top5": 100.0, "mode": "fast", "epochs": 30, "train_images": 1347,
              "test_images": 450, "seconds": 3.2}  # fmt: skip
    for field, value in [("top1", "NaN"), ("top5", "Infinity"), ("seconds", "Infinity"),
                         ("top1", "101"), ("top5", "-1"), ("train_images", "-1"),
                         ("seconds", "-1")]:  # fmt: skip
        text = json.dumps({**result, field: 0}).replace(f'"{field}": 0', f'"{field}": {value}')
        response = api.post("/internal/v1/jobs/job-x/result", content=text, headers=internal)
        assert_refused(api, response, field)


# -- absurd values --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "config", "resources", "field"),
    [
        ("simclr", {**DIGITS, "epochs": 10**12}, {}, "config.epochs"),
        ("simclr", {**DIGITS, "dataset": {"name": "digits", "image_size": 10**6}}, {},
         "config.dataset.image_size"),
        ("simclr", {**DIGITS, "batch_size": 10**15}, {}, "config.batch_size"),
        ("simclr", {**DIGITS, "head": {"hidden_dim": 10**9}}, {}, "config.head.hidden_dim"),
        ("simclr", {**DIGITS, "seed": 2**64}, {}, "config.seed"),
        ("simclr", {**DIGITS, "seed": -1}, {}, "config.seed"),
        ("simclr", {**DIGITS, "dataset": {"name": "digits", "loader_workers": 10**6}}, {},
         "config.dataset.loader_workers"),
        ("simclr", {**DIGITS, "dataset": {"name": "digits", "decode_resources": {"decode": -1}}},
         {}, "config.dataset.decode_resources.decode"),
        ("simclr", {**DIGITS, "max_steps": 10**12}, {}, "config.max_steps"),
        ("simclr", {**DIGITS, "train_steps": 10**12}, {}, "config.train_steps"),
        ("simclr", {**DIGITS, "train_steps": 0}, {}, "config.train_steps"),
        ("simclr", {**DIGITS, "train_steps": 7.5}, {}, "config.train_steps"),
        ("simclr", {**DIGITS, "temperature": 1e9}, {}, "config.temperature"),
        ("simclr", {**DIGITS, "optimizer": {"base_lr": 1e6}}, {}, "config.optimizer.base_lr"),
        ("simclr", {**DIGITS, "keep_checkpoints": 10**6}, {}, "config.keep_checkpoints"),
        ("simclr", DIGITS, {"num_workers": 10**9}, "resources.num_workers"),
        ("simclr", DIGITS, {"cpus_per_worker": 1e9}, "resources.cpus_per_worker"),
        ("simclr", DIGITS, {"gpus_per_worker": 1e9}, "resources.gpus_per_worker"),
        ("ddpm", {**GENERATIVE, "betas": [5, -3]}, {}, "config.betas"),
        ("ddpm", {**GENERATIVE, "grad_clip": -1}, {}, "config.grad_clip"),
        ("ddpm", {**GENERATIVE, "grad_clip": 0}, {}, "config.grad_clip"),
        # DDPM, VAE and flow change a parent's default: the parent's bounds must still hold
        ("ddpm", {**GENERATIVE, "steps": -5}, {}, "config.steps"),
        ("ddpm", {**GENERATIVE, "warmup_steps": 10**12}, {}, "config.warmup_steps"),
        ("vae", {**GENERATIVE, "learning_rate": -1}, {}, "config.learning_rate"),
        ("flow", {"data": {"name": "two_moons"}, "learning_rate": 0}, {}, "config.learning_rate"),
        ("flow", {"data": {"name": "two_moons"}, "layers": ["planar"] * 100_000}, {},
         "config.layers"),
        ("ddpm", {**GENERATIVE, "timesteps": 10**9}, {}, "config.timesteps"),
        ("ddpm", {**GENERATIVE, "unet": {"channel_mults": [1, 10**6]}}, {},
         "config.unet.channel_mults.1"),
        ("ddpm", {**GENERATIVE, "unet": {"channel_mults": [1] * 1000}}, {},
         "config.unet.channel_mults"),
        ("ddpm", {**GENERATIVE, "unet": {"attention_resolutions": [0]}}, {},
         "config.unet.attention_resolutions.0"),
        ("gan", {**GENERATIVE, "betas": [0.5, 1.0]}, {}, "config.betas.1"),
        ("gan", {**GENERATIVE, "latent_dim": 10**9}, {}, "config.latent_dim"),
        ("vae", {**GENERATIVE, "iwae_k": 10**9}, {}, "config.iwae_k"),
        ("diffusevae", {**GENERATIVE, "steps": 10**12, "vae_steps": 10**11}, {}, "config.steps"),
        ("flow", {"data": {"name": "two_moons", "train_size": 10**12}}, {},
         "config.data.ToyDataConfig.train_size"),
        ("flow", {"data": {"name": "two_moons"}, "eval_examples": 10**9}, {},
         "config.eval_examples"),
    ],
)  # fmt: skip
def test_absurd_values_are_422_naming_the_field(api, kind, config, resources, field):
    response = api.post("/v1/jobs", json={"kind": kind, "config": config, "resources": resources})
    assert_refused(api, response, field)


def test_the_largest_sensible_values_are_accepted(api):
    config = {**DIGITS, "epochs": 100_000, "batch_size": 32768, "seed": 2**32 - 1,
              "head": {"hidden_dim": 8192, "out_dim": 8192, "num_layers": 3},
              "dataset": {"name": "digits", "image_size": 512, "loader_workers": 64}}  # fmt: skip
    resources = {"num_workers": 1024, "cpus_per_worker": 64, "gpus_per_worker": 8}
    response = api.post("/v1/jobs", json={"kind": "simclr", "config": config,
                                          "resources": resources})  # fmt: skip
    assert response.status_code == 202, response.text
    ddpm = {**GENERATIVE, "betas": [0.0, 0.99], "grad_clip": 1e3, "timesteps": 4000}
    assert api.post("/v1/jobs", json={"kind": "ddpm", "config": ddpm}).status_code == 202


# -- every model: finite numbers only, and bounds on each ---------------------------------------


def models_reachable(roots: list[type[BaseModel]]) -> list[type[BaseModel]]:
    """``roots`` and every model their fields hold, however deeply (unions, tuples, dicts)."""
    seen: list[type[BaseModel]] = []

    def visit(annotation) -> None:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if annotation not in seen:
                seen.append(annotation)
                for field in annotation.model_fields.values():
                    visit(field.annotation)
            return
        for arg in typing.get_args(annotation):
            visit(arg)

    for root in roots:
        visit(root)
    return seen


CONFIG_AND_REQUEST_MODELS = models_reachable(
    [*(kind.config for kind in KINDS.values()), *REQUEST_MODELS]
)

# The least each model needs to validate (the others validate from {}).
MINIMAL: dict[str, dict] = {
    "DatasetConfig": {"name": "digits"},
    "ToyDataConfig": {"name": "two_moons"},
    "SimCLRConfig": {"dataset": {"name": "digits"}},
    **{name: {"source_job_id": "job-x", "checkpoint": "step-1",
              "checkpoint_path": "/runs/job-x/step-1", "dataset": {"name": "digits"}}
       for name in (k.config.__name__ for k in KINDS.values() if k.reads_checkpoint)},
    "ScheduledEvaluation": {"at": "end"},
    "JobCreate": {"kind": "simclr"},
    "EvaluationCreate": {"job_id": "job-x"},
    "EvaluationResultOut": {"top1": 50.0, "top5": 90.0, "mode": "fast", "epochs": 1,
                       "train_images": 10, "test_images": 10},
    **{kind.config.__name__: {"data": {"name": "digits"}} for kind in KINDS.values()
       if "data" in kind.config.model_fields},
}  # fmt: skip


def test_every_model_refuses_nan_and_infinity_by_its_config():
    for model in [*CONFIG_AND_REQUEST_MODELS, *models_reachable(RESPONSE_MODELS)]:
        assert model.model_config.get("allow_inf_nan") is False, model.__name__


def walk_numbers(schema, path: str = ""):
    """``(path, subschema)`` of every number, array and object in a JSON schema."""
    if isinstance(schema, dict):
        kinds = schema.get("type")
        kinds = set(kinds) if isinstance(kinds, list) else {kinds}
        if kinds & {"number", "integer", "array", "object"}:
            yield path, schema
        for key, value in schema.items():
            if key in ("default", "examples", "const", "enum"):
                continue
            yield from walk_numbers(value, f"{path}/{key}")
    elif isinstance(schema, list):
        for index, value in enumerate(schema):
            yield from walk_numbers(value, f"{path}/{index}")


@pytest.mark.parametrize("model", CONFIG_AND_REQUEST_MODELS, ids=lambda model: model.__name__)
def test_every_number_has_bounds_in_the_json_schema(model):
    """Each number of the OpenAPI description has a minimum and a maximum, each list a length
    limit, each map of numbers a size limit."""
    for path, schema in walk_numbers(model.model_json_schema()):
        kinds = schema.get("type")
        kinds = set(kinds) if isinstance(kinds, list) else {kinds}
        if kinds & {"number", "integer"}:
            assert "maximum" in schema or "exclusiveMaximum" in schema, (model.__name__, path)
            assert "minimum" in schema or "exclusiveMinimum" in schema, (model.__name__, path)
        if "array" in kinds:
            assert "maxItems" in schema, (model.__name__, path)
        values = schema.get("additionalProperties")
        if "object" in kinds and isinstance(values, dict) and values:  # {}: free-form (Any)
            assert "maxProperties" in schema, (model.__name__, path)


def numeric_variants(schema: dict, default, value):
    """``(JSON value, number type)`` of a field with ``value`` in one of its numbers (the rest
    from ``default``); nested models ($ref) are checked as models of their own."""
    for branch in schema.get("anyOf", []):
        yield from numeric_variants(branch, default, value)
    kind = schema.get("type")
    if kind in ("number", "integer"):
        yield value, kind
    elif kind == "array" and "prefixItems" in schema:
        base = list(default)
        for index, item in enumerate(schema["prefixItems"]):
            for variant, leaf in numeric_variants(item, base[index], value):
                yield [*base[:index], variant, *base[index + 1 :]], leaf
    elif kind == "array" and isinstance(schema.get("items"), dict):
        for variant, leaf in numeric_variants(schema["items"], None, value):
            yield [variant], leaf
    elif kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        for variant, leaf in numeric_variants(schema["additionalProperties"], None, value):
            yield {"key": variant}, leaf


@pytest.mark.parametrize("model", CONFIG_AND_REQUEST_MODELS, ids=lambda model: model.__name__)
def test_every_number_of_every_model_refuses_nan_and_infinity(model):
    minimal = MINIMAL.get(model.__name__, {})
    valid = model.model_validate(minimal)
    # every default lies within its bounds (pydantic does not validate defaults)
    model.model_validate(valid.model_dump())
    properties = model.model_json_schema()["properties"]
    for name in model.model_fields:
        default = getattr(valid, name)
        for value in (math.inf, -math.inf, math.nan):
            for variant, kind in numeric_variants(properties[name], default, value):
                with pytest.raises(ValidationError) as refused:
                    model.model_validate({**minimal, name: variant})
                errors = [e for e in refused.value.errors() if e["loc"][0] == name]
                assert errors, (model.__name__, name, variant)
                if kind == "number":  # refused as non-finite, not only by a bound
                    assert "finite_number" in {e["type"] for e in errors}, (name, errors)


# -- what ships still validates -------------------------------------------------------------------


def kind_of(path: Path) -> str:
    prefix = path.stem.split("-")[0]
    return prefix if prefix in KINDS else "simclr"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda path: path.name)
def test_the_shipped_configs_validate(path):
    config = KINDS[kind_of(path)].config.model_validate(read_mapping(path))
    # and again from their dump: every default is within its bounds
    type(config).model_validate(config.model_dump())


def test_the_config_kinds_of_the_shipped_files():
    kinds = {path.name: kind_of(path) for path in CONFIGS.glob("*.yaml")}
    assert kinds["ddpm-digits.yaml"] == "ddpm" and kinds["diffusevae-digits.yaml"] == "diffusevae"
    assert kinds["gan-digits.yaml"] == "gan" and kinds["vae-digits.yaml"] == "vae"
    assert kinds["flow-two-moons.yaml"] == "flow" and kinds["imagenet.yaml"] == "simclr"
    assert kinds["cifar10.yaml"] == kinds["digits-demo.yaml"] == "simclr"
