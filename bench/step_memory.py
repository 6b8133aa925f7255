"""Peak resident memory of one SimCLR step (foundation benchmark 3, distributed benchmark 2).

Each measurement runs in its own process: it builds the model, the optimiser and a batch of uint8
32-px images, records its resident memory, resets the kernel's peak-RSS mark
(``/proc/self/clear_refs``), runs one full step (batched augmentation, forward, NT-Xent or the
gradient cache with ``--chunk-size``, backward, LARS) and reads ``VmHWM``. The lightly row runs
lightly's ``NTXentLoss`` + ``LARS`` on the same model and views (augmented before the reset).
An unchunked step whose extrapolated peak exceeds the memory available is not run: its row gives
the extrapolation instead.

    python -m bench.step_memory                                   # small CNN, 1,024 pairs, vs lightly
    python -m bench.step_memory --backbone resnet18 --pairs 1024 4096 --chunk-size 256

Linux only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

from bench.common import machine_summary


def _status_kib(field: str, path: str = "/proc/self/status") -> int:
    for line in Path(path).read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in {path}")


def _available_mib() -> float:
    return _status_kib("MemAvailable", "/proc/meminfo") / 1024


def measure(contender: str, backbone_name: str, pairs: int, chunk_size: int | None) -> dict:
    from models import ProjectionHead, SimCLRNet, build_backbone
    from trainer.data.augment import SimCLRAugment
    from trainer.gradient_cache import gradient_cache_backward
    from trainer.losses import nt_xent
    from trainer.optim import LARS, lars_param_groups

    torch.manual_seed(0)
    backbone = build_backbone(backbone_name, cifar_stem=True)
    model = SimCLRNet(backbone, ProjectionHead(backbone.feature_dim))
    groups = lars_param_groups(model, 1e-6)
    images = torch.randint(0, 256, (pairs, 3, 32, 32), dtype=torch.uint8)
    augment = SimCLRAugment(32, strength=0.5, blur=False)
    if contender == "lightly":
        from lightly.loss import NTXentLoss
        from lightly.utils.lars import LARS as LightlyLARS

        optimizer = LightlyLARS(groups, lr=0.1, momentum=0.9)
        loss_fn = NTXentLoss(temperature=0.5)
        ready = torch.cat(augment(images))
    else:
        optimizer = LARS(groups, lr=0.1, momentum=0.9)

    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    if contender == "lightly":
        z_a, z_b = model(ready).chunk(2)
        loss_fn(z_a, z_b).backward()
    else:
        view_a, view_b = augment(images)
        if chunk_size:
            gradient_cache_backward(model, view_a, view_b, 0.5, chunk_size)
        else:
            z_a, z_b = model(torch.cat([view_a, view_b])).chunk(2)
            nt_xent(z_a, z_b, 0.5).backward()
    optimizer.step()
    return {"before_mib": before / 1024, "peak_mib": _status_kib("VmHWM") / 1024}


def run_one(contender: str, backbone: str, pairs: int, chunk_size: int | None) -> dict:
    command = [
        sys.executable,
        "-m",
        "bench.step_memory",
        "--one",
        contender,
        "--backbone",
        backbone,
    ]
    command += ["--pairs", str(pairs)] + (["--chunk-size", str(chunk_size)] if chunk_size else [])
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--backbone", default="small_cnn", choices=["small_cnn", "resnet18", "resnet50"]
    )
    parser.add_argument("--pairs", type=int, nargs="+", default=[1024])
    parser.add_argument(
        "--chunk-size", type=int, default=None, help="also measure the gradient cache"
    )
    parser.add_argument("--one", choices=["ours", "lightly"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.backbone, args.pairs[0], args.chunk_size)))
        return
    print(
        f"# {machine_summary()}; {args.backbone}, 32-px views, fp32; {_available_mib():.0f} MiB available"
    )
    print(
        "| step | pairs | RSS before step (MiB) | peak RSS during step (MiB) | peak minus before (MiB) |"
    )
    print("|---|---|---|---|---|")
    contenders = [("ours", None, "ours")]
    if args.chunk_size:
        contenders.append(("ours", args.chunk_size, f"ours, chunk_size {args.chunk_size}"))
    else:
        contenders.append(("lightly", None, "lightly NTXentLoss + LARS"))
    measured: dict[str, list[tuple[int, float]]] = {}
    for pairs in sorted(args.pairs):
        for contender, chunk, label in contenders:
            history = measured.setdefault(label, [])
            if history and chunk is None:
                smaller_pairs, smaller_delta = history[-1]
                estimate = smaller_delta * pairs / smaller_pairs
                if estimate > 0.8 * _available_mib():
                    print(
                        f"| {label} | {pairs} | - | not run: about {estimate:.0f} MiB by extrapolation | - |"
                    )
                    continue
            result = run_one(contender, args.backbone, pairs, chunk)
            delta = result["peak_mib"] - result["before_mib"]
            history.append((pairs, delta))
            print(
                f"| {label} | {pairs} | {result['before_mib']:.0f} | {result['peak_mib']:.0f} | {delta:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
