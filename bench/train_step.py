"""Benchmark 2: one SimCLR training step against lightly's ``NTXentLoss`` and ``LARS``.

ResNet-18 with the CIFAR stem, 128 pairs of 32-px views (made once, outside the timed step), one
forward pass over both views, NT-Xent (tau 0.5), backward, LARS step with biases and norms excluded.
The two contenders share the model, the views and the parameter groups; only the loss and the
optimiser differ. Also reported: the step's FLOPs (counted by ``torch.utils.flop_counter``) over its
time, as a fraction of this machine's measured 2048x2048 fp32 matmul rate (the compute floor); for
the bf16 row, of the faster of the bf16 and fp32 rates (bf16 without bf16 instructions is slower).
``--backbone small_cnn --width 32`` times the time-to-accuracy benchmark's small CNN instead;
``--channels-last`` puts weights and views in that layout; ``--compile`` adds a third contender, ours
with the model under ``torch.compile`` (``SimCLRConfig.compile_model``), and reports its compile time;
``--bf16`` adds ours under bf16 autocast (``precision: bf16``; what ``auto`` picks where the CPU
probe of ``trainer.precision`` finds bf16 faster).
Run: ``python -m bench.train_step [--rounds 6] [--pairs 128] [--threads 2] [--backbone resnet18]
[--width 64] [--channels-last] [--compile]``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bench.common import interleaved_rates, machine_summary, matmul_flops_per_second, median
from models import ProjectionHead, SimCLRNet, build_backbone
from trainer.losses import nt_xent
from trainer.optim import LARS, lars_param_groups
from trainer.precision import autocast_for, resolve_precision

TEMPERATURE = 0.5


def make_model(backbone_name: str, width: int, channels_last: bool) -> SimCLRNet:
    torch.manual_seed(0)
    backbone = build_backbone(backbone_name, cifar_stem=True, width=width)
    model = SimCLRNet(backbone, ProjectionHead(backbone.feature_dim))
    return model.to(memory_format=torch.channels_last) if channels_last else model


def make_step(
    model: nn.Module, views: torch.Tensor, loss_fn: Callable, optimizer: torch.optim.Optimizer
) -> Callable[[], int]:
    """One training step of ``model`` (or of a compiled wrapper around it: ``optimizer`` holds the
    parameters either way)."""

    def step() -> int:
        z_a, z_b = model(views).chunk(2)
        loss = loss_fn(z_a, z_b)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return views.shape[0] // 2

    return step


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--pairs", type=int, default=128)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--backbone", choices=("resnet18", "small_cnn"), default="resnet18")
    parser.add_argument("--width", type=int, default=64, help="small CNN base width")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="also time ours with torch.compile")
    parser.add_argument("--bf16", action="store_true",
                        help="also time ours under bf16 autocast (what precision: bf16 runs)")  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from lightly.loss import NTXentLoss
    from lightly.utils.lars import LARS as LightlyLARS

    views = torch.rand(2 * args.pairs, 3, 32, 32)
    if args.channels_last:
        views = views.contiguous(memory_format=torch.channels_last)

    def make_ours(model: nn.Module, forward: nn.Module) -> Callable[[], int]:
        return make_step(
            forward,
            views,
            lambda a, b: nt_xent(a, b, TEMPERATURE),
            LARS(lars_param_groups(model, 1e-6), lr=0.1, momentum=0.9),
        )

    def new_model() -> SimCLRNet:
        return make_model(args.backbone, args.width, args.channels_last)

    ours_model, lightly_model = new_model(), new_model()
    ours = make_ours(ours_model, ours_model)
    lightly_loss = NTXentLoss(temperature=TEMPERATURE)
    theirs = make_step(
        lightly_model,
        views,
        lightly_loss,
        LightlyLARS(lars_param_groups(lightly_model, 1e-6), lr=0.1, momentum=0.9),
    )
    with FlopCounterMode(display=False) as counter:
        ours()
    step_flops = counter.get_total_flops()
    theirs()
    contenders = {"lightly NTXentLoss + LARS": theirs, "ours nt_xent + LARS": ours}
    notes = ""
    if args.compile:
        compiled_model = new_model()
        compiled = make_ours(compiled_model, torch.compile(compiled_model))
        start = time.perf_counter()
        compiled()  # compiles the forward and backward graphs
        notes = f"; ours compiled: first step {time.perf_counter() - start:.1f} s"
        contenders["ours nt_xent + LARS, torch.compile"] = compiled
    if args.bf16:
        bf16_model = new_model()

        def bf16_forward(batch: torch.Tensor) -> torch.Tensor:
            with autocast_for("bf16", batch.device):
                return bf16_model(batch)

        contenders["ours nt_xent + LARS, bf16 autocast"] = make_ours(bf16_model, bf16_forward)
        contenders["ours nt_xent + LARS, bf16 autocast"]()  # warm-up
        chosen, why, _ = resolve_precision("auto", torch.device("cpu"))
        notes += f"; precision auto here: {chosen} ({why})"
    rates = interleaved_rates(contenders, args.rounds)
    peak = matmul_flops_per_second(2048, 5)
    bf16_peak = matmul_flops_per_second(2048, 5, torch.bfloat16) if args.bf16 else peak
    if args.bf16:
        notes += (
            f"; 2048x2048 matmul: bf16 {bf16_peak / 1e9:.0f} GFLOP/s against fp32 {peak / 1e9:.0f}"
        )
    baseline = median(rates["lightly NTXentLoss + LARS"])
    model_name = (
        "ResNet-18 CIFAR stem" if args.backbone == "resnet18" else f"small CNN width {args.width}"
    )
    layout = ", channels-last" if args.channels_last else ""
    print(f"# {machine_summary()}; {model_name}{layout}, {args.pairs} pairs of 32-px views{notes}")
    print(
        f"# step FLOPs (forward + backward) {step_flops / 1e9:.1f} GFLOP; fp32 2048x2048 matmul rate {peak / 1e9:.0f} GFLOP/s"
    )
    print(
        "| step | pairs/s (median) | min-max | ratio to lightly | achieved GFLOP/s | fraction of matmul rate (bf16 row: the faster of bf16, fp32) |"
    )
    print("|---|---|---|---|---|---|")
    for name, values in rates.items():
        rate = median(values)
        achieved = step_flops * rate / args.pairs
        floor = max(bf16_peak, peak) if name.endswith("bf16 autocast") else peak
        print(
            f"| {name} | {rate:.1f} | {min(values):.1f}-{max(values):.1f} | {rate / baseline:.3f}x "
            f"| {achieved / 1e9:.1f} | {achieved / floor:.0%} |"
        )


if __name__ == "__main__":
    main()
