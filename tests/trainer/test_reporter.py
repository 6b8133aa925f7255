"""The worker's reporter to the service (``trainer.reporter``), without Ray or a service: an
``httpx.MockTransport`` plays the service. Non-finite numbers travel as strings, no report blocks the
ones behind it, nothing raises into training, ``flush`` delivers what an outage held back within its
deadline, and a full buffer gives up old metrics only."""

from __future__ import annotations

import json
import logging
import math
import time

import httpx
import pytest

from trainer import reporter as reporting
from trainer.reporter import Reporter, flush_deadline_s, json_safe

JOB = "job-1"
PREFIX = f"/internal/v1/jobs/{JOB}/"


def strict_json(content: bytes):
    """The body as strict JSON: NaN / Infinity literals are an error."""

    def refuse(literal):
        raise ValueError(f"non-standard JSON literal {literal}")

    return json.loads(content, parse_constant=refuse)


class Service:
    """A fake service: ``answer(request, call)`` gives a response or raises; every request that
    reached it (answered or not) is in ``calls``, those answered 2xx in ``received``."""

    def __init__(self, answer=None):
        self.answer = answer or (lambda request, call: httpx.Response(204))
        self.calls: list[httpx.Request] = []
        self.received: list[tuple[str, str, object]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(request)
        response = self.answer(request, len(self.calls))
        if response.status_code < 300:
            what = request.url.path.removeprefix(PREFIX)
            if request.headers.get("content-type") == "application/json":
                body = strict_json(request.content)
            else:
                body = request.content
            self.received.append((request.method, what, body))
        return response

    def reporter(self, **kwargs) -> Reporter:
        return Reporter(
            JOB, "http://service.test/", "secret", transport=httpx.MockTransport(self), **kwargs
        )


def row(step: int, **values) -> dict:
    return {"step": step, "epoch": 0, "time": 1.0, "loss": 1.0 / step, **values}


def unreachable(request, call):
    raise httpx.ConnectError("connection refused", request=request)


def test_requests_keep_their_urls_headers_and_bodies():
    service = Service()
    reporter = service.reporter()
    reporter.metrics(row(1, lr=0.5))
    reporter.checkpoint("step-00000001", 1, 0, "/s/job-1/step-00000001", {"loss": 1.0}, 2)
    reporter.artifact("views.png", b"\x89PNG", "image/png")
    reporter.result({"top1": 50.0, "mode": "fast"})
    assert [(r.method, r.url.path) for r in service.calls] == [
        ("POST", PREFIX + "metrics"), ("POST", PREFIX + "checkpoints"),
        ("PUT", PREFIX + "artifacts/views.png"), ("POST", PREFIX + "result"),
    ]  # fmt: skip
    assert all(r.headers["authorization"] == "Bearer secret" for r in service.calls)
    assert service.calls[2].headers["content-type"] == "image/png"
    assert service.received[0][2] == {"points": [
        {"step": 1, "epoch": 0, "name": "loss", "value": 1.0},
        {"step": 1, "epoch": 0, "name": "lr", "value": 0.5},
    ]}  # fmt: skip
    assert service.received[1][2] == {"name": "step-00000001", "step": 1, "epoch": 0,
                                      "path": "/s/job-1/step-00000001", "metrics": {"loss": 1.0},
                                      "keep": 2}  # fmt: skip
    assert service.received[2][2] == b"\x89PNG"
    assert reporter.pending == 0


def test_non_finite_numbers_go_as_strings_and_later_reports_still_go():
    service = Service()
    reporter = service.reporter()
    nan, inf = float("nan"), float("inf")
    reporter.metrics(row(1, loss=nan, lr=inf, grad=-inf))
    reporter.checkpoint("step-00000001", 1, 0, "/p", {"loss": nan, "nested": [inf, {"x": -inf}]}, 2)
    reporter.result({"top1": nan, "top5": 90.0, "seconds": inf})
    reporter.metrics(row(2))
    assert [what for _, what, _ in service.received] == [
        "metrics", "checkpoints", "result", "metrics"
    ]  # fmt: skip
    values = {p["name"]: p["value"] for p in service.received[0][2]["points"]}
    assert values == {"loss": "NaN", "lr": "Infinity", "grad": "-Infinity"}
    assert service.received[1][2]["metrics"] == {
        "loss": "NaN",
        "nested": ["Infinity", {"x": "-Infinity"}],
    }
    assert service.received[2][2] == {"top1": "NaN", "top5": 90.0, "seconds": "Infinity"}
    assert service.received[3][2]["points"] == [
        {"step": 2, "epoch": 0, "name": "loss", "value": 0.5}
    ]
    assert reporter.pending == 0 and not reporter.dropped


def test_json_safe_converts_numpy_scalars_and_leaves_the_rest():
    np = pytest.importorskip("numpy")
    assert json_safe({"a": np.float32("nan"), "b": np.int64(3), "c": (1, True, None, "x")}) == {
        "a": "NaN", "b": 3, "c": [1, True, None, "x"]
    }  # fmt: skip
    assert type(json_safe(np.float64(0.5))) is float and not math.isnan(json_safe(0.5))


def test_reports_held_back_by_an_outage_are_all_delivered_by_flush():
    failures = 3
    service = Service(lambda request, call: unreachable(request, call) if call <= failures
                      else httpx.Response(204))  # fmt: skip
    reporter = service.reporter()
    for step in range(1, 6):
        reporter.metrics(row(step))  # never raises, whatever the service does
    reporter.checkpoint("step-00000005", 5, 1, "/p", {"loss": 0.2}, 2)
    reporter.artifact("curves.png", b"png", "image/png")
    assert reporter.pending == 7
    assert reporter.flush(deadline_s=10) == 0
    assert reporter.pending == 0 and not reporter.dropped
    sent = [body["points"][0]["step"] if what == "metrics" else what
            for _, what, body in service.received]  # fmt: skip
    assert sent == [1, 2, 3, 4, 5, "checkpoints", "artifacts/curves.png"]  # in order, once each


@pytest.mark.parametrize("status", [500, 502, 503, 408, 429])
def test_transient_answers_are_retried(status):
    service = Service(lambda request, call: httpx.Response(status if call == 1 else 204))
    reporter = service.reporter()
    reporter.checkpoint("step-00000001", 1, 0, "/p", {}, 2)
    assert reporter.pending == 1
    assert reporter.flush(deadline_s=10) == 0
    assert [what for _, what, _ in service.received] == ["checkpoints"]


def test_flush_gives_up_at_its_deadline_and_says_what_is_left(caplog):
    service = Service(unreachable)
    reporter = service.reporter()
    for step in range(1, 4):
        reporter.metrics(row(step))
    reporter.checkpoint("step-00000003", 3, 0, "/p", {}, 2)
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="trainer.reporter"):
        left = reporter.flush(deadline_s=0.5)
    elapsed = time.monotonic() - start
    assert left == 4 and reporter.pending == 4
    assert 0.4 <= elapsed < 0.8, elapsed
    assert len(service.calls) >= 2  # it did retry
    assert "4 report(s) to the control plane left unsent after 0.5 s (1 checkpoint, 3 metrics)" in (
        caplog.text
    )


