"""Shared helpers for the benchmarks: machine facts, the fp32 matmul rate, interleaved timing."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

_VECTOR_FLAGS = ("amx_bf16", "avx512_bf16", "avx512f", "avx2")  # the widest first


def machine_summary() -> str:
    """The CPU a figure was taken on: model, family and model number, its widest vector and bf16
    instructions (AVX2, AVX-512, AVX512-BF16, AMX differ by 2-6x on these benchmarks), cores,
    torch and threads."""
    cpu = platform.processor() or platform.machine()
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    if "model name" in fields:
        cpu = fields["model name"]
        if "cpu family" in fields and "model" in fields:
            cpu += f" (family {fields['cpu family']} model {fields['model']})"
    flags = set(fields.get("flags", "").split())
    vector = [flag for flag in _VECTOR_FLAGS if flag in flags]
    if vector:
        cpu += ", " + " ".join(vector)
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def matmul_flops_per_second(
    n: int = 1024, repeats: int = 10, dtype: torch.dtype = torch.float32
) -> float:
    """Measured GEMM rate in ``dtype`` on this process's threads: the compute floor of every CPU
    figure (fp32; bf16 where the step runs under bf16 autocast)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
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
