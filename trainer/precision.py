"""Which arithmetic a training run's forward passes use, decided on the worker that runs it.

``precision: auto`` (the default of SimCLR, fine-tuning and the generative kinds but the flow) is
bf16 autocast where the device computes bf16 fast, fp32 elsewhere:
- a CUDA GPU: bf16 where it supports it;
- a CPU with neither ``amx_bf16`` nor ``avx512_bf16`` among its flags: fp32, without measuring:
  oneDNN emulates bf16 and a step gets 11x slower (docs/benchmarks.md);
- a CPU with either: bf16 only where a probe of its kernels (``cpu_bf16_speedup``: 3x3
  convolutions and a matmul, forward and backward; about half a second at 2 threads, once per
  worker process and thread count) runs at least ``BF16_MIN_SPEEDUP`` times as fast in bf16 as
  in fp32. The flags alone do not tell: AMX and AMD's AVX512-BF16 run a bf16 matmul 2-6x as fast
  as fp32, while an Intel Xeon whose AVX512-BF16 comes without AMX runs it at 0.5x (oneDNN's
  ``avx512_core_bf16`` kernels) and a training step at 0.8-0.96x (docs/benchmarks.md).
``fp32`` and ``bf16`` force it. Under bf16 autocast only the convolutions and matmuls of the
training forward passes run in bf16: the weights, their gradients, the optimisers (LARS's norms
and updates, Adam), batch-norm statistics, the losses (NT-Xent's logits in ``trainer.losses``; the
generative losses and the fine-tuning cross-entropy from ``at_least_fp32`` copies of the outputs),
evaluations and the checkpoints stay fp32, so a run resumes under either precision. The ranks of a
run agree: bf16 only where every rank resolved bf16, so that the run's logs and metrics say what
every worker computes.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from trainer.distributed import on_every_rank

BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
BF16_MIN_SPEEDUP = 1.25
"""``auto`` takes bf16 on a CPU where ``cpu_bf16_speedup`` is at least this: a training step gains
less than its convolutions (batch norm, activations and the optimiser stay fp32), so a kernel gain
near parity is no gain; the hosts measured lie far on either side (0.6-0.7x and 2x or more)."""


def cpu_bf16_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> tuple[str, ...]:
    """Which of ``BF16_CPU_FLAGS`` this machine's CPU lists (none when the file is unreadable)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return ()
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])  # fmt: skip
    return tuple(flag for flag in BF16_CPU_FLAGS if flag in flags)


@functools.cache
def cpu_bf16_speedup(threads: int, rounds: int = 3) -> float:
    """How many times as fast this CPU runs a probe under bf16 autocast as in fp32, at the current
    thread count, which callers pass as ``threads`` (``torch.get_num_threads()``) so that the cache
    holds one figure per count: forward and backward (input and weight gradients) of a 3x3
    convolution of 64 channels at 32x32 and of 256 at 8x8 (batch 16, channels-last: the layers that
    dominate the encoders here) and of a 1024-wide linear layer over 128 rows. The best of
    ``rounds`` interleaved timings of each, after a warm-up of each, so that a noisy neighbour's
    burst does not decide. Runs with gradients on and
    no outer autocast whatever its caller's modes, and draws its tensors from a generator of its
    own, leaving the run's random stream as it was."""
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast("cpu", enabled=False):
        return _probe_speedup(rounds)


