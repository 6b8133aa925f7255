"""What the online kNN monitor costs a run at each preset's settings: the seconds of one
``KnnMonitor.top1`` over the seconds of the ``monitor.every_steps`` training steps between two of
them (goal: at most 5 %).

    python -m bench.monitor_cost
    python -m bench.monitor_cost --presets digits-demo --steps 5

Each preset runs as written (backbone, batch, precision) on this machine's CPU threads, but on
synthetic labelled images of its view size for the CIFAR presets (the monitor's cost depends on
the number and size of its images, not on what they show), on digits for digits-demo. A training
step is timed over ``--steps`` steps after one warm-up step; the monitor over two calls after one.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from bench.common import machine_summary
from bench.time_to_accuracy import ours_step_time
from trainer.contracts.config import load_config
from trainer.data.datasets import build_dataset
from trainer.knn import KnnMonitor
from trainer.simclr_recipe import build_model

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--presets", nargs="+", default=["digits-demo", "cifar10-short", "cifar10"])
    parser.add_argument("--steps", type=int, default=3, help="training steps timed per preset")
    args = parser.parse_args()
    print(f"# {machine_summary()}", flush=True)
    print("\n| preset | backbone, batch | s/step | monitor every | monitor s | cost |\n"
          "|---|---|---|---|---|---|", flush=True)  # fmt: skip
    for preset in args.presets:
        config = load_config(ROOT / "configs" / f"{preset}.yaml")
        if config.dataset.name != "digits":
            synthetic = {"name": "synthetic", "image_size": config.dataset.view_size,
                         "synthetic_images": max(config.batch_size, config.monitor.train_images),
                         "synthetic_classes": 10}  # fmt: skip
            config = config.model_validate({**config.model_dump(), "dataset": synthetic})
        train = build_dataset(config.dataset, "train")
        step_s = ours_step_time(config, train, args.steps)
        monitor = KnnMonitor(config, torch.device("cpu"))
        encoder = build_model(config).backbone
        monitor.top1(encoder)
        start = time.perf_counter()
        for _ in range(2):
            monitor.top1(encoder)
        monitor_s = (time.perf_counter() - start) / 2
        every = config.monitor.every_steps
        cost = monitor_s / (every * step_s)
        print(f"| {preset} | {config.backbone.name}, {config.batch_size} | {step_s:.3f} | {every} | "
              f"{monitor_s:.3f} | {100 * cost:.2f} % |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
