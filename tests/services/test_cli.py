"""The ``simclr`` CLI against the API (no-op dispatcher): every command, readable output, and
errors as one line, never a traceback."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from services import cli
from services.app import create_app
from services.client import Client
from services.dispatcher import NoopDispatcher
from services.settings import Settings
from tests.services.test_api import worker_auth


@pytest.fixture
def api(tmp_path, monkeypatch):
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'db'}", storage_path=str(tmp_path / "runs"),
                        data_roots=[str(tmp_path / "data")], internal_token="t")  # fmt: skip
    with TestClient(create_app(settings, NoopDispatcher(), reconcile=False)) as client:
        monkeypatch.setattr(cli, "Client", lambda: Client(http=client))
        yield client


def run(capsys, *argv: str) -> str:
    try:
        cli.main(list(argv))
    except SystemExit as exit:
        if exit.code not in (0, None):
            raise
    return capsys.readouterr().out


def test_submit_list_get_cancel_retry_logs_and_eval(api, tmp_path, capsys):
    config = tmp_path / "digits.yaml"
    config.write_text("dataset: {name: digits}\nbackbone: {name: small_cnn}\nmax_steps: 3\n")
    out = run(
        capsys, "submit", "simclr", "--config", str(config), "--workers", "2", "--name", "smoke"
    )
    job_id = out.split()[1]
    assert "status     queued" in out and "2 x 1.0 CPU" in out
    listing = run(capsys, "jobs")
    assert listing.splitlines()[0].split() == [
        "ID",
        "KIND",
        "NAME",
        "STATUS",
        "WORKERS",
        "ATTEMPT",
        "CREATED",
    ]
    assert job_id in listing and "smoke" in listing
    shown = run(capsys, "get", job_id)
    assert '"max_steps": 3' in shown and "precision  not reported yet (config: auto)" in shown
    store = api.app.state.service.store
    store.add_metrics(job_id, [{"step": 1, "epoch": 0, "name": "bf16", "value": 0.0}])
    assert "precision  fp32 (config: auto)" in run(capsys, "get", job_id)
    store.add_metrics(job_id, [{"step": 2, "epoch": 0, "name": "bf16", "value": 0.0},
                               {"step": 2, "epoch": 0, "name": "bf16_speedup", "value": 0.62}])  # fmt: skip
    assert ("precision  fp32 (config: auto; rank 0's CPU ran bf16 0.62x as fast as fp32)"
            in run(capsys, "get", job_id))  # fmt: skip
    store.add_metrics(job_id, [{"step": 3, "epoch": 0, "name": "bf16", "value": 1.0}])  # a GPU
    assert "precision  bf16 (config: auto)\n" in run(capsys, "get", job_id)
    # a worker's NaN or Infinity comes back as a string (services/schemas.py): left out, no crash
    store.add_metrics(job_id, [{"step": 4, "epoch": 0, "name": "bf16", "value": float("nan")},
                               {"step": 4, "epoch": 0, "name": "bf16_speedup",
                                "value": float("inf")}])  # fmt: skip
    assert "precision  bf16 (config: auto)\n" in run(capsys, "get", job_id)  # step 3's
    assert "cancel" in run(capsys, "cancel", job_id)
    assert api.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"
    assert "attempt    2/3" in run(capsys, "retry", job_id)
    store.update_attempt(f"{job_id}-a2", "running", log="hello from the driver\n")
    assert run(capsys, "logs", job_id) == "hello from the driver\n"
    path = f"{api.app.state.service.settings.run_dir(job_id)}/step-00000003"
    reported = api.post(f"/internal/v1/jobs/{job_id}/checkpoints", headers=worker_auth(job_id, "t"),
                        json={"name": "step-00000003", "step": 3, "epoch": 0, "path": path})  # fmt: skip
    assert reported.status_code == 201
    out = run(capsys, "eval", job_id, "--epochs", "10")
    assert f"fast linear probe of {job_id} at step-00000003 on digits" in out
    out = run(capsys, "eval", job_id, "--protocol", "knn", "--k", "20")
    assert f"kNN classifier of {job_id} at step-00000003 on digits" in out
    knn = out.split(":")[0].removeprefix("evaluation ")
    assert api.get(f"/v1/evaluations/{knn}").json()["config"] == {"k": 20, "temperature": 0.1}


def test_follow_shows_the_steps_out_of_the_total_the_workers_report(api, tmp_path, capsys):
    """An epochs-long run has no ``max_steps``: the bar's total (and so its ETA) comes from the
    ``total_steps`` its workers report."""
    config = tmp_path / "digits.yaml"
    config.write_text("dataset: {name: digits}\nbackbone: {name: small_cnn}\nepochs: 2\n")
    job_id = run(capsys, "submit", "simclr", "--config", str(config)).split()[1]
    store = api.app.state.service.store
    store.add_metrics(job_id, [{"step": 4, "epoch": 0, "name": name, "value": value}
                               for name, value in (("loss", 5.5), ("total_steps", 12.0))])  # fmt: skip
    api.post(f"/v1/jobs/{job_id}/cancel")
    job = cli.follow(cli.Client(), job_id, poll_s=0)
    assert job["status"] == "cancelled"
    assert "4/12" in capsys.readouterr().err
    config = {"dataset": {"name": "digits"}, "train_steps": 30}
    assert cli.total_steps({"config": config}) == 30
    assert cli.total_steps({"config": {**config, "max_steps": 5}, "progress": {}}) == 5
    assert cli.total_steps({"config": {"epochs": 2}, "progress": None}) is None


def test_errors_are_one_line(api, tmp_path, capsys):
    with pytest.raises(SystemExit, match="error: no job 'job-nope'"):
        cli.main(["get", "job-nope"])
    with pytest.raises(SystemExit, match="config file not found"):
        cli.main(["submit", "simclr", "--config", str(tmp_path / "missing.yaml")])
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: {name: mnist}\n")
    with pytest.raises(SystemExit, match=r"config\.dataset\.name"):
        cli.main(["submit", "simclr", "--config", str(bad)])
