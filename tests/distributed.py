"""Run a function on N gloo processes of this machine and collect what each rank returns; run a
job's driver as a process of its own against the session's Ray head."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

# Logical CPUs of the test session's Ray head. More would let independent 2-worker jobs run side
# by side, but on 2 cores that measured no faster: their cost is process start-up, which is CPU.
HEAD_CPUS = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, fn: Callable[[int, int], Any], results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        results[rank] = fn(rank, world)
    finally:
        dist.destroy_process_group()


def run_on_ranks(fn: Callable[[int, int], Any], world: int = 2) -> list[Any]:
    """``fn(rank, world)`` on ``world`` processes under an initialised gloo group; results by rank.
    ``fn`` must be a module-level function (it is pickled)."""
    results = mp.Manager().dict()
    mp.spawn(_entry, args=(world, _free_port(), fn, results), nprocs=world, join=True)
    return [results[rank] for rank in range(world)]


def run_driver_process(spec: dict, gcs_address: str, timeout: float = 300) -> None:
    """``python -m trainer.driver`` on a job spec, as a process of its own against the cluster at
    ``gcs_address`` (how the service starts a job); fails the test if the driver fails."""
    import json
    import os
    import subprocess
    import sys

    environment = {**os.environ, "RAY_ADDRESS": gcs_address}
    subprocess.run([sys.executable, "-m", "trainer.driver", "--spec-json", json.dumps(spec)],
                   env=environment, check=True, timeout=timeout)  # fmt: skip
