"""What ``deploy/smoke.sh`` checks once the compose stack is up, through the API only (and
Prometheus's query API): the standard library alone, so it runs on any host with Python 3.

1. SimCLR on the bundled digits on 2 Ray Train workers, each asking for as many CPUs as a worker
   container advertises (``ray start`` detects the host's; the head advertises none), so one lands
   in each container; killed in the middle: one worker container is killed once the job lists a
   second checkpoint (so every rank has reported the first, which Ray Train has then committed),
   started again, and the job must resume from a committed checkpoint (a rank says so in the
   job's log) and succeed with every step's loss once and its last step checkpointed.
2. A linear evaluation of its latest checkpoint succeeds.
3. Every query of every panel of ``deploy/grafana/dashboards/*.json`` returns at least one series
   from the live Prometheus over the time the checks ran (a range query, as the panel draws it).

Prints one line per check and a summary; exits 1 when a check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENDED = ("succeeded", "failed", "cancelled")
DIGITS = {
    "dataset": {"name": "digits", "image_size": 16}, "backbone": {"name": "small_cnn", "width": 32},
    "head": {"hidden_dim": 256, "out_dim": 64}, "augment": {"strength": 0.5, "blur": False},
    "optimizer": {"name": "lars", "base_lr": 0.075, "lr_scaling": "sqrt", "warmup_epochs": 2},
    "batch_size": 256, "epochs": 12, "temperature": 0.5, "log_every_steps": 1,
    "keep_checkpoints": 2,
}  # fmt: skip


class Api:
    def __init__(self, url: str, token: str):
        self.url, self.token = url.rstrip("/"), token

    def call(self, method: str, path: str, body: dict | None = None) -> dict | list:
        request = urllib.request.Request(
            self.url + path, method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:  # the API's problem+json says what was wrong
            raise SystemExit(
                f"{method} {path}: {error.code} {error.read().decode()[:500]}"
            ) from None

    def wait(self, job_id: str, done, timeout: float, what: str, ended_is_failure: bool = False):
        """The job once ``done(job)``; a job that ends first is a failure when
        ``ended_is_failure``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.call("GET", f"/v1/jobs/{job_id}")
            if done(job):
                return job
            if ended_is_failure and job["status"] in ENDED:
                raise SystemExit(f"{what}: the job ended {job['status']}: {job.get('error')}")
            time.sleep(3)
        raise SystemExit(f"{what}: not within {timeout:.0f} s")