def test_no_request_outlives_the_flush_deadline():
    """A service that hangs until the client's timeout: each request's timeout is capped by what
    is left of the deadline (the reporter's own timeout is 10 s)."""
    timeouts = []

    def hang(request, call):
        if call == 1:  # the report's own attempt: the service is down
            unreachable(request, call)
        timeout = request.extensions["timeout"]["read"]
        timeouts.append(timeout)
        time.sleep(min(timeout, 5))
        raise httpx.ReadTimeout("timed out", request=request)

    service = Service(hang)
    reporter = service.reporter()
    reporter.metrics(row(1))
    start = time.monotonic()
    assert reporter.flush(deadline_s=0.4) == 1
    assert time.monotonic() - start < 0.7
    assert timeouts and all(t <= 0.4 for t in timeouts)


def test_the_default_deadline_comes_from_the_environment(monkeypatch, caplog):
    monkeypatch.setenv("SIMCLR_REPORT_FLUSH_S", "0.3")
    assert flush_deadline_s() == 0.3
    reporter = Service(unreachable).reporter()
    reporter.metrics(row(1))
    start = time.monotonic()
    assert reporter.flush() == 1
    assert time.monotonic() - start < 0.6
    monkeypatch.setenv("SIMCLR_REPORT_FLUSH_S", "soon")
    assert flush_deadline_s() == 60.0
    assert "SIMCLR_REPORT_FLUSH_S='soon' is not a number of seconds" in caplog.text
    monkeypatch.delenv("SIMCLR_REPORT_FLUSH_S")
    assert flush_deadline_s() == 60.0


