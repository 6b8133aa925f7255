"""Linear evaluation: fast mode against the augmented protocol, and what the encoder is worth.

    python -m bench.linear_probe [--epochs 90] [--synthetic-images 10000]

1. Pretrains SimCLR (small CNN, one process) on digits (``configs/digits-demo.yaml``) and on a
   32-px synthetic set of ``--synthetic-images`` images, then scores each final checkpoint with
   ``trainer.linear_probe.run_linear_probe`` at the protocol's epoch count (90): fast (features
   extracted once, classifier on the cache), augmented (the paper's random-resized-crop 0.08-1 +
   flip through the frozen encoder every epoch), and augmented with milder crops and no flip.
   Wall time and top-1 of each, and fast mode's speed-up over the paper's protocol.
2. On digits: linear-probe top-1 (fast mode) of the SimCLR-pretrained encoder, of the same
   architecture at its random initialisation (the weights pretraining started from), and of raw
   pixels, with the same classifier, schedule and split.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from bench.common import machine_summary
from trainer.checkpoint import save_atomic
from trainer.contracts.config import LinearProbeConfig, SimCLRConfig, load_config
from trainer.data.datasets import build_dataset
from trainer.linear_classifier import train_linear_probe
from trainer.linear_probe import run_linear_probe
from trainer.pretrain import pretrain
from trainer.simclr_recipe import build_model

ROOT = Path(__file__).resolve().parent.parent
# (label, mode, settings): the paper's augmented protocol, and one with crops that keep most of a
# small image and no flip (a digit or a stripe's orientation is not mirror-invariant).
VARIANTS = (
    ("fast", "fast", {}),
    ("augmented", "augmented", {}),
    ("augmented, crops 0.5-1, no flip", "augmented", {"crop_scale": (0.5, 1.0), "flip": False}),
)


def probe(
    checkpoint: Path, config: SimCLRConfig, storage: Path, mode: str, epochs: int, **settings
):
    probe_config = LinearProbeConfig(
        source_job_id="bench", checkpoint=checkpoint.parent.name + checkpoint.name,
        checkpoint_path=str(checkpoint), dataset=config.dataset.model_copy(update={"loader_workers": 0}),
        mode=mode, epochs=epochs, **settings,
    )  # fmt: skip
    start = time.perf_counter()
    result = run_linear_probe(probe_config, storage)
    return result, time.perf_counter() - start


def random_init_checkpoint(config: SimCLRConfig, path: Path) -> Path:
    """The weights pretraining starts from (the loop seeds ``config.seed`` before building)."""
    torch.manual_seed(config.seed)
    model = build_model(config)
    save_atomic({"config": config.model_dump(mode="json"), "backbone": model.backbone.state_dict()},
                path)  # fmt: skip
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--epochs", type=int, default=90)
    parser.add_argument("--synthetic-images", type=int, default=10_000)
    parser.add_argument("--synthetic-steps", type=int, default=200)
    args = parser.parse_args()
    print(machine_summary(), flush=True)
    digits = load_config(ROOT / "configs" / "digits-demo.yaml")
    synthetic = digits.model_copy(update={
        "dataset": digits.dataset.model_copy(update={"name": "synthetic", "image_size": 32,
                                                     "synthetic_images": args.synthetic_images}),
        "max_steps": args.synthetic_steps,
    })  # fmt: skip
    rows = ["| data | mode | epochs | top-1 % | top-5 % | wall s |", "|---|---|---|---|---|---|"]
    speedups = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        checkpoints = {}
        for name, config in (("digits", digits), ("synthetic", synthetic)):
            start = time.perf_counter()
            checkpoints[name] = pretrain(config, scratch / name, progress=False).checkpoint
            print(f"pretrained on {name} in {time.perf_counter() - start:.0f} s", flush=True)
            timings = {}
            for label, mode, settings in VARIANTS:
                result, seconds = probe(
                    checkpoints[name], config, scratch / f"cache-{name}", mode, args.epochs,
                    **settings,
                )  # fmt: skip
                timings[label] = seconds
                rows.append(f"| {name} ({result.train_images} / {result.test_images}) | {label} | "
                            f"{result.epochs} | {result.top1:.2f} | {result.top5:.2f} | {seconds:.1f} |")  # fmt: skip
                print(rows[-1], flush=True)
            speedups.append(
                f"{name}: fast mode {timings['augmented'] / timings['fast']:.1f}x faster"
            )

        train, test = build_dataset(digits.dataset, "train"), build_dataset(digits.dataset, "test")
        random_init = random_init_checkpoint(digits, scratch / "random-init.pt")
        worth = ["| features (digits, fast mode, 90 epochs) | top-1 % | top-5 % |", "|---|---|---|"]
        for label, checkpoint in (("SimCLR-pretrained small CNN", checkpoints["digits"]),
                                  ("same small CNN, random init", random_init)):  # fmt: skip
            result, _ = probe(
                checkpoint, digits, scratch / f"cache-{label[:4]}", "fast", args.epochs
            )
            worth.append(f"| {label} | {result.top1:.2f} | {result.top5:.2f} |")
        raw = train_linear_probe(train.images.flatten(1).float(), train.labels,
                                 test.images.flatten(1).float(), test.labels, epochs=args.epochs)  # fmt: skip
        worth.append(f"| raw pixels | {raw.top1:.2f} | {raw.top5:.2f} |")
    print("\n" + "\n".join(rows) + "\n\n" + "; ".join(speedups) + "\n\n" + "\n".join(worth))


if __name__ == "__main__":
    main()