def _probe_speedup(rounds: int) -> float:
    generator = torch.Generator().manual_seed(0)

    def leaf(*shape: int, channels_last: bool = False) -> torch.Tensor:
        tensor = torch.randn(*shape, generator=generator)
        if channels_last:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        return tensor.requires_grad_(True)

    convolutions = [
        (leaf(16, 64, 32, 32, channels_last=True), leaf(64, 64, 3, 3, channels_last=True)),
        (leaf(16, 256, 8, 8, channels_last=True), leaf(256, 256, 3, 3, channels_last=True)),
    ]
    linear = (leaf(128, 1024), leaf(1024, 1024))
    leaves = [tensor for pair in [*convolutions, linear] for tensor in pair]
    cpu = torch.device("cpu")

    def seconds(precision: str) -> float:
        for tensor in leaves:
            tensor.grad = None
        start = time.perf_counter()
        with autocast_for(precision, cpu):
            outputs = [F.conv2d(x, w, padding=1) for x, w in convolutions] + [F.linear(*linear)]
        sum(output.float().square().mean() for output in outputs).backward()
        return time.perf_counter() - start

    best = dict.fromkeys(("fp32", "bf16"), math.inf)
    for precision in best:
        seconds(precision)  # the warm-up: oneDNN sets up its kernels on the first call
    for _ in range(rounds):
        for precision in best:
            best[precision] = min(best[precision], seconds(precision))
    return best["fp32"] / best["bf16"]


class Resolution(NamedTuple):
    """A run's precision, ``bf16`` or ``fp32``; why, in words for its log; and this worker's CPU
    probe ratio (``cpu_bf16_speedup``) where one ran, kept where the ranks' agreement overruled
    it."""

    precision: str
    why: str
    bf16_speedup: float | None = None

    def metrics(self) -> dict[str, float]:
        """What a run reports with its metrics, shown by ``simclr get``: ``bf16`` (1 or 0) and,
        where a probe decided, ``bf16_speedup``."""
        probed = {} if self.bf16_speedup is None else {"bf16_speedup": self.bf16_speedup}
        return {"bf16": float(self.precision == "bf16"), **probed}


def resolve_precision(requested: str, device: torch.device) -> Resolution:
    """``bf16`` or ``fp32`` for ``requested`` (auto, fp32, bf16) on ``device``, and why; in a
    process group, bf16 only where every rank resolved bf16 (all ranks must call this)."""
    resolved = _resolve_on_this_worker(requested, device)
    # the collective first: every rank must take part, whatever it resolved
    if not on_every_rank(resolved.precision == "bf16") and resolved.precision == "bf16":
        why = f"{resolved.why}; not so on every worker, and the workers agree: fp32"
        return resolved._replace(precision="fp32", why=why)
    return resolved


def _resolve_on_this_worker(requested: str, device: torch.device) -> Resolution:
    if requested == "fp32":
        return Resolution("fp32", "asked for")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            how = "asked for" if requested == "bf16" else "auto"
            return Resolution("bf16", f"{how}: the GPU computes bf16")
        return Resolution("fp32", "the GPU has no bf16 arithmetic")
    if device.type == "cpu":
        flags = cpu_bf16_flags()
        if requested == "bf16":
            slow = "" if flags else " (this CPU has neither AMX nor AVX512-BF16: slower than fp32)"
            return Resolution("bf16", "asked for" + slow)
        if not flags:
            return Resolution("fp32", "auto: the CPU has neither AMX nor AVX512-BF16")
        speedup = cpu_bf16_speedup(torch.get_num_threads())
        measured = (f"auto: the CPU has {' and '.join(flags)}, and its bf16 convolutions and "
                    f"matmul ran {speedup:.2f}x as fast as fp32")  # fmt: skip
        if speedup >= BF16_MIN_SPEEDUP:
            return Resolution("bf16", measured, speedup)
        return Resolution("fp32", f"{measured} (bf16 needs {BF16_MIN_SPEEDUP}x)", speedup)
    return Resolution("fp32", f"no bf16 autocast on {device.type}")


def autocast_for(precision: str, device: torch.device) -> AbstractContextManager:
    """bf16 autocast for a resolved ``precision`` of bf16 on CUDA or a CPU; nothing otherwise."""
    if precision == "bf16" and device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


@contextmanager
def without_tf32() -> Iterator[None]:
    """CUDA matmuls and convolutions in full fp32 (TF32 off) inside the block, the previous settings
    restored after: for comparisons with fp32 references (TF32 keeps 10 mantissa bits)."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def at_least_fp32(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in fp32 when autocast left it in a 16-bit float; fp32 and fp64 unchanged."""
    return tensor.float() if tensor.dtype in (torch.bfloat16, torch.float16) else tensor
