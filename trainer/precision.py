"""Which arithmetic a training run's forward passes use, decided on the worker that runs it.

``precision: auto`` (the default of SimCLR, fine-tuning and the generative kinds but the flow) is
bf16 autocast where the device computes bf16 fast: a CUDA GPU with bf16 support, or a CPU whose
flags list AMX (``amx_bf16``) or AVX512-BF16 (``avx512_bf16``); fp32 elsewhere. On a CPU without
them oneDNN emulates bf16 and a step gets 11x slower (docs/benchmarks.md). ``fp32`` and ``bf16``
force it. Under bf16 autocast only the convolutions and matmuls of the training forward passes run
in bf16: the weights, their gradients, the optimisers (LARS's norms and updates, Adam), batch-norm
statistics, the losses (NT-Xent's logits in ``trainer.losses``; the generative losses and the
fine-tuning cross-entropy from ``at_least_fp32`` copies of the outputs), evaluations and the
checkpoints stay fp32, so a run resumes under either precision.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch

BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_bf16_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> tuple[str, ...]:
    """Which of ``BF16_CPU_FLAGS`` this machine's CPU lists (none when the file is unreadable)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return ()
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])  # fmt: skip
    return tuple(flag for flag in BF16_CPU_FLAGS if flag in flags)


def resolve_precision(requested: str, device: torch.device) -> tuple[str, str]:
    """``(precision, why)``: ``bf16`` or ``fp32`` for ``requested`` (auto, fp32, bf16) on ``device``."""
    if requested == "fp32":
        return "fp32", "asked for"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return (
                "bf16",
                f"{'asked for' if requested == 'bf16' else 'auto'}: the GPU computes bf16",
            )
        return "fp32", "the GPU has no bf16 arithmetic"
    if device.type == "cpu":
        flags = cpu_bf16_flags()
        if requested == "bf16":
            return "bf16", "asked for" + ("" if flags else " (this CPU has neither AMX nor "
                                           "AVX512-BF16: slower than fp32)")  # fmt: skip
        if flags:
            return "bf16", f"auto: the CPU has {' and '.join(flags)}"
        return "fp32", "auto: the CPU has neither AMX nor AVX512-BF16"
    return "fp32", f"no bf16 autocast on {device.type}"


def autocast_for(precision: str, device: torch.device) -> AbstractContextManager:
    """bf16 autocast for a resolved ``precision`` of bf16 on CUDA or a CPU; nothing otherwise."""
    if precision == "bf16" and device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def at_least_fp32(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in fp32 when autocast left it in a 16-bit float; fp32 and fp64 unchanged."""
    return tensor.float() if tensor.dtype in (torch.bfloat16, torch.float16) else tensor
