"""The REST API's contracts on SQLite and PostgreSQL, with Ray replaced by the no-op dispatcher:
status codes and Location, validation errors as problem+json naming the field, idempotency, auth,
the data-root rule, capacity, pagination, cancel/retry, what workers report, health and metrics."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from services.app import create_app
from services.auth import job_token
from services.dispatcher import NoopDispatcher
from services.settings import Settings

DIGITS = {"dataset": {"name": "digits"}, "backbone": {"name": "small_cnn"}, "max_steps": 2}
INTERNAL = "internal-secret"


class CapacityDispatcher(NoopDispatcher):
    """One node with ``cpus`` CPUs (4 unless changed) and no GPU."""

    cpus = 4.0

    def capacity(self):
        return [{"CPU": self.cpus, "memory": 8e9}]


def make_client(
    database_url, tmp_path, dispatcher=None, raise_errors=True, **settings
) -> TestClient:
    settings = Settings(
        database_url=database_url, storage_path=str(tmp_path / "runs"),
        data_roots=[str(tmp_path / "data")], internal_token=INTERNAL, **settings,
    )  # fmt: skip
    app = create_app(settings, dispatcher or NoopDispatcher(), reconcile=False)
    return TestClient(app, raise_server_exceptions=raise_errors)


@pytest.fixture
def api(database_url, tmp_path):
    with make_client(database_url, tmp_path) as client:
        yield client


def worker_auth(job_id: str, secret: str = INTERNAL) -> dict[str, str]:
    """The header a job's workers send: that job's own token."""
    return {"Authorization": f"Bearer {job_token(secret, job_id)}"}


def run_dir(api: TestClient, job_id: str) -> str:
    return api.app.state.service.settings.run_dir(job_id)


def submit(api: TestClient, config=DIGITS, headers=None, **fields):
    return api.post(
        "/v1/jobs", json={"kind": "simclr", "config": config, **fields}, headers=headers
    )


def assert_problem(response, status: int, *fragments: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status and body["title"] and "Traceback" not in response.text
    for fragment in fragments:
        assert fragment in body["detail"], body
    return body


def test_submit_returns_202_with_location_and_the_job_with_the_paper_defaults(api):
    response = submit(api, name="digits smoke", resources={"num_workers": 2})
    assert response.status_code == 202
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["name"] == "digits smoke" and job["error"] is None
    assert job["resources"]["num_workers"] == 2
    assert job["config"]["temperature"] == 0.1 and job["config"]["optimizer"]["name"] == "lars"
    assert job["config"]["max_steps"] == 2
    [attempt] = job["attempts"]
    assert attempt["submission_id"] == f"{job['id']}-a1" and attempt["state"] == "new"
    assert job["created_at"].endswith("Z") or job["created_at"].endswith("+00:00")
    assert api.get(response.headers["location"]).json()["id"] == job["id"]


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"batch_size": 4096, "bogus": 1}, "config.bogus"),
        ({"dataset": {"name": "mnist"}}, "config.dataset.name"),
        ({"temperature": -1}, "config.temperature"),
        ({"dataset": {"name": "cifar10"}}, "config.dataset"),
    ],
)
def test_invalid_configs_are_422_problems_naming_the_field(api, config, field):
    body = assert_problem(submit(api, config), 422, field)
    assert any(error["field"].startswith(field) for error in body["errors"])
    assert api.get("/v1/jobs").json()["items"] == []  # nothing was written


def test_unknown_kind_and_bad_resources_are_rejected(api):
    assert_problem(api.post("/v1/jobs", json={"kind": "word2vec"}), 422, "kind")
    assert_problem(submit(api, resources={"num_workers": 0}), 422, "resources.num_workers")
    assert_problem(
        api.post("/v1/jobs", content=b"{not json", headers={"content-type": "application/json"}),
        422,
    )


def test_idempotency_key_same_body_200_different_body_409(api):
    headers = {"Idempotency-Key": "7f1c"}
    first = submit(api, headers=headers)
    again = submit(api, headers=headers)
    assert first.status_code == 202 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == first.headers["location"]
    assert_problem(submit(api, {**DIGITS, "max_steps": 3}, headers=headers), 409, "7f1c")
    assert len(api.get("/v1/jobs").json()["items"]) == 1
    # the client now sends a key with every submission: one past the column's 200 is refused
    assert submit(api, headers={"Idempotency-Key": "k" * 200}).status_code == 202
    assert_problem(submit(api, headers={"Idempotency-Key": "k" * 201}), 422, "idempotency")
    assert len(api.get("/v1/jobs").json()["items"]) == 2


def test_dataset_roots_must_lie_under_the_data_roots(api, tmp_path):
    (tmp_path / "data" / "cifar").mkdir(parents=True)
    inside = {"dataset": {"name": "cifar10", "root": str(tmp_path / "data" / "cifar")}}
    assert submit(api, inside).status_code == 202
    outside_list = {"dataset": {"name": "imagenet", "root": str(tmp_path / "data" / "in"),
                                "class_list": "/etc/passwd"}}  # fmt: skip
    assert_problem(submit(api, outside_list), 422, "config.dataset.class_list", "data roots")
    for root in ("/etc", str(tmp_path / "data" / ".." / "elsewhere"), str(tmp_path / "data2")):
        assert_problem(
            submit(api, {"dataset": {"name": "imagefolder", "root": root}}),
            422, "config.dataset.root", "data roots",
        )  # fmt: skip


def test_resources_the_cluster_can_never_place_are_rejected(database_url, tmp_path):
    with make_client(database_url, tmp_path, CapacityDispatcher()) as api:
        assert submit(api, resources={"num_workers": 4}).status_code == 202
        assert_problem(submit(api, resources={"num_workers": 5}), 422, "at most 4 workers")
        assert_problem(submit(api, resources={"num_workers": 1, "use_gpu": True}), 422, "GPU")
        assert_problem(submit(api, resources={"cpus_per_worker": 8}), 422, "largest node")


def test_a_resent_submission_finds_its_job_though_the_cluster_shrank_since(database_url, tmp_path):
    """The client resends a submission whose answer it lost: its key must find the job before
    the request is checked again against a cluster that can no longer place it, or data roots
    that no longer hold its data."""
    dispatcher = CapacityDispatcher()
    with make_client(database_url, tmp_path, dispatcher) as api:
        headers = {"Idempotency-Key": "client:lost-answer"}
        first = submit(api, headers=headers, resources={"num_workers": 4})
        assert first.status_code == 202
        dispatcher.cpus = 2.0
        again = submit(api, headers=headers, resources={"num_workers": 4})
        assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
        # a new request is checked: the same body under another key is refused now
        assert_problem(submit(api, headers={"Idempotency-Key": "client:new"},
                              resources={"num_workers": 4}), 422, "at most 2 workers")  # fmt: skip
        assert_problem(submit(api, headers={"Idempotency-Key": "scheduled:x"}), 422, "prefix")

        (tmp_path / "data" / "cifar").mkdir(parents=True)
        inside = {"dataset": {"name": "cifar10", "root": str(tmp_path / "data" / "cifar")}}
        headers = {"Idempotency-Key": "client:moved"}
        first = submit(api, inside, headers=headers)
        assert first.status_code == 202
        api.app.state.service.settings.data_roots = [str(tmp_path / "elsewhere")]
        again = submit(api, inside, headers=headers)
        assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
        assert_problem(submit(api, inside), 422, "data roots")


def test_auth_when_a_token_is_set(database_url, tmp_path):
    with make_client(database_url, tmp_path, api_token="s3cret") as api:
        assert api.get("/healthz").status_code == 200
        for method, path in (("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("GET", "/metrics"),
                             ("GET", "/v1/jobs/x/logs"), ("POST", "/v1/evaluations"),
                             ("GET", "/v1/jobs/x/checkpoints/latest/export")):  # fmt: skip
            response = api.request(method, path)
            assert_problem(response, 401, "bearer token")
            assert response.headers["www-authenticate"] == "Bearer"
        wrong = api.get("/v1/jobs", headers={"Authorization": "Bearer s3cre"})
        assert_problem(wrong, 401)
        ok = {"Authorization": "Bearer s3cret"}
        assert api.get("/v1/jobs", headers=ok).status_code == 200
        assert (
            api.post("/v1/jobs", json={"kind": "simclr", "config": DIGITS}, headers=ok).status_code
            == 202
        )
        # the API token does not open the workers' endpoints, and theirs does not open the API
        job_id = api.get("/v1/jobs", headers=ok).json()["items"][0]["id"]
        report = {"points": [{"step": 1, "epoch": 0, "name": "loss", "value": 1.0}]}
        assert_problem(
            api.post(f"/internal/v1/jobs/{job_id}/metrics", json=report, headers=ok), 401
        )
        for internal in (worker_auth(job_id), {"Authorization": f"Bearer {INTERNAL}"}):
            assert_problem(api.get("/v1/jobs", headers=internal), 401)


def test_list_filters_and_paginates(api):
    ids = [submit(api, name=f"j{i}").json()["id"] for i in range(5)]
    api.post(f"/v1/jobs/{ids[0]}/cancel")
    pages, cursor = [], None
    while True:
        body = api.get(
            "/v1/jobs", params={"limit": 2, **({"cursor": cursor} if cursor else {})}
        ).json()
        pages.append([job["id"] for job in body["items"]])
        cursor = body["next_cursor"]
        if not cursor:
            break
    assert [len(page) for page in pages] == [2, 2, 1]
    assert [job_id for page in pages for job_id in page] == ids[::-1]
    assert [j["id"] for j in api.get("/v1/jobs?status=cancelled").json()["items"]] == [ids[0]]
    assert api.get("/v1/jobs?kind=simclr&status=queued").json()["items"][0]["id"] == ids[-1]
    assert_problem(api.get("/v1/jobs?status=sleeping"), 422, "status")
    assert_problem(api.get("/v1/jobs?cursor=bogus"), 422, "cursor")
    assert_problem(api.get("/v1/jobs?limit=0"), 422, "limit")


def test_cancel_and_retry(api):
    job_id = submit(api).json()["id"]
    cancelled = api.post(f"/v1/jobs/{job_id}/cancel")
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelling"
    # the no-op "Ray job" was submitted after the POST; the cancel stopped it after the response
    assert api.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"
    assert_problem(api.post(f"/v1/jobs/{job_id}/cancel"), 409, "already cancelled")
    retried = api.post(f"/v1/jobs/{job_id}/retry")
    assert retried.status_code == 202
    assert retried.json()["status"] == "queued" and len(retried.json()["attempts"]) == 2
    assert_problem(api.post(f"/v1/jobs/{job_id}/retry"), 409, "only failed or cancelled")
    assert_problem(api.post("/v1/jobs/job-missing/cancel"), 404, "job-missing")
    assert_problem(api.get("/v1/jobs/job-missing"), 404)


def test_worker_reports_become_metrics_checkpoints_and_artifacts(api):
    job_id = submit(api).json()["id"]
    auth = worker_auth(job_id)
    points = [{"step": s, "epoch": 0, "name": n, "value": v}
              for s in (1, 2) for n, v in (("loss", 6.0 - s), ("lr", 0.1 * s))]  # fmt: skip
    assert (
        api.post(
            f"/internal/v1/jobs/{job_id}/metrics", json={"points": points}, headers=auth
        ).status_code
        == 204
    )
    checkpoint = {"name": "step-00000002", "step": 2, "epoch": 0, "keep": 2,
                  "path": f"{run_dir(api, job_id)}/step-00000002", "metrics": {"loss": 4.0}}  # fmt: skip
    assert (
        api.post(
            f"/internal/v1/jobs/{job_id}/checkpoints", json=checkpoint, headers=auth
        ).status_code
        == 201
    )
    png = b"\x89PNG\r\n\x1a\nfake"
    put = api.put(f"/internal/v1/jobs/{job_id}/artifacts/views.png", content=png,
                  headers={**auth, "Content-Type": "image/png"})  # fmt: skip
    assert put.status_code == 204
    assert_problem(
        api.put(f"/internal/v1/jobs/{job_id}/artifacts/.hidden", content=b"", headers=auth),
        422,
        "artifact name",
    )
    assert_problem(
        api.post("/internal/v1/jobs/job-x/metrics", json={"points": points}, headers=auth), 401
    )
    assert_problem(
        api.post(
            "/internal/v1/jobs/job-x/metrics", json={"points": points}, headers=worker_auth("job-x")
        ),
        404,
    )

    metrics = api.get(f"/v1/jobs/{job_id}/metrics").json()
    assert [(m["step"], m["name"], m["value"]) for m in metrics] == [
        (1, "loss", 5.0),
        (1, "lr", 0.1),
        (2, "loss", 4.0),
        (2, "lr", 0.2),
    ]
    assert len(api.get(f"/v1/jobs/{job_id}/metrics?name=loss&after_step=1").json()) == 1
    [listed] = api.get(f"/v1/jobs/{job_id}/checkpoints").json()
    assert (
        listed["name"] == "step-00000002"
        and listed["available"]
        and listed["metrics"]["loss"] == 4.0
    )
    [artifact] = api.get(f"/v1/jobs/{job_id}/artifacts").json()
    assert artifact["size"] == len(png) and artifact["content_type"] == "image/png"
    image = api.get(artifact["url"])
    assert image.content == png and image.headers["content-type"] == "image/png"
    assert_problem(api.get(f"/v1/jobs/{job_id}/artifacts/loss.png"), 404, "loss.png")


def test_logs_are_served_by_offset(api):
    job_id = submit(api).json()["id"]
    store = api.app.state.service.store
    store.mark_submitted(f"{job_id}-a1")
    store.update_attempt(f"{job_id}-a1", "running", log="line 1\nline 2\n")
    first = api.get(f"/v1/jobs/{job_id}/logs").json()
    assert first["text"] == "line 1\nline 2\n" and not first["complete"]
    store.update_attempt(f"{job_id}-a1", "succeeded", log="line 1\nline 2\nline 3\n")
    rest = api.get(f"/v1/jobs/{job_id}/logs", params={"offset": first["next_offset"]}).json()
    assert rest["text"] == "line 3\n" and rest["complete"]
    assert_problem(api.get(f"/v1/jobs/{job_id}/logs?attempt=7"), 422, "no attempt 7")


def test_health_readiness_and_prometheus_metrics(api):
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz").json()
    assert ready["status"] == "ready" and ready["checks"] == {"database": "ok", "ray": "ok"}
    submit(api)
    api.get("/v1/jobs")
    text = api.get("/metrics").text
    assert 'simclr_jobs{status="queued"} 1.0' in text
    assert (
        'simclr_http_request_duration_seconds_count{method="GET",route="/v1/jobs",status="200"}'
        in text
    )
    assert 'route="/v1/jobs/{job_id}' not in text or "job-2" not in text  # templates, not paths


def test_unexpected_errors_are_500_problems_without_traceback(database_url, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    with make_client(database_url, tmp_path, raise_errors=False) as api:
        monkeypatch.setattr(api.app.state.service.store, "list_jobs", broken)
        body = assert_problem(api.get("/v1/jobs"), 500, "internal error")
    assert "secret" not in body["detail"]


def test_openapi_documents_the_api(api):
    paths = api.get("/openapi.json").json()["paths"]
    for path in ("/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/cancel", "/v1/jobs/{job_id}/retry",
                 "/v1/jobs/{job_id}/metrics", "/v1/jobs/{job_id}/checkpoints", "/v1/jobs/{job_id}/logs",
                 "/v1/jobs/{job_id}/artifacts", "/healthz", "/readyz"):  # fmt: skip
        assert path in paths
    assert api.get("/docs").status_code == 200


def report_checkpoint(api: TestClient, job_id: str, step: int, keep: int = 2):
    body = {"name": f"step-{step:08d}", "step": step, "epoch": 0, "keep": keep,
            "path": f"{run_dir(api, job_id)}/step-{step:08d}", "metrics": {"loss": 1.0}}  # fmt: skip
    response = api.post(
        f"/internal/v1/jobs/{job_id}/checkpoints", json=body, headers=worker_auth(job_id)
    )
    assert response.status_code == 201


def test_evaluations_resolve_the_checkpoint_and_run_as_their_own_job(api):
    job_id = submit(api).json()["id"]
    for step in (2, 4, 6):
        report_checkpoint(api, job_id, step)
    response = api.post("/v1/evaluations", json={"job_id": job_id, "config": {"epochs": 30}})
    assert response.status_code == 202, response.text
    evaluation = response.json()
    assert response.headers["location"] == f"/v1/evaluations/{evaluation['id']}"
    assert evaluation["job_id"] == job_id and evaluation["checkpoint"] == "step-00000006"
    assert evaluation["mode"] == "fast" and evaluation["dataset"]["name"] == "digits"
    assert evaluation["config"]["epochs"] == 30 and evaluation["config"]["base_lr"] == 0.1
    assert evaluation["status"] == "queued" and evaluation["result"] is None
    # its own job of kind linear_probe, with the path the service resolved
    as_job = api.get(f"/v1/jobs/{evaluation['id']}").json()
    assert as_job["kind"] == "linear_probe" and as_job["source_job_id"] == job_id
    assert as_job["config"]["checkpoint_path"] == f"{run_dir(api, job_id)}/step-00000006"

    named = api.post("/v1/evaluations", json={"job_id": job_id, "checkpoint": "step-00000004",
                                              "config": {"mode": "augmented"}}).json()  # fmt: skip
    assert named["checkpoint"] == "step-00000004" and named["mode"] == "augmented"
    result = {"top1": 97.5, "top5": 100.0, "mode": "fast", "epochs": 30, "train_images": 1347,
              "test_images": 450, "seconds": 3.2}  # fmt: skip
    reported = api.post(f"/internal/v1/jobs/{evaluation['id']}/result", json=result,
                        headers=worker_auth(evaluation["id"]))  # fmt: skip
    assert reported.status_code == 204
    got = api.get(f"/v1/evaluations/{evaluation['id']}").json()
    assert got["result"] == {**result, "protocol": "linear"} and got["protocol"] == "linear"

    knn = api.post("/v1/evaluations", json={"job_id": job_id, "protocol": "knn",
                                            "config": {"k": 20}}).json()  # fmt: skip
    assert (knn["protocol"], knn["mode"], knn["checkpoint"]) == ("knn", None, "step-00000006")
    assert knn["config"] == {"k": 20, "temperature": 0.1}
    assert api.get(f"/v1/jobs/{knn['id']}").json()["kind"] == "knn"
    scored = {"protocol": "knn", "top1": 91.0, "top5": 99.0, "k": 20, "temperature": 0.1,
              "train_images": 1347, "test_images": 450, "seconds": 0.5}  # fmt: skip
    assert api.post(f"/internal/v1/jobs/{knn['id']}/result", json=scored,
                    headers=worker_auth(knn["id"])).status_code == 204  # fmt: skip
    assert api.get(f"/v1/evaluations/{knn['id']}").json()["result"] == scored
    listed = api.get(f"/v1/jobs/{job_id}/evaluations").json()
    assert [e["id"] for e in listed] == [knn["id"], named["id"], evaluation["id"]]
    assert_problem(api.post("/v1/evaluations", json={"job_id": job_id, "protocol": "knn",
                                                     "config": {"k": 0}}), 422, "config.k")  # fmt: skip
    assert_problem(api.post("/v1/evaluations", json={"job_id": job_id, "protocol": "knn",
                                                     "config": {"epochs": 3}}), 422, "config.epochs")  # fmt: skip
    assert_problem(api.post("/v1/evaluations", json={"job_id": job_id, "protocol": "byol"}),
                   422, "protocol")  # fmt: skip


def test_a_resent_evaluation_finds_its_job_though_its_checkpoint_was_pruned_since(api):
    job_id = submit(api).json()["id"]
    report_checkpoint(api, job_id, 2)
    body, headers = {"job_id": job_id, "checkpoint": "step-00000002"}, {"Idempotency-Key": "e1"}
    first = api.post("/v1/evaluations", json=body, headers=headers)
    assert first.status_code == 202, first.text
    for step in (4, 6):  # keep 2: step 2 is pruned
        report_checkpoint(api, job_id, step)
    again = api.post("/v1/evaluations", json=body, headers=headers)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == f"/v1/evaluations/{first.json()['id']}"
    assert_problem(api.post("/v1/evaluations", json=body, headers={"Idempotency-Key": "e2"}),
                   409, "pruned")  # fmt: skip
    # the key's job is found only for the request it was made for, at the place it was posted
    assert_problem(api.post("/v1/evaluations", json={**body, "protocol": "knn"}, headers=headers),
                   409, "e1")  # fmt: skip
    assert_problem(submit(api, headers=headers), 409, "e1")


def test_evaluation_errors(api, tmp_path):
    job_id = submit(api).json()["id"]
    assert_problem(api.post("/v1/evaluations", json={"job_id": "job-nope"}), 404, "job-nope")
    assert_problem(
        api.post("/v1/evaluations", json={"job_id": job_id}), 404, "no checkpoint 'latest'"
    )
    for step in (2, 4, 6):
        report_checkpoint(api, job_id, step)
    assert_problem(api.post("/v1/evaluations", json={"job_id": job_id, "checkpoint": "step-00000002"}),
                   409, "pruned", "step-00000004, step-00000006")  # fmt: skip
    assert_problem(api.post("/v1/evaluations", json={"job_id": job_id, "config": {"checkpoint_path": "/etc"}}),
                   422, "config.checkpoint_path")  # fmt: skip
    assert_problem(api.post("/v1/evaluations", json={"job_id": job_id, "config": {"mode": "slow"}}),
                   422, "config.mode")  # fmt: skip
    assert_problem(api.post("/v1/evaluations", json={"job_id": job_id, "dataset": {"name": "imagenet", "root": "/etc"}}),
                   422, "dataset.root", "data roots")  # fmt: skip
    assert_problem(
        api.post("/v1/evaluations", json={"job_id": job_id, "config": {"crop_scale": [0.9, 0.1]}}),
        422, "crop_scale",
    )  # fmt: skip
    evaluation_id = api.post("/v1/evaluations", json={"job_id": job_id}).json()["id"]
    assert_problem(
        api.post("/v1/evaluations", json={"job_id": evaluation_id}), 422, "not a pretraining job"
    )
    assert_problem(api.get(f"/v1/evaluations/{job_id}"), 404, "simclr job")
    assert_problem(api.post("/v1/jobs", json={"kind": "linear_probe", "config": {}}), 422, "kind")


def test_the_internal_token_survives_a_restart_so_running_jobs_keep_reporting(
    database_url, tmp_path
):
    settings = Settings(
        database_url=database_url,
        storage_path=str(tmp_path / "state" / "runs"),
        data_roots=[str(tmp_path / "data")],
    )
    tokens = []
    for _ in range(2):  # a service, then the same service restarted
        with TestClient(create_app(settings, NoopDispatcher(), reconcile=False)) as api:
            tokens.append(api.app.state.service.settings.internal_token)
            job_id = submit(api).json()["id"]
            report = {"points": [{"step": 1, "epoch": 0, "name": "loss", "value": 1.0}]}
            sent = api.post(f"/internal/v1/jobs/{job_id}/metrics", json=report,
                            headers=worker_auth(job_id, tokens[0]))  # fmt: skip
            assert sent.status_code == 204
    assert tokens[0] == tokens[1] and len(tokens[0]) >= 32
    token_file = tmp_path / "state" / "internal_token"
    assert token_file.read_text() == tokens[0] and token_file.stat().st_mode & 0o777 == 0o600
