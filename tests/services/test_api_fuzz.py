"""Schemathesis over the API's own OpenAPI document: every operation, with requests that fit the
schema (positive) and requests that break it (negative), each sent with the right token and with
none. No answer may be a 5xx: bad input is a 4xx problem, never a crash.

The app runs in-process with the no-op dispatcher (Ray is not what is tested here) over SQLite
and over PostgreSQL;
the workers' endpoints get the token of the job their path names, so their bodies are exercised,
not only their authentication. Deterministic and bounded (``MAX_EXAMPLES`` per operation and
mode), so it runs in the ordinary suite.
"""

from __future__ import annotations

import contextlib

import pytest
import schemathesis
from fastapi.testclient import TestClient
from schemathesis import GenerationMode

from services.app import create_app
from services.auth import job_token
from services.dispatcher import NoopDispatcher
from services.settings import Settings
from tests.conftest import _postgres_schema_url, postgres_schema

API_TOKEN = "fuzz-api-token"
SECRET = "fuzz-internal-secret"
MAX_EXAMPLES = 25


def settings(state, database_url: str) -> Settings:
    return Settings(
        database_url=database_url, storage_path=str(state / "runs"),
        data_roots=[str(state.parent / "data")], api_token=API_TOKEN, internal_token=SECRET,
    )  # fmt: skip


def openapi() -> dict:
    """The document the running API serves (its routes do not depend on the settings)."""
    app = create_app(Settings(api_token=API_TOKEN), NoopDispatcher(), reconcile=False)
    return app.openapi()


schema = schemathesis.openapi.from_dict(openapi())
schema.config.generation.update(
    modes=list(GenerationMode), max_examples=MAX_EXAMPLES, deterministic=True, allow_x00=True
)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def api(request, tmp_path_factory):
    """The API over SQLite, or over a schema of its own on PostgreSQL (whose text refuses what
    SQLite stores: NUL characters, overlong strings)."""
    state = tmp_path_factory.mktemp("fuzz") / "state"
    with contextlib.ExitStack() as stack:
        if request.param == "postgresql":
            database_url = _postgres_schema_url(stack.enter_context(postgres_schema("simclr_fuzz")))
        else:
            database_url = f"sqlite:///{state / 'simclr.db'}"
        app = create_app(settings(state, database_url), NoopDispatcher(), reconcile=False)
        client = stack.enter_context(TestClient(app, raise_server_exceptions=False))
        auth = {"Authorization": f"Bearer {API_TOKEN}"}
        job = client.post("/v1/jobs", json={"kind": "simclr", "config": {"dataset": {"name": "digits"}}},
                          headers=auth).json()  # fmt: skip
        client.app.state.fuzz_job_id = job["id"]  # a job that exists, for the paths that name one
        yield client


def credentials(case) -> dict[str, str]:
    if case.path.startswith("/internal/"):
        job_id = case.path_parameters.get("job_id", "")
        return {"Authorization": f"Bearer {job_token(SECRET, str(job_id))}"}
    return {"Authorization": f"Bearer {API_TOKEN}"}


@schema.parametrize()
def test_no_request_makes_a_5xx(case, api):
    """Each case as generated, then (for paths naming a job) against a job that exists, each with
    the right token and with none."""
    targets = [dict(case.path_parameters or {})]
    if "job_id" in targets[0]:
        targets.append({**targets[0], "job_id": api.app.state.fuzz_job_id})
    for parameters in targets:
        case.path_parameters = parameters
        for headers in (credentials(case), {}):
            kwargs = case.as_transport_kwargs(base_url="http://testserver", headers=headers)
            response = api.request(**kwargs)
            assert response.status_code < 500, (
                f"{case.method} {case.formatted_path} -> {response.status_code}: "
                f"{response.text[:300]}"
            )
            if response.status_code >= 400:
                assert response.headers["content-type"] == "application/problem+json", response.text