def test_a_refused_or_unsendable_report_is_dropped_and_does_not_block_the_next(caplog):
    def answer(request, call):
        if request.url.path.endswith("/metrics") and b'"bad-name"' in request.content:
            return httpx.Response(422, json={"detail": "bad metric name"})
        return httpx.Response(204)

    service = Service(answer)
    reporter = service.reporter()
    with caplog.at_level(logging.ERROR, logger="trainer.reporter"):
        reporter.metrics({"step": 1, "epoch": 0, "bad-name": 1.0})
        reporter.metrics({"step": 2, "epoch": 0, "bad-name": 1.0})
        reporter.metrics(row(3, weird=object()))  # the JSON encoder refuses it
        reporter.metrics({"epoch": 0, "loss": 1.0})  # no step: the body cannot even be made
        reporter.checkpoint("step-00000004", 4, 1, "/p", {"loss": 0.1}, 2)
        reporter.metrics(row(5))
    assert [what for _, what, _ in service.received] == ["checkpoints", "metrics"]
    assert reporter.pending == 0
    assert reporter.dropped == {"metrics": 4}
    refusals = [r for r in caplog.records if "refused a metrics report" in r.getMessage()]
    assert len(refusals) == 1 and "422" in refusals[0].getMessage()  # once per kind of refusal
    assert "could not send a metrics report (TypeError" in caplog.text
    assert "could not make a metrics report (KeyError" in caplog.text
    assert "secret" not in caplog.text


def test_an_unexpected_error_of_the_transport_never_reaches_training():
    def broken(request, call):
        raise RuntimeError("a bug in a transport")

    reporter = Service(broken).reporter()
    reporter.metrics(row(1))
    reporter.checkpoint("step-00000001", 1, 0, "/p", {}, 2)
    assert reporter.pending == 0 and reporter.dropped == {"metrics": 1, "checkpoint": 1}
    assert reporter.flush(deadline_s=0.1) == 0


