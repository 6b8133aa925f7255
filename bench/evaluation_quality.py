"""Every evaluation protocol on one pretrained encoder: linear, kNN and fine-tuning on 10 % of the
labels, for ours, the random-init encoder and raw pixels, in one table.

    python -m bench.evaluation_quality --budget 900
    python -m bench.evaluation_quality --data digits --budget 120

Pretraining is the time-to-accuracy benchmark's small-CNN run (``bench.time_to_accuracy``: its
data split, its recipe with the settings of its recorded 900 s run, ``run_ours`` for ``--budget``
seconds on this machine's cores). Then, on the frozen centre
view features of its 8,000 pretraining images and its 2,000 test images (CIFAR-10 JPEGs of
../shared/data; or digits' 1,347 / 450):
- linear: ``trainer.linear_classifier.train_linear_probe`` (90 epochs, the fast mode of the
  service's linear evaluation);
- kNN: ``trainer.knn.knn_scores`` (k 200, temperature 0.1), and lightly's ``knn_predict`` on the
  same features when lightly is installed: the share of identical predictions is printed;
- fine-tuning: ``trainer.finetune.fine_tune`` on a class-balanced 10 % of the pretraining images'
  labels, the paper's settings (30 epochs, Nesterov, lr 0.05 x B/256, batch 256), one process.
Raw pixels get linear and kNN (nothing to fine-tune). Figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from bench.common import machine_summary
from bench.time_to_accuracy import load_split, recipe, run_ours
from trainer.contracts.config import FinetuneConfig
from trainer.data.datasets import InMemoryImages
from trainer.finetune import balanced_subset, fine_tune
from trainer.knn import knn_scores
from trainer.linear_classifier import extract_features, top_k_accuracy, train_linear_probe
from trainer.session import LocalSession
from trainer.simclr_recipe import build_model


def knn_top(train_x, train_y, test_x, test_y, classes: int) -> tuple[float, float, torch.Tensor]:
    scores = knn_scores(train_x, train_y, test_x, classes, k=200, temperature=0.1)
    top1, top5 = top_k_accuracy(scores, test_y)
    return 100 * top1, 100 * top5, scores.argmax(1)


def lightly_agreement(train_x, train_y, test_x, classes: int, ours: torch.Tensor) -> str:
    """The share of test images on which lightly's ``knn_predict`` predicts our class."""
    try:
        from lightly.utils.benchmarking import knn_predict
    except ImportError:
        return "lightly not installed"
    bank = torch.nn.functional.normalize(train_x, dim=1).T
    theirs = knn_predict(torch.nn.functional.normalize(test_x, dim=1), bank, train_y, classes,
                         knn_k=200, knn_t=0.1)[:, 0]  # fmt: skip
    return f"{100 * (theirs == ours).float().mean().item():.2f} % identical"


def finetuned(encoder, train: InMemoryImages, test: InMemoryImages, size: int, scratch: Path):
    config = FinetuneConfig.model_validate({
        "source_job_id": "bench", "checkpoint": "bench", "checkpoint_path": "-",
        "dataset": {"name": "synthetic", "image_size": size, "loader_workers": 0},
        "label_fraction": 0.1,
    })  # fmt: skip
    index = balanced_subset(train.labels, 0.1, config.seed)
    labelled = InMemoryImages(train.images[index], train.labels[index], train.classes)
    return fine_tune(encoder, labelled, train, test, config, LocalSession(scratch))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--data", choices=["cifar10", "digits"], default="cifar10")
    parser.add_argument("--budget", type=float, default=900.0, help="seconds of pretraining")
    args = parser.parse_args()
    # the recorded time-to-accuracy run's settings (docs/benchmarks.md, "Small CNN, 900 s"):
    # small CNN of width 32, batch 256, square-root lr 1.2, temperature 0.2, channels-last
    options = argparse.Namespace(backbone="small_cnn", width=32, head_dim=512, lr=None,
                                 lr_scaling="sqrt", weight_decay=1e-6, warmup_epochs=5,
                                 compile=False, batch=256, temperature=0.2, channels_last=True)  # fmt: skip
    print(f"# {machine_summary()}", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        train, test, size = load_split(args.data, scratch)
        config = recipe(options, size)
        classes = int(train.labels.max()) + 1
        torch.manual_seed(config.seed)
        encoders = {"random-init encoder": build_model(config).backbone}
        timeline, steps, wall, _ = run_ours(config, train, args.budget, 1, scratch)
        ours = build_model(config).backbone
        ours.load_state_dict(timeline.points[-1][2])
        encoders = {f"ours ({steps} steps, {wall:.0f} s)": ours, **encoders}
        print(f"# {args.data}: {len(train)} pretraining / labelled-pool images, {len(test)} "
              f"test; small CNN pretrained {steps} steps in {wall:.0f} s", flush=True)  # fmt: skip

        rows = []
        features = {
            name: (extract_features(encoder, train.images, size),
                   extract_features(encoder, test.images, size))
            for name, encoder in encoders.items()
        }  # fmt: skip
        features["raw pixels"] = (train.images.flatten(1).float(), test.images.flatten(1).float())
        for name, (train_x, test_x) in features.items():
            linear = train_linear_probe(train_x, train.labels, test_x, test.labels)
            top1, top5, predicted = knn_top(train_x, train.labels, test_x, test.labels, classes)
            agreement = lightly_agreement(train_x, train.labels, test_x, classes, predicted)
            tuned = None
            if name in encoders:
                start = time.perf_counter()
                tuned = finetuned(encoders[name], train, test, size, scratch / name[:4])
                print(f"{name}: fine-tuned in {time.perf_counter() - start:.0f} s", flush=True)
            rows.append((name, linear, (top1, top5), tuned, agreement))

    print("\n| encoder | linear top-1 / top-5 | kNN top-1 / top-5 | 10 % fine-tune top-1 / top-5 |"
          " kNN vs lightly's knn_predict |\n|---|---|---|---|---|")  # fmt: skip
    for name, linear, knn, tuned, agreement in rows:
        tuned_cell = f"{tuned['top1']:.2f} / {tuned['top5']:.2f}" if tuned else "-"
        print(f"| {name} | {linear.top1:.2f} / {linear.top5:.2f} | {knn[0]:.2f} / {knn[1]:.2f} | "
              f"{tuned_cell} | {agreement} |")  # fmt: skip


if __name__ == "__main__":
    main()
