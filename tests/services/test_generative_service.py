"""Generative jobs through the API on a real Ray cluster, 2 CPU workers each, and a run that resumes
from its checkpoint when relaunched. Two kinds: the service's path (submission, Ray Train, reports,
checkpoints, artifacts) is the same for every kind, and every kind's data-parallel arithmetic runs
on 2 gloo ranks in tests/trainer/test_generative_jobs.py, without a Ray job's minute of start-up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.client import Client
from tests.distributed import run_driver_process
from tests.services.test_service_ray import ServiceThread, wait_for
from tests.trainer.test_generative_jobs import KIND_SETTINGS, TOY

pytestmark = pytest.mark.slow

# DDPM (relaunched below) and the GAN (two networks, two optimisers and an EMA copy)
THROUGH_THE_API = ("ddpm", "gan")


def job_config(kind: str, steps: int = 4) -> dict:
    return {"data": TOY, "batch_size": 32, "steps": steps, "log_every_steps": 1,
            "checkpoint_every_steps": 2, "eval_examples": 16, "sample_count": 16,
            **KIND_SETTINGS[kind]}  # fmt: skip


def test_generative_kinds_train_through_the_api_on_two_workers_and_resume(settings, ray_head):
    client = Client(f"http://127.0.0.1:{settings.port}")
    with ServiceThread(settings):
        jobs = {
            kind: client.submit(kind, job_config(kind), {"num_workers": 2}, f"{kind} on 2 workers")
            for kind in THROUGH_THE_API
        }
        for kind, job in jobs.items():
            done = wait_for(
                lambda job=job: (j := client.job(job["id"]))["status"] in ("succeeded", "failed") and j,
                300, f"the {kind} job",
            )  # fmt: skip
            assert done["status"] == "succeeded", f"{kind}: {done['error']}"
            names = {m["name"] for m in client.metrics(job["id"])}
            assert {"loss", "images_per_s", "data_log_likelihood_nats"} <= names, kind
            assert [c["step"] for c in client.checkpoints(job["id"])] == [2, 4], kind
            artifacts = {a["name"]: a for a in client.artifacts(job["id"])}
            assert set(artifacts) == {"samples.png", "curves.png"}, kind
            png = client.http.get(artifacts["samples.png"]["url"]).content
            assert png.startswith(b"\x89PNG")

    # The DDPM run relaunched with more steps, as the service relaunches one (a driver process with
    # the same job id): Ray Train hands the step-4 checkpoint back and the run goes on from there.
    job_id = jobs["ddpm"]["id"]
    spec = {"job_id": job_id, "kind": "ddpm", "config": job_config("ddpm", steps=6),
            "resources": {"num_workers": 2}, "storage_path": settings.storage_path}  # fmt: skip
    run_driver_process(spec, ray_head.gcs_address)
    metrics = Path(settings.storage_path, job_id, "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in metrics] == [1, 2, 3, 4, 5, 6]
