"""What the console reads from the API, on SQLite and PostgreSQL: each job's progress in the jobs
list, the kinds with their defaults, metric histories cut down on the server, and the pages'
own answers (no data, a strict Content-Security-Policy, no file but the console's)."""

from __future__ import annotations

import math
from datetime import timedelta
from types import SimpleNamespace

import pytest
from sqlalchemy import update

from services.kinds import validate_config
from services.series import downsample
from services.store.tables import MetricPoint
from tests.services.test_api import make_client, submit, worker_auth


@pytest.fixture
def api(database_url, tmp_path):
    with make_client(database_url, tmp_path) as client:
        yield client


def report(api, job_id, points):
    response = api.post(
        f"/internal/v1/jobs/{job_id}/metrics", json={"points": points}, headers=worker_auth(job_id)
    )
    assert response.status_code == 204, response.text


def test_the_jobs_list_says_how_far_each_job_is_and_its_best_score(api):
    first, second = submit(api).json(), submit(api).json()
    store = api.app.state.service.store
    store.update_attempt(f"{first['id']}-a1", "running", None)  # as the reconciler does
    report(api, first["id"], [
        {"step": s, "epoch": 0, "name": name, "value": value}
        for s in (10, 20, 30)
        for name, value in (("loss", 6.0 - s / 10), ("total_steps", 120))
    ] + [{"step": 40, "epoch": 0, "name": "loss", "value": "NaN"}])  # fmt: skip
    run_dir = api.app.state.service.settings.run_dir(first["id"])
    checkpoint = {"name": "step-00000030", "step": 30, "epoch": 0,
                  "path": f"{run_dir}/step-00000030"}  # fmt: skip
    response = api.post(f"/internal/v1/jobs/{first['id']}/checkpoints", json=checkpoint,
                        headers=worker_auth(first["id"]))  # fmt: skip
    assert response.status_code == 201, response.text
    for top1, protocol in ((61.5, "linear"), (70.25, "knn"), (55.0, "linear")):
        evaluation = api.post("/v1/evaluations", json={
            "job_id": first["id"], "checkpoint": "step-00000030", "protocol": protocol,
        })  # fmt: skip
        assert evaluation.status_code == 202, evaluation.text
        evaluation_id = evaluation.json()["id"]
        store.update_attempt(f"{evaluation_id}-a1", "running", None)
        store.set_result(evaluation_id, {"protocol": protocol, "top1": top1, "top5": 99.0,
                                         "train_images": 10, "test_images": 10})  # fmt: skip
        store.update_attempt(f"{evaluation_id}-a1", "succeeded", None)

    items = {job["id"]: job for job in api.get("/v1/jobs?kind=simclr").json()["items"]}
    progress = items[first["id"]]["progress"]
    # the newest loss point is NaN: the step is its, the loss is not shown
    assert progress["step"] == 40 and progress["total_steps"] == 120 and progress["loss"] is None
    assert progress["best"] == {"top1": 70.25, "protocol": "knn", "dataset": "digits",
                                "checkpoint": "step-00000030"}  # fmt: skip
    assert items[second["id"]]["progress"] == {"step": None, "total_steps": None, "loss": None,
                                               "eta_seconds": None, "best": None}  # fmt: skip
    assert api.get(f"/v1/jobs/{first['id']}").json()["progress"] == progress
    report(api, first["id"], [{"step": 50, "epoch": 0, "name": "loss", "value": 2.5}])
    assert api.get(f"/v1/jobs/{first['id']}").json()["progress"]["loss"] == 2.5


def received(store, job_id: str, step: int, seconds: float) -> None:
    """A loss point at ``step``, as if the service received it ``seconds`` after the running
    attempt started."""
    started = store.get_job(job_id).attempts[-1].started_at
    store.add_metrics(job_id, [{"step": step, "epoch": 0, "name": "loss", "value": 1.0}])
    with store.engine.begin() as connection:
        connection.execute(update(MetricPoint).where(
            MetricPoint.job_id == job_id, MetricPoint.step == step,
        ).values(recorded_at=started + timedelta(seconds=seconds)))  # fmt: skip


def test_a_job_reporting_an_absurd_total_leaves_the_jobs_list_working(api):
    """total_steps is a metric like any other (any finite float): 1e308 steps at a slow pace would
    make the time left infinite and the list's answer invalid for every job on the page."""
    job = submit(api).json()
    store = api.app.state.service.store
    store.update_attempt(f"{job['id']}-a1", "running", None)
    report(api, job["id"], [{"step": 1, "epoch": 0, "name": "total_steps", "value": 1e308}])
    received(store, job["id"], 10, 1.0)
    received(store, job["id"], 20, 10_001.0)  # 10 steps in 10,000 s
    response = api.get("/v1/jobs")
    assert response.status_code == 200, response.text
    progress = response.json()["items"][0]["progress"]
    assert progress["step"] == 20 and progress["total_steps"] is None
    assert progress["eta_seconds"] is None
    for step, value in enumerate((-1e300, "NaN", "Infinity", 1e12), start=2):
        report(api, job["id"], [{"step": step, "epoch": 0, "name": "total_steps", "value": value}])
        response = api.get("/v1/jobs")
        assert response.status_code == 200, (value, response.text)
        progress = response.json()["items"][0]["progress"]
        assert progress["total_steps"] is None and progress["eta_seconds"] is None, value


