"""Shared helpers for the benchmarks: machine facts, the fp32 matmul rate, interleaved timing."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable

import torch


def machine_summary() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def matmul_flops_per_second(n: int = 1024, repeats: int = 10) -> float:
    """Measured fp32 GEMM rate on this process's threads: the compute floor of every CPU figure."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def interleaved_rates(
    contenders: dict[str, Callable[[], int]], rounds: int
) -> dict[str, list[float]]:
    """Run each contender once per round, in turn, and return its items/s for every round.

    Each callable does one unit of work and returns the number of items it produced. Interleaving
    spreads the noise of a shared machine over all contenders alike; compare medians.
    """
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, work in contenders.items():
            start = time.perf_counter()
            items = work()
            rates[name].append(items / (time.perf_counter() - start))
    return rates


def median(values: list[float]) -> float:
    return statistics.median(values)
