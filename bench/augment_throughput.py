"""Benchmark 1: SimCLR augmentation throughput against lightly's ``SimCLRTransform``.

Views/s producing 224-px views from 256-px RGB images, blur on, one CPU thread each: our batched
``SimCLRAugment`` (eager and with ``torch.compile``) on a uint8 batch against lightly's per-image
PIL pipeline (its ``SimCLRTransform`` without normalisation, so both emit float tensors in [0, 1]).
Run: ``python -m bench.augment_throughput [--rounds 5] [--batch 64] [--device cuda]``.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from PIL import Image

from bench.common import interleaved_rates, machine_summary, median
from trainer.data.augment import SimCLRAugment


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--source", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--layout",
        choices=["channels_last", "nchw"],
        default="channels_last",
        help="memory layout of our uint8 batch: channels_last is what the folder loader and Ray "
        "Data give (decoded images are height x width x channels); nchw, what the in-memory "
        "datasets hold, costs ours a conversion of each crop",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    from lightly.transforms import SimCLRTransform

    rng = np.random.default_rng(0)
    # Smooth random images (not white noise) so that JPEG-like content statistics do not matter.
    small = rng.integers(
        0, 256, (args.batch, 3, args.source // 8, args.source // 8), dtype=np.uint8
    )
    batch = (
        torch.nn.functional.interpolate(
            torch.from_numpy(small).float(), size=args.source, mode="bilinear"
        )
        .round()
        .clamp(0, 255)
        .to(torch.uint8)
    )
    pil_images = [Image.fromarray(image.permute(1, 2, 0).numpy()) for image in batch]
    memory_format = (
        torch.channels_last if args.layout == "channels_last" else torch.contiguous_format
    )
    device_batch = batch.to(args.device).contiguous(memory_format=memory_format)

    lightly_transform = SimCLRTransform(input_size=args.size, normalize=None)

    def lightly_views() -> int:
        for image in pil_images:
            lightly_transform(image)
        return 2 * len(pil_images)

    def ours(augment: SimCLRAugment):
        def run() -> int:
            a, b = augment(device_batch)
            if a.is_cuda:
                torch.cuda.synchronize()
            return a.shape[0] + b.shape[0]

        return run

    contenders = {"lightly SimCLRTransform (PIL)": lightly_views}
    contenders["SimCLRAugment eager"] = ours(SimCLRAugment(args.size))
    contenders["SimCLRAugment compiled"] = ours(SimCLRAugment(args.size, compile=True))
    for _ in range(3):  # warm-up: compilation and its re-specialisations for small subsets
        for work in contenders.values():
            work()
    rates = interleaved_rates(contenders, args.rounds)
    baseline = median(rates["lightly SimCLRTransform (PIL)"])
    print(
        f"# {machine_summary()}; device {args.device}; {args.source}px -> {args.size}px, blur on;"
        f" our batch {args.layout}"
    )
    print("| pipeline | views/s (median) | min-max | ratio to lightly |")
    print("|---|---|---|---|")
    for name, values in rates.items():
        print(
            f"| {name} | {median(values):.0f} | {min(values):.0f}-{max(values):.0f} "
            f"| {median(values) / baseline:.2f}x |"
        )


if __name__ == "__main__":
    main()