def test_the_time_left_is_the_pace_over_the_last_tenth_of_the_running_attempt(api):
    job = submit(api).json()
    store = api.app.state.service.store
    store.update_attempt(f"{job['id']}-a1", "running", None)

    def eta():
        return api.get(f"/v1/jobs/{job['id']}").json()["progress"]["eta_seconds"]

    store.add_metrics(job["id"], [{"step": 1, "epoch": 0, "name": "total_steps", "value": 400}])
    received(store, job["id"], 100, -30)  # before this attempt started (an earlier attempt's)
    received(store, job["id"], 200, 60)
    assert eta() is None  # the last tenth's start is not this attempt's
    received(store, job["id"], 100, 10)  # reported again by this attempt: 100 steps in 50 s
    assert eta() == pytest.approx(100.0)  # (400 - 200) steps at 2 steps/s
    store.update_attempt(f"{job['id']}-a1", "succeeded", None)
    assert eta() is None  # an ended job has no time left


def test_kinds_list_every_kind_with_the_defaults_a_submission_gets(api):
    kinds = {kind["name"]: kind for kind in api.get("/v1/kinds").json()}
    assert {"simclr", "ddpm", "vae", "gan", "diffusevae", "flow"} <= set(kinds)
    simclr = kinds["simclr"]
    assert simclr["role"] == "pretrain" and simclr["defaults"]["temperature"] == 0.1
    assert simclr["defaults"]["optimizer"]["name"] == "lars"
    assert simclr["config_schema"]["title"] == "SimCLRConfig"
    # the defaults are what validation fills in: the form's values change nothing
    job = submit(api, {"dataset": {"name": "digits"}}).json()
    filled = validate_config("simclr", {**simclr["defaults"], "dataset": {"name": "digits"}})
    assert filled.model_dump(mode="json") == job["config"]
    protocols = {kind["protocol"] for kind in kinds.values() if kind["role"] == "evaluate"}
    assert {"linear", "knn", "finetune"} <= protocols
    assert "source_job_id" not in kinds["linear_probe"]["defaults"]  # the settings a user picks


def point(step: int, value: float | None):
    return SimpleNamespace(step=step, value=value)


def test_downsampling_keeps_the_ends_the_extremes_and_the_non_finite_points():
    values = [math.sin(s / 500) for s in range(100_000)]
    values[31_337] = 50.0  # a spike a stride would miss
    values[77_777] = None  # NaN is stored as None
    values[88_888] = math.inf
    series = [point(s, v) for s, v in enumerate(values)]
    kept = downsample(series, 1000)
    assert len(kept) <= 1000
    steps = [p.step for p in kept]
    assert steps == sorted(steps) and steps[0] == 0 and steps[-1] == 99_999
    assert {31_337, 77_777, 88_888} <= set(steps)
    finite = [p.value for p in kept if p.value is not None and math.isfinite(p.value)]
    assert min(finite) == pytest.approx(-1.0, abs=1e-4) and max(finite) == 50.0
    assert downsample(series[:10], 1000) == series[:10]


# on SQLite only: the cut is made after the read, which tests/services/test_store.py holds to one
# contract on both databases (PostgreSQL would add 9 s to the suite here)
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_100000_point_history_comes_back_as_at_most_max_points_a_metric(api):
    job = submit(api).json()
    store = api.app.state.service.store
    for start in range(0, 100_000, 5_000):  # a report holds at most 10,000 points
        store.add_metrics(job["id"], [
            {"step": s, "epoch": 0, "name": name, "value": 1.0 / (s + 1)}
            for s in range(start, start + 5_000) for name in ("loss", "lr")
        ])  # fmt: skip
    served = api.get(f"/v1/jobs/{job['id']}/metrics", params={"max_points": 1000}).json()
    for name in ("loss", "lr"):
        steps = [p["step"] for p in served if p["name"] == name]
        assert 900 <= len(steps) <= 1000 and steps[0] == 0 and steps[-1] == 99_999
    assert [(p["step"], p["name"]) for p in served] == sorted(
        (p["step"], p["name"]) for p in served
    )
    assert len(api.get(f"/v1/jobs/{job['id']}/metrics", params={"name": "loss"}).json()) == 100_000
    for bad in (0, 7, 100_001, "x"):
        assert (
            api.get(f"/v1/jobs/{job['id']}/metrics", params={"max_points": bad}).status_code == 422
        )


def test_the_pages_carry_no_data_and_a_strict_policy_and_serve_only_their_files(
    database_url, tmp_path
):
    with make_client(database_url, tmp_path, api_token="sesame") as client:
        assert client.get("/", follow_redirects=False).headers["location"] == "/ui/"
        for page in ("/ui/", "/ui/submit", "/ui/jobs/job-1", "/ui/static/console.js",
                     "/ui/static/console.css"):  # fmt: skip
            response = client.get(page)  # no token: the pages hold no data
            assert response.status_code == 200, page
            policy = response.headers["content-security-policy"]
            assert "default-src 'none'" in policy and "script-src 'self'" in policy
            assert "unsafe-inline" not in policy and "frame-ancestors 'none'" in policy
            assert response.headers["x-content-type-options"] == "nosniff"
            assert "set-cookie" not in response.headers
        assert client.get("/ui/").headers["content-type"].startswith("text/html")
        assert "<script>" not in client.get("/ui/").text  # nothing inline
        for other in ("index.html", "..%2Fapp.py", "%2E%2E%2Fauth.py", "console.js.map"):
            assert client.get(f"/ui/static/{other}").status_code == 404
        assert client.get("/v1/kinds").status_code == 401  # the data stays behind the token
        assert (
            client.get("/v1/kinds", headers={"Authorization": "Bearer sesame"}).status_code == 200
        )
