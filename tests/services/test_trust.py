"""The service under attack and bad luck (the audit's findings, each as it was reproduced):
non-finite metrics, one job's token against another job, checkpoints that point elsewhere,
artifacts a browser would run, logs that slow every list, absurd query numbers, the docs and
readiness without the token, a service that would listen openly."""

from __future__ import annotations

import json

import anyio
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import event

from services import cli
from services.artifacts import MAX_ARTIFACT_BYTES
from services.settings import Settings
from services.store.tables import Job
from tests.services.test_api import assert_problem, make_client, run_dir, submit, worker_auth


@pytest.fixture
def api(tmp_path):
    with make_client(f"sqlite:///{tmp_path / 'simclr.db'}", tmp_path) as client:
        yield client


def post_metrics(api: TestClient, job_id: str, text: str):
    return api.post(
        f"/internal/v1/jobs/{job_id}/metrics",
        content=text,
        headers={**worker_auth(job_id), "content-type": "application/json"},
    )


def test_non_finite_metrics_are_stored_and_returned_as_strings(database_url, tmp_path):
    """NaN became NULL in a NOT NULL column on SQLite (a 500), and inf could not be written back
    as JSON: now both are stored and come back as "NaN" / "Infinity" / "-Infinity"."""
    with make_client(database_url, tmp_path) as api:
        job_id = submit(api).json()["id"]
        body = (
            '{"points": [{"step": 1, "epoch": 0, "name": "loss", "value": "NaN"},'
            ' {"step": 1, "epoch": 0, "name": "grad", "value": "Infinity"},'
            ' {"step": 2, "epoch": 0, "name": "grad", "value": -Infinity},'
            ' {"step": 2, "epoch": 0, "name": "loss", "value": 2.5}]}'
        )
        assert post_metrics(api, job_id, body).status_code == 204
        metrics = api.get(f"/v1/jobs/{job_id}/metrics")
        assert metrics.status_code == 200
        assert [(m["step"], m["name"], m["value"]) for m in metrics.json()] == [
            (1, "grad", "Infinity"), (1, "loss", "NaN"), (2, "grad", "-Infinity"), (2, "loss", 2.5),
        ]  # fmt: skip
        checkpoint = {"name": "step-00000002", "step": 2, "epoch": 0,
                      "path": f"{run_dir(api, job_id)}/step-00000002",
                      "metrics": {"loss": float("nan"), "grad": float("-inf")}}  # fmt: skip
        reported = api.post(
            f"/internal/v1/jobs/{job_id}/checkpoints",
            content=json.dumps(checkpoint),  # NaN and -Infinity as JSON's extension literals
            headers={**worker_auth(job_id), "content-type": "application/json"},
        )
        assert reported.status_code == 201, reported.text
        [listed] = api.get(f"/v1/jobs/{job_id}/checkpoints").json()
        assert listed["metrics"] == {"loss": "NaN", "grad": "-Infinity"}


def test_one_jobs_token_opens_only_that_jobs_reports(api):
    mine, theirs = (submit(api).json()["id"] for _ in range(2))
    points = {"points": [{"step": 1, "epoch": 0, "name": "loss", "value": 1.0}]}
    assert_problem(
        api.post(f"/internal/v1/jobs/{theirs}/metrics", json=points, headers=worker_auth(mine)),
        401,
    )
    assert_problem(
        api.put(f"/internal/v1/jobs/{theirs}/artifacts/views.png", content=b"x",
                headers={**worker_auth(mine), "content-type": "image/png"}),
        401,
    )  # fmt: skip
    # the dispatcher hands each job its own token, never the service's secret
    assert api.app.state.service.settings.internal_token not in worker_auth(mine)["Authorization"]


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("../../../etc", "{run}/../../../etc"),
        ("step-00000002", "/tmp/attacker/step-00000002"),
        ("step-00000002", "{run}/../job-other/step-00000002"),
        ("latest", "{run}/latest"),
        ("step-2", "{run}/step-2"),
    ],
)
def test_checkpoints_must_be_named_as_ray_names_them_and_lie_in_the_jobs_run(api, name, path):
    job_id = submit(api).json()["id"]
    body = {"name": name, "step": 2, "epoch": 0, "path": path.format(run=run_dir(api, job_id))}
    response = api.post(
        f"/internal/v1/jobs/{job_id}/checkpoints", json=body, headers=worker_auth(job_id)
    )
    assert_problem(response, 422)
    assert api.get(f"/v1/jobs/{job_id}/checkpoints").json() == []


def test_a_finished_job_takes_no_more_reports(api):
    job_id = submit(api).json()["id"]
    api.post(f"/v1/jobs/{job_id}/cancel")
    assert api.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"
    points = {"points": [{"step": 1, "epoch": 0, "name": "loss", "value": 1.0}]}
    response = api.post(f"/internal/v1/jobs/{job_id}/metrics", json=points,
                        headers=worker_auth(job_id))  # fmt: skip
    assert_problem(response, 409, "cancelled")


