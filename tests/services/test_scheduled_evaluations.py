"""Evaluations a pretraining job asks for at submission (``evaluate``), on SQLite and PostgreSQL
with the no-op dispatcher: checked as the evaluations they become, created once per checkpoint
(or at the end) however often the reconciler's pass runs, isolated per job; the score table,
``evaluations.png`` and ``simclr evals``."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from services import cli, scheduled
from services.client import Client
from services.scheduled import schedule_evaluations
from services.store.tables import Job
from tests.services.test_api import (
    DIGITS,
    assert_problem,
    make_client,
    report_checkpoint,
    run_dir,
    submit,
    worker_auth,
)
from tests.services.test_cli import run


@pytest.fixture
def api(database_url, tmp_path):
    with make_client(database_url, tmp_path) as client:
        yield client


ASKED = [
    {"protocol": "knn", "every": "checkpoint", "config": {"k": 20}},
    {"protocol": "linear", "at": "end", "config": {"epochs": 5}},
    {"protocol": "finetune", "at": "end", "config": {"label_fraction": 0.01},
     "resources": {"num_workers": 2}},
]  # fmt: skip


def evaluations(api, job_id: str) -> list[dict]:
    return api.get(f"/v1/jobs/{job_id}/evaluations").json()


def test_a_job_gets_each_evaluation_it_asked_for_as_its_own_job_once(api):
    store = api.app.state.service.store
    response = submit(api, evaluate=ASKED)
    assert response.status_code == 202, response.text
    job = response.json()
    # stored as checked: every setting of the protocol, the job's data set left implicit
    assert job["evaluate"][0]["config"] == {"k": 20, "temperature": 0.1}
    assert job["evaluate"][2]["config"]["base_lr"] == 0.05 and job["evaluate"][2]["dataset"] is None

    schedule_evaluations(store, 3)
    assert evaluations(api, job["id"]) == []  # no checkpoint yet
    for step in (2, 4):
        report_checkpoint(api, job["id"], step)
    for _ in range(3):  # every pass, however many: once per checkpoint and item
        schedule_evaluations(store, 3)
    made = evaluations(api, job["id"])
    assert sorted((e["protocol"], e["step"]) for e in made) == [("knn", 2), ("knn", 4)]
    assert all(e["config"] == {"k": 20, "temperature": 0.1} and e["status"] == "queued"
               for e in made)  # fmt: skip
    knn = api.get(f"/v1/jobs/{made[0]['id']}").json()
    assert knn["kind"] == "knn" and knn["source_job_id"] == job["id"]
    assert knn["config"]["checkpoint_path"] == f"{run_dir(api, job['id'])}/{made[0]['checkpoint']}"
    assert knn["attempts"][0]["state"] == "new"  # the reconciler's next pass submits it

    report_checkpoint(api, job["id"], 6)  # keeps 2: step 2 is pruned
    store.update_attempt(f"{job['id']}-a1", "succeeded")
    schedule_evaluations(store, 3)
    schedule_evaluations(store, 3)
    made = evaluations(api, job["id"])
    assert sorted((e["protocol"], e["step"]) for e in made) == [
        ("finetune", 6), ("knn", 2), ("knn", 4), ("knn", 6), ("linear", 6)]  # fmt: skip
    finetune = next(e for e in made if e["protocol"] == "finetune")
    assert finetune["resources"]["num_workers"] == 2
    assert finetune["config"]["label_fraction"] == 0.01
    assert store.jobs_scheduling_evaluations() == []  # ended and seen through


def test_a_cancelled_job_gets_its_checkpoints_scored_but_no_end_and_a_retry_schedules_again(api):
    store = api.app.state.service.store
    job_id = submit(api, evaluate=ASKED).json()["id"]
    report_checkpoint(api, job_id, 2)
    api.post(f"/v1/jobs/{job_id}/cancel")
    assert api.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"
    schedule_evaluations(store, 3)
    assert [(e["protocol"], e["step"]) for e in evaluations(api, job_id)] == [("knn", 2)]
    assert store.jobs_scheduling_evaluations() == []
    api.post(f"/v1/jobs/{job_id}/retry")  # its new checkpoints and its end are to come
    assert [j.id for j in store.jobs_scheduling_evaluations()] == [job_id]
    report_checkpoint(api, job_id, 4)
    schedule_evaluations(store, 3)
    assert sorted(e["step"] for e in evaluations(api, job_id)) == [2, 4]
    # a client sending the key of one of these (for any body) learns nothing of it
    key = f"scheduled:{job_id}:0:step-00000002"
    assert key in store.idempotency_keys("scheduled:")
    for path, body in (("/v1/jobs", {"kind": "simclr", "config": DIGITS}),
                       ("/v1/evaluations", {"job_id": job_id})):  # fmt: skip
        refused = assert_problem(api.post(path, json=body, headers={"Idempotency-Key": key}),
                                 422, "Idempotency-Key")  # fmt: skip
        assert not any(e["id"] in refused["detail"] for e in evaluations(api, job_id))


def test_scores_come_back_as_a_table_a_plot_and_the_clis_evals(api, capsys, monkeypatch):
    store = api.app.state.service.store
    job_id = submit(api, evaluate=ASKED[:1]).json()["id"]
    for step in (2, 4):
        report_checkpoint(api, job_id, step)
    schedule_evaluations(store, 3)
    assert "evaluations.png" not in [
        a["name"] for a in api.get(f"/v1/jobs/{job_id}/artifacts").json()
    ]
    for evaluation, top1 in zip(sorted(evaluations(api, job_id), key=lambda e: e["step"]),
                                (61.5, 72.25), strict=True):  # fmt: skip
        result = {"protocol": "knn", "top1": top1, "top5": 99.0, "k": 20, "temperature": 0.1,
                  "train_images": 1347, "test_images": 450}  # fmt: skip
        reported = api.post(f"/internal/v1/jobs/{evaluation['id']}/result", json=result,
                            headers=worker_auth(evaluation["id"]))  # fmt: skip
        assert reported.status_code == 204
    table = evaluations(api, job_id)
    assert sorted((e["step"], e["result"]["top1"]) for e in table) == [(2, 61.5), (4, 72.25)]
    plot = api.get(f"/v1/jobs/{job_id}/artifacts/evaluations.png")
    assert plot.status_code == 200 and plot.content.startswith(b"\x89PNG")

    monkeypatch.setattr(cli, "Client", lambda: Client(http=api))
    lines = run(capsys, "evals", job_id).splitlines()
    assert lines[0].split() == ["ID", "CHECKPOINT", "STEP", "PROTOCOL", "DATASET", "TOP1", "TOP5",
                                "STATUS"]  # fmt: skip
    assert [line.split()[1:6] for line in lines[1:]] == [
        ["step-00000002", "2", "knn", "digits", "61.50"],
        ["step-00000004", "4", "knn", "digits", "72.25"],
    ]


def test_what_a_job_asks_for_is_checked_at_submission(api, tmp_path):
    def asked(*items, **fields):
        return submit(api, evaluate=list(items), **fields)

    assert_problem(asked({"protocol": "byol", "at": "end"}), 422, "evaluate.0.protocol")
    assert_problem(asked({"protocol": "knn"}), 422, "evaluate.0", "'every': 'checkpoint'")
    assert_problem(
        asked({"protocol": "knn", "at": "end", "every": "checkpoint"}), 422, "evaluate.0"
    )
    assert_problem(asked(ASKED[0], {"protocol": "knn", "at": "end", "config": {"k": 0}}),
                   422, "evaluate.1.config.k")  # fmt: skip
    assert_problem(asked({"protocol": "linear", "at": "end", "config": {"job_id": "x"}}),
                   422, "evaluate.0.config.job_id")  # fmt: skip
    assert_problem(asked({"protocol": "knn", "at": "end",
                          "dataset": {"name": "imagefolder", "root": "/etc"}}),
                   422, "evaluate.0.dataset.root", "data roots")  # fmt: skip
    assert_problem(asked({"protocol": "finetune", "at": "end",
                          "dataset": {"name": "imagefolder", "root": str(tmp_path / "data")},
                          "config": {"label_subset": "/etc/passwd"}}),
                   422, "label_subset", "data roots")  # fmt: skip
    assert_problem(asked({"protocol": "finetune", "at": "end",
                          "config": {"label_subset": str(tmp_path / "data" / "1percent.txt")}}),
                   422, "it applies to imagenet and imagefolder")  # fmt: skip
    assert_problem(asked(*[ASKED[0]] * 17), 422, "evaluate")
    packed = {**DIGITS, "dataset": {"name": "packed", "root": str(tmp_path / "data" / "shards"),
                                    "loader": "ray_data"}}  # fmt: skip
    assert_problem(submit(api, config=packed, evaluate=[ASKED[1]]), 422,
                   "evaluate.0.dataset", "not packed shards")  # fmt: skip
    refused = assert_problem(asked({"protocol": "finetune", "at": "end",
                                    "dataset": {"name": "imagefolder", "root": str(tmp_path / "data")},
                                    "config": {"label_subset": "/etc/passwd"}}),
                             422, "evaluate.0.label_subset")  # fmt: skip
    assert "body.body" not in refused["detail"]
    ddpm = api.post("/v1/jobs", json={"kind": "ddpm", "config": {"data": {"name": "digits"}},
                                      "evaluate": [ASKED[1]]})  # fmt: skip
    assert_problem(ddpm, 422, "evaluate", "no encoder")
    assert_problem(submit(api, headers={"Idempotency-Key": "scheduled:job-x:0:step-00000002"}),
                   422, "Idempotency-Key")  # fmt: skip
    assert submit(api, config=DIGITS).json()["evaluate"] is None


def test_one_jobs_broken_schedule_does_not_hold_up_the_others(api, monkeypatch):
    store = api.app.state.service.store
    broken, stale, sound = (submit(api, evaluate=ASKED[:1]).json()["id"] for _ in range(3))
    for job_id in (broken, stale, sound):
        report_checkpoint(api, job_id, 2)
    with store.engine.begin() as connection:  # written by an older release: no longer valid
        connection.execute(sa.update(Job).where(Job.id == stale).values(
            evaluate=[{"protocol": "knn", "every": "checkpoint", "config": {"k": -1}}]))  # fmt: skip
    listed = store.list_checkpoints

    def failing(job_id):
        if job_id == broken:
            raise OSError("the database hiccupped")
        return listed(job_id)

    monkeypatch.setattr(store, "list_checkpoints", failing)
    schedule_evaluations(store, 3)
    assert [len(evaluations(api, j)) for j in (broken, stale, sound)] == [0, 0, 1]
    monkeypatch.setattr(store, "list_checkpoints", listed)
    schedule_evaluations(store, 3)  # the next pass
    assert [len(evaluations(api, j)) for j in (broken, stale, sound)] == [1, 0, 1]


def test_the_cli_submits_what_a_job_asks_for(api, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "Client", lambda: Client(http=api))
    config = tmp_path / "digits.yaml"
    config.write_text("dataset: {name: digits}\nbackbone: {name: small_cnn}\nmax_steps: 3\n")
    out = run(capsys, "submit", "simclr", "--config", str(config),
              "--evaluate", "knn:checkpoint", "--evaluate", "finetune:end")  # fmt: skip
    asked = api.get(f"/v1/jobs/{out.split()[1]}").json()["evaluate"]
    assert [(e["protocol"], e["every"], e["at"]) for e in asked] == [
        ("knn", "checkpoint", None), ("finetune", None, "end")]  # fmt: skip
    with pytest.raises(SystemExit):
        cli.main(["submit", "simclr", "--config", str(config), "--evaluate", "knn"])
    assert "expected PROTOCOL:checkpoint or PROTOCOL:end" in capsys.readouterr().err
    with pytest.raises(SystemExit, match=r"evaluate\.0\.protocol"):
        cli.main(["submit", "simclr", "--config", str(config), "--evaluate", "byol:end"])


def test_a_job_gets_at_most_the_cap_of_scheduled_evaluations(api, monkeypatch):
    monkeypatch.setattr(scheduled, "MAX_SCHEDULED_PER_JOB", 2)
    store = api.app.state.service.store
    job_id = submit(api, evaluate=ASKED[:1]).json()["id"]
    for step in (2, 4, 6):
        report_checkpoint(api, job_id, step, keep=3)
    schedule_evaluations(store, 3)
    schedule_evaluations(store, 3)
    assert sorted(e["step"] for e in evaluations(api, job_id)) == [2, 4]
