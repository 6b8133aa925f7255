"""Latency and throughput of the job API, Ray not included, beside Ray's own job-submission API.

    python -m bench.service_latency [--seconds 8] [--postgres-url URL]

The service runs on loopback as ``simclr serve`` runs it (its default number of API processes;
``--workers N`` to choose), with the dispatcher replaced by the no-op one and the reconciler
off, so what is measured is the API and its database. For SQLite (a file) and PostgreSQL (a fresh schema), at 1, 16 and 64 concurrent
clients (closed loop, ``wrk``, a C load generator: ``apt-get install wrk``): p50/p99 latency and
requests/s of ``GET /v1/jobs/{id}`` and ``GET /healthz`` (the HTTP stack alone: the floor), then
of ``POST /v1/jobs``. Then 2,000 concurrent submits with idempotency keys (1,000 keys, each sent
twice, in random order, 64 at a time, from httpx) must create each job exactly once. Beside them,
Ray's ``GET /api/jobs/{id}`` on a local head at the same concurrency (``wrk``), and 32 submissions
to ``POST /api/jobs/`` (entrypoint ``true``) from 1 and from 16 clients (httpx).

``--list-jobs N --log-mb M`` then fills each store with N jobs whose attempts hold an M MB log
(written straight into the tables, as the reconciler would have appended it) and measures
``GET /v1/jobs?limit=50``: a list must not read the logs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx

from services.ray_head import free_port, start_head
from trainer.contracts.ray_auth import ray_auth_headers

CONFIG = {"dataset": {"name": "digits"}, "backbone": {"name": "small_cnn"}, "max_steps": 10}
CONCURRENCY = (1, 16, 64)


def serve(database_url: str, port: int, workers: int | None, threads: int | None) -> None:
    """The service as ``simclr serve`` runs it, with the no-op dispatcher and no reconciler."""
    from services.server import serve
    from services.settings import Settings

    options = {"workers": workers, "request_threads": threads}
    options = {key: value for key, value in options.items() if value}
    with tempfile.TemporaryDirectory() as state:
        settings = Settings(database_url=database_url, port=port, storage_path=f"{state}/runs",
                            **options)  # fmt: skip
        serve(settings, app="bench.service_latency:app", local_head=False)


def app():
    """uvicorn's factory in each of the service's processes."""
    from services import server
    from services.dispatcher import NoopDispatcher

    return server.app(NoopDispatcher(), reconcile=False)


async def load(
    base_url: str,
    requests: list[tuple[str, str, dict]],
    concurrency: int,
    headers: dict | None = None,
) -> tuple[list[float], float, list[httpx.Response]]:
    """Send ``(method, path, kwargs)`` requests from ``concurrency`` clients; latencies (s),
    wall time and responses in request order."""
    latencies = [0.0] * len(requests)
    responses: list[httpx.Response | None] = [None] * len(requests)
    cursor = iter(range(len(requests)))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=base_url, limits=limits, headers=headers, timeout=60
    ) as client:

        async def worker() -> None:
            for index in cursor:
                method, path, kwargs = requests[index]
                start = time.perf_counter()
                responses[index] = await client.request(method, path, **kwargs)
                latencies[index] = time.perf_counter() - start

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return latencies, wall, responses  # type: ignore[return-value]


POST_SCRIPT = """
wrk.method = "POST"
wrk.body = '{"kind": "simclr", "config": {"dataset": {"name": "digits"}, "max_steps": 10}}'
wrk.headers["Content-Type"] = "application/json"
"""


def wrk(name: str, url: str, concurrency: int, seconds: int, script: str | None = None,
        headers: dict | None = None) -> str:  # fmt: skip
    """One ``wrk`` run: a table row of p50/p99 latency and requests/s."""
    command = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--latency", url]
    for key, value in (headers or {}).items():
        command += ["-H", f"{key}: {value}"]
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as lua:
        if script:
            lua.write(script)
            lua.flush()
            command += ["-s", lua.name]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout

    def milliseconds(percentile: str) -> float:
        value, unit = re.search(rf"{percentile}%\s+([\d.]+)(us|ms|s)", output).groups()
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    total = int(re.search(r"(\d+) requests in", output).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    return (f"| {name} | {total} | {milliseconds('50'):.1f} | {milliseconds('99'):.1f} | "
            f"{rate:.0f} | {errors.group(1) if errors else 0} |")  # fmt: skip


def summary(name: str, latencies: list[float], wall: float, responses: list[httpx.Response]) -> str:
    errors = sum(not 200 <= r.status_code < 300 for r in responses)
    quantiles = statistics.quantiles(latencies, n=100)
    return (f"| {name} | {len(latencies)} | {quantiles[49] * 1e3:.1f} | {quantiles[98] * 1e3:.1f} | "
            f"{len(latencies) / wall:.0f} | {errors} |")  # fmt: skip


def fill(database_url: str, jobs: int, log_mb: float) -> None:
    """``jobs`` running jobs, each with one attempt whose stored log is ``log_mb`` MB."""
    from sqlalchemy import insert

    from services.store.db import make_engine, migrate
    from services.store.store import new_job_id, submission_id
    from services.store.tables import Attempt, AttemptLog, Job, utcnow

    engine = make_engine(database_url)
    migrate(engine)
    line = "step 123 loss 6.1234 lr 0.300 images/s 512.0 (rank 0)\n"
    text = line * int(log_mb * 1e6 / len(line))
    batch = 50
    started = time.perf_counter()
    for first in range(0, jobs, batch):
        with engine.begin() as connection:
            ids = [f"{new_job_id()}-{first + i:06d}" for i in range(min(batch, jobs - first))]
            now = utcnow()
            connection.execute(insert(Job), [
                {"id": job_id, "kind": "simclr", "name": job_id, "status": "running",
                 "config": CONFIG, "resources": {"num_workers": 2}, "max_attempts": 3,
                 "created_at": now, "updated_at": now} for job_id in ids
            ])  # fmt: skip
            attempt_ids = connection.execute(
                insert(Attempt).returning(Attempt.id),
                [{"job_id": job_id, "number": 1, "submission_id": submission_id(job_id, 1),
                  "state": "running", "submit_errors": 0, "log_size": len(text),
                  "created_at": now} for job_id in ids],
            ).scalars().all()  # fmt: skip
            connection.execute(insert(AttemptLog), [
                {"attempt_id": attempt_id, "start": 0, "text": text} for attempt_id in attempt_ids
            ])  # fmt: skip
    print(f"filled {jobs} jobs with {log_mb} MB logs in {time.perf_counter() - started:.0f} s",
          flush=True)  # fmt: skip
    engine.dispose()


def bench_service(
    label: str, database_url: str, seconds: int, list_jobs: int = 0, log_mb: float = 1.0,
    options: tuple[str, ...] = (),
) -> list[str]:  # fmt: skip
    port = free_port()
    command = [sys.executable, "-m", "bench.service_latency", "--serve", database_url,
               "--port", str(port), *options]  # fmt: skip
    server = subprocess.Popen(command)
    base = f"http://127.0.0.1:{port}"
    rows = []
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("the service did not start")
            time.sleep(0.2)
        body = {"kind": "simclr", "config": CONFIG}
        job_id = httpx.post(f"{base}/v1/jobs", json=body).json()["id"]
        # reads first, on a quiet service: a burst of writes leaves work behind it (the
        # submissions queued after each answer, the write-ahead log to checkpoint, autovacuum)
        for concurrency in CONCURRENCY:
            rows.append(wrk(f"{label} GET /v1/jobs/{{id}}, {concurrency} clients",
                            f"{base}/v1/jobs/{job_id}", concurrency, seconds))  # fmt: skip
            rows.append(wrk(f"{label} GET /healthz, {concurrency} clients", f"{base}/healthz",
                            concurrency, seconds))  # fmt: skip
        for concurrency in CONCURRENCY:
            rows.append(wrk(f"{label} POST /v1/jobs, {concurrency} clients", f"{base}/v1/jobs",
                            concurrency, seconds, POST_SCRIPT))  # fmt: skip
        keys = [str(uuid.uuid4()) for _ in range(1000)]
        submits = [("POST", "/v1/jobs", {"json": {"kind": "simclr", "config": CONFIG},
                                          "headers": {"Idempotency-Key": key}})
                   for key in keys * 2]  # fmt: skip
        random.shuffle(submits)
        latencies, wall, responses = asyncio.run(load(base, submits, 64))
        rows.append(
            summary(f"{label} POST with Idempotency-Key, 64 clients", latencies, wall, responses)
        )
        by_key: dict[str, set[str]] = {}
        for (_, _, kwargs), response in zip(submits, responses, strict=True):
            by_key.setdefault(kwargs["headers"]["Idempotency-Key"], set()).add(
                response.json()["id"]
            )
        created = sum(r.status_code == 202 for r in responses)
        replayed = sum(r.status_code == 200 for r in responses)
        exactly_once = (
            created == len(keys)
            and replayed == len(keys)
            and all(len(ids) == 1 for ids in by_key.values())
        )
        rows.append(f"<!-- idempotency {label}: {len(submits)} submits of {len(keys)} keys: "
                    f"{created} created (202), {replayed} replayed (200), one job per key: "
                    f"{exactly_once} -->")  # fmt: skip
        print(rows[-1], flush=True)
        if list_jobs:
            fill(database_url, list_jobs, log_mb)
            for concurrency in CONCURRENCY:
                rows.append(wrk(f"{label} GET /v1/jobs?limit=50 of {list_jobs} jobs with "
                                f"{log_mb:g} MB logs, {concurrency} clients",
                                f"{base}/v1/jobs?limit=50", concurrency, seconds))  # fmt: skip
    finally:
        server.terminate()
        server.wait()
    return rows


def bench_ray(seconds: int) -> list[str]:
    head = start_head(Path(tempfile.mkdtemp()), dashboard_port=free_port())
    rows = []
    try:
        headers = ray_auth_headers()
        base = head.dashboard_url
        submit = {"json": {"entrypoint": "true"}}
        first = httpx.post(f"{base}/api/jobs/", headers=headers, timeout=60, **submit).json()
        for concurrency in CONCURRENCY:
            rows.append(wrk(f"Ray GET /api/jobs/{{id}}, {concurrency} clients",
                            f"{base}/api/jobs/{first['submission_id']}", concurrency, seconds,
                            headers=headers))  # fmt: skip
        for concurrency in (1, 16):
            posts = [("POST", "/api/jobs/", submit)] * 32
            rows.append(summary(f"Ray POST /api/jobs/, {concurrency} clients",
                                *asyncio.run(load(base, posts, concurrency, headers))))  # fmt: skip
    finally:
        head.stop()
    return rows


def postgres_schema(url: str) -> tuple[str, Callable[[], None]]:
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    schema = f"simclr_bench_{uuid.uuid4().hex[:8]}"
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text(f"CREATE SCHEMA {schema}"))

    def drop() -> None:
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()

    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options=-csearch_path%3D{schema}", drop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--serve", metavar="DATABASE_URL", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=int, default=8, help="per wrk run")
    parser.add_argument("--postgres-url", default=os.environ.get(
        "SIMCLR_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"))  # fmt: skip
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--workers", type=int, help="API processes (default: simclr serve's)")
    parser.add_argument("--request-threads", type=int, help="per process (default: the setting's)")
    parser.add_argument(
        "--list-jobs",
        type=int,
        default=0,
        help="then fill the store with this many jobs and time their listing",
    )
    parser.add_argument("--log-mb", type=float, default=1.0, help="each listed job's log")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.workers, args.request_threads)
        return
    if shutil.which("wrk") is None:
        raise SystemExit("this benchmark needs wrk, a C load generator: apt-get install wrk")
    from services.settings import Settings

    defaults = Settings()
    workers = args.workers or defaults.workers
    threads = args.request_threads or defaults.request_threads
    print(f"{os.cpu_count()} cores; {workers} API process(es) of {threads} request threads; "
          f"{args.seconds} s per wrk run\n")  # fmt: skip
    options = tuple(f"--{name}={value}" for name, value in
                    (("workers", args.workers), ("request-threads", args.request_threads)) if value)  # fmt: skip
    rows = ["| requests | n | p50 ms | p99 ms | req/s | errors |", "|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as scratch:
        rows += bench_service("SQLite", f"sqlite:///{scratch}/bench.db", args.seconds,
                              args.list_jobs, args.log_mb, options)  # fmt: skip
    url, drop = postgres_schema(args.postgres_url)
    try:
        rows += bench_service("PostgreSQL", url, args.seconds, args.list_jobs, args.log_mb, options)
    finally:
        drop()
    if not args.skip_ray:
        rows += bench_ray(args.seconds)
    print("\n".join(row for row in rows if not row.startswith("<!--")))


if __name__ == "__main__":
    main()