def test_artifacts_are_pictures_or_text_served_unsniffable(api):
    job_id = submit(api).json()["id"]
    put = api.put
    auth = worker_auth(job_id)
    html = b"<script>fetch('/v1/jobs')</script>"
    for kind in (
        "text/html",
        "image/svg+xml",
        "application/octet-stream",
        "text/html; x=image/png",
    ):
        response = put(f"/internal/v1/jobs/{job_id}/artifacts/page.html", content=html,
                       headers={**auth, "content-type": kind})  # fmt: skip
        assert_problem(response, 415, "allowed are")
    ok = put(f"/internal/v1/jobs/{job_id}/artifacts/curves.png", content=b"\x89PNG",
             headers={**auth, "content-type": "image/png"})  # fmt: skip
    text = put(f"/internal/v1/jobs/{job_id}/artifacts/notes.txt", content=b"hello",
               headers={**auth, "content-type": "text/plain; charset=utf-8"})  # fmt: skip
    assert ok.status_code == text.status_code == 204
    image = api.get(f"/v1/jobs/{job_id}/artifacts/curves.png")
    assert image.headers["x-content-type-options"] == "nosniff"
    assert image.headers["content-disposition"] == 'inline; filename="curves.png"'
    assert "sandbox" in image.headers["content-security-policy"]
    notes = api.get(f"/v1/jobs/{job_id}/artifacts/notes.txt")
    assert notes.headers["content-type"].startswith("text/plain")
    assert notes.headers["content-disposition"].startswith("attachment")
    # one stored as HTML by an older release is served as a download of bytes
    api.app.state.service.store.put_artifact(job_id, "old.html", "text/html", html)
    old = api.get(f"/v1/jobs/{job_id}/artifacts/old.html")
    assert old.headers["content-type"] == "application/octet-stream"
    assert old.headers["content-disposition"].startswith("attachment")


def test_an_artifact_over_the_limit_is_refused_while_it_streams(api):
    """The body is read chunk by chunk with a running total: the upload is refused once the limit
    is passed, not after the whole body was read into memory. Driven as an ASGI call, since the
    test client would read the whole body before the app sees it."""
    job_id = submit(api).json()["id"]
    chunk, chunks_in_body = 1 << 20, 1024  # a 1 GiB body, of which the app may read 33 MiB
    read = 0

    async def receive():
        nonlocal read
        read += 1
        return {"type": "http.request", "body": b"\0" * chunk, "more_body": read < chunks_in_body}

    answer = []

    async def send(message):
        answer.append(message)

    headers = [(k.lower().encode(), v.encode()) for k, v in
               {**worker_auth(job_id), "content-type": "image/png"}.items()]  # fmt: skip
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "PUT",
             "scheme": "http", "path": f"/internal/v1/jobs/{job_id}/artifacts/big.png",
             "raw_path": b"", "query_string": b"", "root_path": "", "headers": headers,
             "client": ("127.0.0.1", 1), "server": ("testserver", 80), "state": {}}  # fmt: skip
    anyio.run(api.app, scope, receive, send)
    assert answer[0]["status"] == 413
    assert read <= MAX_ARTIFACT_BYTES // chunk + 2, f"read {read} MiB of a 1 GiB body"
    assert api.get(f"/v1/jobs/{job_id}/artifacts").json() == []
    declared = api.put(
        f"/internal/v1/jobs/{job_id}/artifacts/big.png", content=b"x",
        headers={**worker_auth(job_id), "content-type": "image/png",
                 "content-length": str(MAX_ARTIFACT_BYTES + 1)},
    )  # fmt: skip
    assert declared.status_code in (400, 413)


def test_nul_characters_are_422_not_500(database_url, tmp_path):
    """PostgreSQL text cannot hold NUL, nor even compare with it."""
    with make_client(database_url, tmp_path) as api:
        job_id = submit(api).json()["id"]
        assert_problem(submit(api, name="a\x00b"), 422)
        for path in ("/v1/jobs/job%00x", f"/v1/jobs/{job_id}/metrics?name=a%00",
                     f"/v1/jobs/{job_id}/artifacts/a%00", "/v1/jobs?cursor=%00"):  # fmt: skip
            assert_problem(api.get(path), 422)
        body = {"job_id": job_id, "checkpoint": "a\x00"}
        assert_problem(api.post("/v1/evaluations", json=body), 422)


def test_evaluations_stored_by_an_older_release_are_still_served(database_url, tmp_path):
    """A row written before today's bounds (a seed of 2**40) is shown as stored, not refused; a
    default name built from a 200-character job name still fits its column."""
    with make_client(database_url, tmp_path) as api:
        job_id = submit(api, name="n" * 200).json()["id"]
        body = {"name": "step-00000002", "step": 2, "epoch": 0,
                "path": f"{run_dir(api, job_id)}/step-00000002"}  # fmt: skip
        api.post(f"/internal/v1/jobs/{job_id}/checkpoints", json=body, headers=worker_auth(job_id))
        created = api.post("/v1/evaluations", json={"job_id": job_id})
        assert created.status_code == 202, created.text
        evaluation_id = created.json()["id"]
        store = api.app.state.service.store
        with store._writes.begin() as session:
            row = session.get(Job, evaluation_id)
            row.config = {**row.config, "seed": 2**40}
        shown = api.get(f"/v1/evaluations/{evaluation_id}")
        assert shown.status_code == 200 and shown.json()["config"]["seed"] == 2**40
        assert api.get(f"/v1/jobs/{job_id}/evaluations").status_code == 200


