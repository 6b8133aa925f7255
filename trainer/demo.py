"""The `make demo` job: SimCLR pretraining on the bundled digits, then a linear probe.

Pretrains the small CNN with ``configs/digits-demo.yaml``, then scores linear probes on frozen
features of the pretrained encoder, of the same encoder at its random initialisation, and of the
raw pixels, on the fixed digits test split, and prints the three top-1 figures side by side.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from trainer.checkpoint import load_checkpoint
from trainer.contracts.config import load_config
from trainer.data.datasets import build_dataset
from trainer.linear_classifier import extract_features, train_linear_probe
from trainer.log import configure_logging
from trainer.pretrain import pretrain
from trainer.simclr_recipe import build_model

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "digits-demo.yaml"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument(
        "--output-dir", default=None, help="keep checkpoints here (default: a temporary directory)"
    )
    args = parser.parse_args(argv)
    configure_logging()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    config = load_config(args.config)

    with tempfile.TemporaryDirectory(prefix="simclr-demo-") as scratch:
        output_dir = Path(args.output_dir or scratch)
        result = pretrain(config, output_dir)
        assert result.checkpoint is not None
        state = load_checkpoint(result.checkpoint)

    torch.manual_seed(config.seed)
    random_init = build_model(config).backbone  # the exact initialisation pretraining started from
    pretrained = build_model(config).backbone
    pretrained.load_state_dict(state["backbone"])

    train, test = build_dataset(config.dataset, "train"), build_dataset(config.dataset, "test")
    size = config.dataset.view_size
    rows = []
    for name, encoder in (
        ("SimCLR-pretrained encoder", pretrained),
        ("random-init encoder", random_init),
    ):
        probe = train_linear_probe(
            extract_features(encoder, train.images, size),
            train.labels,
            extract_features(encoder, test.images, size),
            test.labels,
        )
        rows.append((name, probe))
    raw = train_linear_probe(
        train.images.flatten(1).float(), train.labels, test.images.flatten(1).float(), test.labels
    )
    rows.append(("raw pixels", raw))

    print(
        f"\nLinear probe on frozen features: {config.dataset.name}, {raw.train_images} train / {raw.test_images} test images, "
        f"{config.backbone.name}, {result.steps} SimCLR steps (final loss {result.final_loss:.3f})"
    )
    print(f"{'features':<28}{'top-1':>8}{'top-5':>8}")
    for name, probe in rows:
        print(f"{name:<28}{probe.top1:>7.1f}%{probe.top5:>7.1f}%")


if __name__ == "__main__":
    main()
