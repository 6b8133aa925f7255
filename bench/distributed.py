"""Distributed-issue benchmarks 1 and 3: Ray Train scaling and overhead, on a local Ray cluster.

Scaling: images/s with 2 Ray workers x 1 CPU against 1 worker x 1 CPU at the same per-worker batch
(so the global batch doubles), on the small CNN and on ResNet-18 (CIFAR stem) at 32 px, synthetic
data, global batch norm on. Beside it, the machine's own ceiling: two independent single-thread
processes running the same loop with no communication at all.
Overhead: seconds from the start to the metrics of step 5, and the per-step time, of a 1-worker Ray
Train run (``trainer.driver.run``) against the same loop in a plain single-thread process.
Rates are medians of the logged 5-step windows after the first.
Run: ``python -m bench.distributed [--steps 30]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import machine_summary
from trainer.contracts.spec import JobSpec

PER_WORKER_BATCH = 64
LOCAL_RUN = """
import json, sys
from trainer.contracts.config import SimCLRConfig
from trainer.simclr_loop import run_simclr
from trainer.session import LocalSession
run_simclr(SimCLRConfig.model_validate(json.loads(sys.argv[1])), LocalSession(sys.argv[2]), progress=False)
"""
MODELS = {
    "small CNN": {"name": "small_cnn"},
    "ResNet-18 (CIFAR stem)": {"name": "resnet18", "cifar_stem": True},
}


def config(backbone: dict[str, Any], global_batch: int, steps: int) -> dict[str, Any]:
    return {
        "dataset": {
            "name": "synthetic",
            "image_size": 32,
            "synthetic_images": global_batch * steps,
        },
        "backbone": backbone,
        "augment": {"strength": 0.5, "blur": False},
        "batch_size": global_batch,
        "epochs": 1,
        "temperature": 0.5,
        "log_every_steps": 5,
    }


def records_of(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]


def steady_rate(records: list[dict[str, Any]]) -> float:
    return statistics.median(r["images_per_s"] for r in records[1:])


def ray_run(
    job_id: str, cfg: dict[str, Any], workers: int, storage: Path, kind: str = "simclr"
) -> tuple[list[dict], float]:
    """Records of a Ray Train run and the seconds from ``run`` to its first metrics."""
    from trainer.driver import run

    spec = JobSpec.model_validate(
        {
            "job_id": job_id,
            "kind": kind,
            "config": cfg,
            "resources": {"num_workers": workers},
            "storage_path": str(storage),
        }
    )
    start = time.time()
    run(spec)
    records = records_of(storage / job_id)
    return records, records[0]["time"] - start


def local_runs(cfg: dict[str, Any], copies: int) -> tuple[list[list[dict]], float]:
    """``copies`` independent single-thread processes of the same loop, started together."""
    directories = [Path(tempfile.mkdtemp(prefix="simclr-local-")) for _ in range(copies)]
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    start = time.time()
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", LOCAL_RUN, json.dumps(cfg), str(d)], env=environment
        )
        for d in directories
    ]
    for process in processes:
        if process.wait():
            raise RuntimeError("a local run failed")
    runs = [records_of(d) for d in directories]
    return runs, runs[0][0]["time"] - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    storage = Path(tempfile.mkdtemp(prefix="simclr-bench-"))
    print(
        f"# {machine_summary()}; Ray {ray.__version__}; per-worker batch {PER_WORKER_BATCH}, 32 px"
    )
    print(
        "| model | 1 worker images/s | 2 workers images/s | speed-up | 2 independent processes (ceiling) |"
    )
    print("|---|---|---|---|---|")
    ray_one_worker: list[dict] = []
    for index, (name, backbone) in enumerate(MODELS.items()):
        rates = []
        for workers in (1, 2):
            records, _ = ray_run(
                f"scale-{index}-{workers}",
                config(backbone, PER_WORKER_BATCH * workers, args.steps),
                workers,
                storage,
            )
            rates.append(steady_rate(records))
            if index == 0 and workers == 1:
                ray_one_worker = records
        single, _ = local_runs(config(backbone, PER_WORKER_BATCH, args.steps), 1)
        pair, _ = local_runs(config(backbone, PER_WORKER_BATCH, args.steps), 2)
        ceiling = sum(steady_rate(r) for r in pair) / steady_rate(single[0])
        print(
            f"| {name} | {rates[0]:.0f} | {rates[1]:.0f} | {rates[1] / rates[0]:.2f}x | {ceiling:.2f}x |",
            flush=True,
        )

    cfg = config(MODELS["small CNN"], PER_WORKER_BATCH, args.steps)
    _, ray_first = ray_run("overhead", cfg, 1, storage)
    local, local_first = local_runs(cfg, 1)
    step_ray = PER_WORKER_BATCH / steady_rate(ray_one_worker)
    step_local = PER_WORKER_BATCH / steady_rate(local[0])
    print()
    print("| small CNN, 1 worker, 1 thread | start to step-5 metrics (s) | per-step time (ms) |")
    print("|---|---|---|")
    print(
        f"| Ray Train run through `trainer.driver.run` | {ray_first:.1f} | {1000 * step_ray:.0f} |"
    )
    print(f"| the same loop in a plain process | {local_first:.1f} | {1000 * step_local:.0f} |")
    print(f"| difference | {ray_first - local_first:+.1f} | {step_ray / step_local - 1:+.1%} |")
    ray.shutdown()


if __name__ == "__main__":
    main()