def test_a_full_buffer_drops_the_oldest_metrics_and_keeps_checkpoints_and_results(
    monkeypatch, caplog
):
    monkeypatch.setattr(reporting, "MAX_PENDING", 5)
    up = False
    service = Service(
        lambda request, call: httpx.Response(204) if up else unreachable(request, call)
    )
    reporter = service.reporter()
    with caplog.at_level(logging.WARNING, logger="trainer.reporter"):
        reporter.checkpoint("step-00000001", 1, 0, "/p", {}, 2)
        for step in range(1, 5):
            reporter.metrics(row(step))
        assert reporter.pending == 5  # full
        reporter.metrics(row(5))  # makes room by dropping metrics 1
        reporter.result({"top1": 1.0})  # drops metrics 2
        reporter.checkpoint("step-00000002", 2, 0, "/p", {}, 2)  # drops metrics 3
        reporter.metrics(row(6))  # drops metrics 4
        assert reporter.pending == 5 and reporter.dropped == {"metrics": 4}
        kinds = [(r.kind, r.request["json"].get("step")) for r in reporter._pending]
        assert kinds == [("checkpoint", 1), ("metrics", None), ("result", None),
                         ("checkpoint", 2), ("metrics", None)]  # fmt: skip
        for step in range(3, 9):  # drops metrics 5 and 6, then keeps every checkpoint
            reporter.checkpoint(f"step-{step:08d}", step, 0, "/p", {}, 2)
        assert reporter.pending == 9 and reporter.dropped == {"metrics": 6}
        up = True
        assert reporter.flush(deadline_s=10) == 0
    sent = [body.get("step", what) for _, what, body in service.received]
    assert sent == [1, "result", 2, 3, 4, 5, 6, 7, 8]  # every checkpoint, in order, and the result
    assert "dropping the oldest metric reports" in caplog.text
    assert "6 metric report(s) were dropped to make room" in caplog.text


def test_the_oldest_metrics_go_first():
    reporter = Service(unreachable).reporter()
    for step in range(1, reporting.MAX_PENDING + 3):
        reporter.metrics(row(step))
    assert reporter.pending == reporting.MAX_PENDING
    steps = [r.request["json"]["points"][0]["step"] for r in reporter._pending]
    assert steps == list(range(3, reporting.MAX_PENDING + 3))
    assert reporter.dropped == {"metrics": 2}


def test_a_newer_version_of_an_artifact_replaces_a_pending_one():
    up = False
    service = Service(
        lambda request, call: httpx.Response(204) if up else unreachable(request, call)
    )
    reporter = service.reporter()
    reporter.artifact("samples.png", b"old", "image/png")
    reporter.artifact("curves.png", b"curves", "image/png")
    reporter.artifact("samples.png", b"new", "image/png")
    up = True
    assert reporter.flush(deadline_s=10) == 0
    assert [(what, body) for _, what, body in service.received] == [
        ("artifacts/curves.png", b"curves"), ("artifacts/samples.png", b"new"),
    ]  # fmt: skip


def test_close_flushes_then_later_reports_are_dropped_quietly():
    service = Service()
    reporter = service.reporter()
    reporter.result({"top1": 1.0})
    assert reporter.close(deadline_s=1) == 0
    reporter.metrics(row(1))  # after close: dropped, never raised
    assert [what for _, what, _ in service.received] == ["result"]


def test_the_ray_sessions_report_and_close_never_raise_from_the_reporter(monkeypatch, tmp_path):
    """``RaySession.report`` with a reporter whose service is down or refuses everything: the
    training loop's call returns; ``close`` flushes within its deadline."""
    ray_session = pytest.importorskip("trainer.ray_session")  # imports Ray, starts nothing
    reported = []
    monkeypatch.setattr(
        ray_session.ray.train, "report", lambda metrics, **kw: reported.append(metrics)
    )
    monkeypatch.setenv("SIMCLR_REPORT_FLUSH_S", "0.2")
    session = object.__new__(ray_session.RaySession)
    session.rank, session.world_size, session.job_id = 0, 1, JOB
    session.run_dir, session.keep_checkpoints = str(tmp_path), 2
    session.metrics_file, session._gauges = tmp_path / "metrics.jsonl", {}
    # its TensorBoard log too: "png" is no picture, which is logged, never raised
    session.tensorboard = ray_session.TensorBoardLog(tmp_path)
    for answer in (unreachable, lambda request, call: httpx.Response(400)):
        session.reporter = Service(answer).reporter()
        session.report(row(1, loss=float("nan")))
        session.report(row(2, loss=float("inf")))
        session.save_artifact("views.png", b"png", "image/png")
        start = time.monotonic()
        session.close()
        assert time.monotonic() - start < 0.5
    assert len(reported) == 4
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4
