"""The `make demo` run, through the service as a user would run it.

Starts ``simclr serve`` (the embedded default: SQLite under ``.simclr/`` and a local Ray head with
its dashboard), submits SimCLR on the bundled digits (``configs/digits-demo.yaml``) on 2 Ray Train
workers, follows it with a progress bar, prints the job, its loss, checkpoints and artifacts, scores
the latest checkpoint with a linear probe (``POST /v1/evaluations``: its own Ray job), prints the
result and the dashboard's address, then shuts the service (and its Ray head) down.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from services.cli import describe, describe_evaluation, follow, read_config, table
from services.client import Client
from services.ray_head import free_port, port_free

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "configs" / "digits-demo.yaml"
STATE_DIR = Path(".simclr")


def start_service(port: int, dashboard_port: int, log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "SIMCLR_PORT": str(port), "SIMCLR_DASHBOARD_PORT": str(dashboard_port)}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "services.cli", "serve"], env=env, stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip


def stop_service(service: subprocess.Popen) -> None:
    """Ctrl-C, as a user stops ``simclr serve`` (it stops its Ray head), then a kill after 60 s."""
    service.send_signal(signal.SIGINT)
    try:
        service.wait(60)
    except subprocess.TimeoutExpired:
        service.kill()


def wait_ready(
    client: Client, service: subprocess.Popen, log_path: Path, timeout: float = 180
) -> None:
    deadline = time.monotonic() + timeout
    while not client.ready():
        if service.poll() is not None or time.monotonic() > deadline:
            tail = log_path.read_text()[-3000:] if log_path.exists() else ""
            raise SystemExit(f"the service did not become ready; its log ({log_path}):\n{tail}")
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    config = read_config(args.config)

    port = 8000 if port_free(8000) else free_port()
    dashboard_port = 8265 if port_free(8265) else free_port()
    log_path = STATE_DIR / "service.log"
    print(f"starting the service on http://127.0.0.1:{port} (log: {log_path}) ...", flush=True)
    service = start_service(port, dashboard_port, log_path)
    client = Client(f"http://127.0.0.1:{port}")
    try:
        wait_ready(client, service, log_path)
        print(f"ready; the console http://127.0.0.1:{port}/ui/ (jobs, curves, checkpoints), "
              f"the Ray dashboard http://127.0.0.1:{dashboard_port}\n", flush=True)  # fmt: skip
        job = client.submit("simclr", config, {"num_workers": args.workers}, "digits demo")
        print(describe(job), "\n", flush=True)
        job = follow(client, job["id"])
        print()
        print(describe(job))
        if job["status"] != "succeeded":
            print(client.logs(job["id"])["text"][-3000:])
            raise SystemExit(f"the job {job['status']}")
        losses = [m for m in client.metrics(job["id"]) if m["name"] == "loss"]
        print(f"loss       {losses[0]['value']:.3f} at step {losses[0]['step']} -> "
              f"{losses[-1]['value']:.3f} at step {losses[-1]['step']}\n")  # fmt: skip
        checkpoints = client.checkpoints(job["id"])
        kept = [c for c in checkpoints if c["available"]]
        print(f"checkpoints: {len(checkpoints)} reported, the newest {len(kept)} kept by Ray Train")
        print(table(kept, ["name", "step", "epoch", "path"]))
        print()
        artifacts = client.artifacts(job["id"])
        print(table([{**a, "url": f"http://127.0.0.1:{port}{a['url']}"} for a in artifacts],
                    ["name", "content_type", "size", "url"]))  # fmt: skip
        print(
            "\nlinear evaluation of the latest checkpoint (its own Ray job, fast mode) ...",
            flush=True,
        )
        evaluation = client.evaluate(job["id"], "latest", resources={"num_workers": args.workers})
        client.wait(evaluation["id"])
        evaluation = client.evaluation(evaluation["id"])
        print(describe_evaluation(evaluation))
        if evaluation["status"] != "succeeded":
            print(client.logs(evaluation["id"])["text"][-3000:])
            raise SystemExit(f"the evaluation {evaluation['status']}")
        print(f"\nRay dashboard (jobs and Train runs): http://127.0.0.1:{dashboard_port}"
              f"  (job {job['attempts'][-1]['submission_id']})")  # fmt: skip
        print(
            f"the record stays in {STATE_DIR / 'simclr.db'}: `simclr serve`, then `simclr get {job['id']}`"
        )
    finally:
        print("\nshutting the service and its Ray head down ...", flush=True)
        stop_service(service)


if __name__ == "__main__":
    main()