def prometheus_series(url: str, query: str, since: float) -> int:
    """The series ``query`` returns over the time since ``since``, as a Grafana panel over that
    range would draw them (a job's gauges go stale once its workers exit)."""
    now = time.time()
    params = {"query": query, "start": since, "end": now, "step": max((now - since) / 200, 5)}
    try:
        answer = json.loads(urllib.request.urlopen(
            f"{url}/api/v1/query_range?{urllib.parse.urlencode(params)}", timeout=30
        ).read())  # fmt: skip
    except (urllib.error.URLError, OSError, ValueError) as error:  # counted as a failed check
        print(f"Prometheus could not answer {query!r}: {error}", flush=True)
        return 0
    return len(answer["data"]["result"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--api", default="http://127.0.0.1:8000")
    parser.add_argument(
        "--token-file",
        type=Path,
        help="the API token (default: $SIMCLR_API_TOKEN); never on the command line",
    )
    parser.add_argument("--cpus-per-worker", type=int, default=os.cpu_count(),
                        help="CPUs a worker container advertises (default: this host's)")  # fmt: skip
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
    parser.add_argument("--worker", required=True, help="the worker container to kill mid-run")
    parser.add_argument("--engine", default="podman")
    args = parser.parse_args()
    token = (args.token_file.read_text().strip() if args.token_file
             else os.environ.get("SIMCLR_API_TOKEN", ""))  # fmt: skip
    if not token:
        parser.error("give --token-file or set SIMCLR_API_TOKEN")
    api, results = Api(args.api, token), []

    def check(name: str, ok: bool, detail: str) -> None:
        results.append(ok)
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}", flush=True)

    began, started = time.time(), time.monotonic()
    job = api.call("POST", "/v1/jobs", {
        "kind": "simclr", "name": "smoke: digits on 2 containers", "config": DIGITS,
        "resources": {"num_workers": 2, "cpus_per_worker": args.cpus_per_worker},
    })  # fmt: skip
    job_path = f"/v1/jobs/{job['id']}"
    print(f"job {job['id']} submitted ({args.cpus_per_worker} CPUs a worker)", flush=True)
    # Ray Train commits a checkpoint once every rank has reported it; the service lists it when
    # rank 0 has. A second checkpoint listed means every rank got past the first.
    api.wait(job["id"], lambda j: len(api.call("GET", f"{job_path}/checkpoints")) >= 2, 900,
             "the job's second checkpoint", ended_is_failure=True)  # fmt: skip
    listed = sorted(c["step"] for c in api.call("GET", f"{job_path}/checkpoints"))
    committed, killed_at = listed[-2], listed[-1]
    subprocess.run([args.engine, "kill", args.worker], check=True, capture_output=True)
    print(f"killed {args.worker} after checkpoint step {killed_at}", flush=True)
    time.sleep(5)
    subprocess.run([args.engine, "start", args.worker], check=True, capture_output=True)
    done = api.wait(job["id"], lambda j: j["status"] in ENDED, 1800, "the job to end")
    seconds = time.monotonic() - started
    points = api.call("GET", f"{job_path}/metrics?name=loss")
    steps = [point["step"] for point in points]
    total = max(steps, default=0)
    checkpoints = api.call("GET", f"{job_path}/checkpoints")
    log = api.call("GET", f"{job_path}/logs")["text"]
    resumed = sorted(set(re.findall(r"rank \d+ resumed at step (\d+)", log)), key=int)
    check("SimCLR on 2 worker containers, one killed mid-run",
          done["status"] == "succeeded" and sorted(steps) == list(range(1, total + 1))
          and total > killed_at and bool(resumed) and int(resumed[0]) >= committed
          and max((c["step"] for c in checkpoints if c["available"]), default=0) == total,
          f"{done['status']} in {seconds:.0f} s, {len(done['attempts'])} attempt(s), loss at "
          f"steps 1..{total} ({len(points)} points), {len(checkpoints)} checkpoints in the record "
          f"({sum(c['available'] for c in checkpoints)} kept on the volume, the "
          f"last at step {max((c['step'] for c in checkpoints), default=0)}), killed after step "
          f"{killed_at}, resumed at step(s) {', '.join(resumed) or 'none'}"
          + (f"; error: {done['error'][:300]}" if done.get("error") else ""))  # fmt: skip

    started = time.monotonic()
    evaluation = api.call("POST", "/v1/evaluations", {"job_id": job["id"], "checkpoint": "latest"})
    evaluated = api.wait(evaluation["id"], lambda j: j["status"] in ("succeeded", "failed"), 900,
                         "the linear evaluation")  # fmt: skip
    result = evaluated.get("result") or {}
    check("linear evaluation of the latest checkpoint", evaluated["status"] == "succeeded",
          f"{evaluated['status']} in {time.monotonic() - started:.0f} s, top-1 "
          f"{result.get('top1', float('nan')):.2f} % on {result.get('test_images')} images")  # fmt: skip

    time.sleep(25)  # two scrape intervals after the last report
    for dashboard in sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json")):
        for panel in json.loads(dashboard.read_text())["panels"]:
            for target in panel.get("targets", []):
                count = prometheus_series(args.prometheus, target["expr"], began)
                check(f"{dashboard.name}: {panel['title']!r}", count > 0,
                      f"{count} series for {target['expr']}")  # fmt: skip
    print(f"\n{sum(results)} of {len(results)} checks passed")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