def test_list_and_get_never_read_the_logs(api):
    """A job with a long log is listed and fetched without touching its log's table."""
    job_id = submit(api).json()["id"]
    store = api.app.state.service.store
    store.mark_submitted(f"{job_id}-a1")
    store.update_attempt(f"{job_id}-a1", "running", log="x" * 2_000_000)
    statements: list[str] = []
    listener = lambda *args: statements.append(args[2])  # noqa: E731
    event.listen(store.engine, "before_cursor_execute", listener)
    try:
        assert api.get("/v1/jobs?limit=20").status_code == 200
        assert api.get(f"/v1/jobs/{job_id}").status_code == 200
    finally:
        event.remove(store.engine, "before_cursor_execute", listener)
    assert statements and not any("attempt_logs" in sql for sql in statements)
    page = api.get(f"/v1/jobs/{job_id}/logs", params={"offset": 1_999_990, "limit": 5}).json()
    assert (page["offset"], page["text"], page["next_offset"]) == (1_999_990, "xxxxx", 1_999_995)


@pytest.mark.parametrize(
    "query",
    ["metrics?after_step=1000000000000000000000000000000", "metrics?after_step=-5",
     "logs?offset=99999999999999999999999", "logs?attempt=99999999999", "logs?limit=0"],
)  # fmt: skip
def test_absurd_query_numbers_are_422_not_500(api, query):
    job_id = submit(api).json()["id"]
    assert_problem(api.get(f"/v1/jobs/{job_id}/{query}"), 422)


def test_a_worker_step_beyond_the_database_integer_is_refused(api):
    job_id = submit(api).json()["id"]
    response = post_metrics(
        api,
        job_id,
        '{"points": [{"step": 9223372036854775808, "epoch": 0, "name": "l", "value": 1}]}',
    )
    assert_problem(response, 422, "points.0.step")


def test_the_docs_need_the_token_and_readiness_names_the_dependency_not_its_error(tmp_path):
    class BrokenRay:
        dashboard_url = None

        def ping(self):
            from services.dispatcher import DispatchError

            raise DispatchError("HTTP 500: secret-internal-detail at 10.1.2.3", reachable=False)

        def capacity(self):
            return None

    with make_client(
        f"sqlite:///{tmp_path / 'db'}", tmp_path, dispatcher=BrokenRay(), api_token="s3cret"
    ) as api:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert_problem(api.get(path), 401)
            assert api.get(path, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert api.get("/healthz").status_code == 200
        ready = api.get("/readyz")
        assert_problem(ready, 503, "ray unreachable")
        assert "secret" not in ready.text and "10.1.2.3" not in ready.text


def test_the_service_refuses_to_listen_openly_without_a_token(tmp_path, monkeypatch, capsys):
    with pytest.raises(ValidationError, match="SIMCLR_API_TOKEN"):
        Settings(host="0.0.0.0", data_roots=[str(tmp_path)])
    assert Settings(host="0.0.0.0", api_token="t", data_roots=[str(tmp_path)]).host == "0.0.0.0"
    assert Settings(host="0.0.0.0", insecure=True, data_roots=[str(tmp_path)]).insecure
    assert Settings(host="::1", data_roots=[str(tmp_path)]).host == "::1"
    monkeypatch.delenv("SIMCLR_API_TOKEN", raising=False)
    with pytest.raises(SystemExit, match=r"refusing to listen on 0\.0\.0\.0"):
        cli.main(["serve", "--host", "0.0.0.0"])


def test_the_state_directory_can_never_be_under_a_data_root(tmp_path):
    state = tmp_path / "state"
    with pytest.raises(ValidationError, match="holds the service's state"):
        Settings(storage_path=str(state / "runs"), data_roots=[str(tmp_path)])
    link = tmp_path / "data-link"
    link.symlink_to(tmp_path)  # a root that reaches the state through a symlink
    with pytest.raises(ValidationError, match="holds the service's state"):
        Settings(storage_path=str(state / "runs"), data_roots=[str(tmp_path / "d"), str(link)])
    database = f"sqlite:///{tmp_path / 'data' / 'db' / 'simclr.db'}"
    with pytest.raises(ValidationError, match="holds the service's state"):
        Settings(database_url=database, storage_path=str(state / "runs"),
                 data_roots=[str(tmp_path / "data")])  # fmt: skip
    assert Settings(storage_path=str(state / "runs"), data_roots=[str(tmp_path / "data")])
