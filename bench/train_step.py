"""Benchmark 2: one SimCLR training step against lightly's ``NTXentLoss`` and ``LARS``.

ResNet-18 with the CIFAR stem, 128 pairs of 32-px views (made once, outside the timed step), one
forward pass over both views, NT-Xent (tau 0.5), backward, LARS step with biases and norms excluded.
The two contenders share the model, the views and the parameter groups; only the loss and the
optimiser differ. Also reported: the step's FLOPs (counted by ``torch.utils.flop_counter``) over its
time, as a fraction of this machine's measured fp32 matmul rate (the compute floor).
Run: ``python -m bench.train_step [--rounds 6] [--pairs 128] [--threads 2]``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bench.common import interleaved_rates, machine_summary, matmul_flops_per_second, median
from models import ProjectionHead, SimCLRNet, build_backbone
from trainer.losses import nt_xent
from trainer.optim import LARS, lars_param_groups

TEMPERATURE = 0.5


def make_model() -> SimCLRNet:
    torch.manual_seed(0)
    backbone = build_backbone("resnet18", cifar_stem=True)
    return SimCLRNet(backbone, ProjectionHead(backbone.feature_dim))


def make_step(
    model: nn.Module, views: torch.Tensor, loss_fn: Callable, optimizer: torch.optim.Optimizer
) -> Callable[[], int]:
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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from lightly.loss import NTXentLoss
    from lightly.utils.lars import LARS as LightlyLARS

    views = torch.rand(2 * args.pairs, 3, 32, 32)
    ours_model, lightly_model = make_model(), make_model()
    ours = make_step(
        ours_model,
        views,
        lambda a, b: nt_xent(a, b, TEMPERATURE),
        LARS(lars_param_groups(ours_model, 1e-6), lr=0.1, momentum=0.9),
    )
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
    rates = interleaved_rates(contenders, args.rounds)
    peak = matmul_flops_per_second()
    baseline = median(rates["lightly NTXentLoss + LARS"])
    print(f"# {machine_summary()}; ResNet-18 CIFAR stem, {args.pairs} pairs of 32-px views")
    print(
        f"# step FLOPs (forward + backward) {step_flops / 1e9:.1f} GFLOP; fp32 matmul rate {peak / 1e9:.0f} GFLOP/s"
    )
    print(
        "| step | pairs/s (median) | min-max | ratio to lightly | achieved GFLOP/s | fraction of matmul rate |"
    )
    print("|---|---|---|---|---|---|")
    for name, values in rates.items():
        rate = median(values)
        achieved = step_flops * rate / args.pairs
        print(
            f"| {name} | {rate:.1f} | {min(values):.1f}-{max(values):.1f} | {rate / baseline:.3f}x "
            f"| {achieved / 1e9:.1f} | {achieved / peak:.0%} |"
        )


if __name__ == "__main__":
    main()
