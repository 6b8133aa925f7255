"""Benchmark 3: peak resident memory of one SimCLR step at 1,024 pairs on the small CNN.

Each contender runs in its own process: it builds the model (small CNN, width 64, default head),
the optimiser and a batch of 1,024 uint8 32-px images, runs one warm-up step (so optimiser state and
allocator pools exist), resets the kernel's peak-RSS mark (``/proc/self/clear_refs``), runs one
step and reads ``VmHWM``. Contenders: our full step (batched augmentation from uint8 on the step's
device + forward + NT-Xent + backward + LARS), the same without augmentation (views made before),
and lightly's ``NTXentLoss`` + ``LARS`` on the same views and model.
Run: ``python -m bench.step_memory [--pairs 1024]`` (Linux only).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

from bench.common import machine_summary

CONTENDERS = ("ours: augment + step", "ours: step on ready views", "lightly: step on ready views")


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(contender: str, pairs: int) -> dict:
    from models import ProjectionHead, SimCLRNet, SmallCNN
    from trainer.data.augment import SimCLRAugment
    from trainer.losses import nt_xent
    from trainer.optim import LARS, lars_param_groups

    torch.manual_seed(0)
    backbone = SmallCNN(width=64)
    model = SimCLRNet(backbone, ProjectionHead(backbone.feature_dim))
    groups = lars_param_groups(model, 1e-6)
    images = torch.randint(0, 256, (pairs, 3, 32, 32), dtype=torch.uint8)
    augment = SimCLRAugment(32, strength=0.5, blur=False)
    if contender.startswith("lightly"):
        from lightly.loss import NTXentLoss
        from lightly.utils.lars import LARS as LightlyLARS

        optimizer = LightlyLARS(groups, lr=0.1, momentum=0.9)
        loss_fn = NTXentLoss(temperature=0.5)
    else:
        optimizer = LARS(groups, lr=0.1, momentum=0.9)

        def loss_fn(a, b):
            return nt_xent(a, b, 0.5)

    ready = torch.cat(augment(images))

    def step() -> None:
        views = torch.cat(augment(images)) if contender == CONTENDERS[0] else ready
        z_a, z_b = model(views).chunk(2)
        loss = loss_fn(z_a, z_b)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    step()
    return {"before_mib": before / 1024, "peak_mib": _status_kib("VmHWM") / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=1024)
    parser.add_argument("--one", choices=CONTENDERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.pairs)))
        return
    print(f"# {machine_summary()}; small CNN (width 64), {args.pairs} pairs of 32-px views, fp32")
    print("| step | RSS before step (MiB) | peak RSS during step (MiB) | peak minus before (MiB) |")
    print("|---|---|---|---|")
    for contender in CONTENDERS:
        output = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.step_memory",
                "--pairs",
                str(args.pairs),
                "--one",
                contender,
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        result = json.loads(output.strip().splitlines()[-1])
        print(
            f"| {contender} | {result['before_mib']:.0f} | {result['peak_mib']:.0f} "
            f"| {result['peak_mib'] - result['before_mib']:.0f} |"
        )


if __name__ == "__main__":
    main()
