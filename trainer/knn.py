"""The kNN evaluation job (kind ``knn``): score a pretraining checkpoint with the weighted
k-nearest-neighbour classifier the field reports beside the linear probe (Wu et al. 2018,
"Unsupervised Feature Learning via Non-Parametric Instance Discrimination"; solo-learn's and
lightly's ``knn_predict``).

Features are the frozen encoder's on the centre view (no projection head), the same ones the
linear probe extracts, read from or written to its feature cache (``trainer.linear_probe``). With
every feature L2-normalised, test image x is scored for class c by

    score_c(x) = sum over the k training features f_i most cosine-similar to x with label c of
                 exp(<x, f_i> / temperature)

and its prediction is the class of the highest score (top-5: the five highest). Nothing is
trained, so the result depends only on the checkpoint, the data, ``k`` and ``temperature``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from trainer.contracts.config import DatasetConfig, KnnConfig, SimCLRConfig
from trainer.contracts.spec import JobSpec
from trainer.data.datasets import build_dataset
from trainer.linear_classifier import top_k_accuracy
from trainer.linear_probe import cached_features, center_views, load_encoder, shard_batches
from trainer.session import TrainingSession

log = logging.getLogger(__name__)


@torch.no_grad()
def knn_scores(
    train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
    num_classes: int, k: int = 200, temperature: float = 0.1,
    device: torch.device | str = "cpu", max_elements: int = 1 << 26,
) -> torch.Tensor:  # fmt: skip
    """(N_test, num_classes) weighted votes of each test feature's ``k`` nearest training
    features (all of them when there are fewer), on ``device``, as many test rows at a time as
    keep their similarity matrix under ``max_elements`` values. Each row's votes are scaled by
    exp(-(its highest similarity) / temperature): the classes rank as with the plain votes, and
    no vote overflows at a small temperature."""
    train = F.normalize(train_features.to(device).float(), dim=1)
    labels = train_labels.to(device)
    k = min(k, train.shape[0])
    chunk = max(1, max_elements // train.shape[0])
    scores = []
    for rows in test_features.split(chunk):
        rows = F.normalize(rows.to(device).float(), dim=1)
        similarity, index = (rows @ train.T).topk(k, dim=1)  # sorted: column 0 is the highest
        weights = ((similarity - similarity[:, :1]) / temperature).exp()
        votes = torch.zeros(rows.shape[0], num_classes, dtype=weights.dtype, device=device)
        votes.scatter_add_(1, labels[index], weights)
        scores.append(votes.cpu())
    return torch.cat(scores)


def run_knn(config: KnnConfig, storage: str, session: TrainingSession,
            roots: list[str] | None = None) -> dict[str, float | int | str] | None:  # fmt: skip
    """The result on rank 0 (top-1 and top-5 in percent, the settings, the image counts), None
    on the other ranks, which help extract features that are not cached yet."""
    start = time.perf_counter()
    encoder, _ = load_encoder(config.checkpoint_path, session.device)
    features = cached_features(
        encoder, config, storage, session.rank, session.world_size, session.device, roots
    )
    if features is None:
        return None
    (train_x, train_y), (test_x, test_y) = features["train"], features["test"]
    classes = int(max(train_y.max(), test_y.max())) + 1
    scores = knn_scores(
        train_x, train_y, test_x, classes, config.k, config.temperature, session.device
    )
    top1, top5 = top_k_accuracy(scores, test_y)
    k = min(config.k, len(train_y))  # the neighbours that did vote
    return {"protocol": "knn", "top1": 100 * top1, "top5": 100 * top5, "k": k,
            "temperature": config.temperature, "train_images": len(train_y),
            "test_images": len(test_y), "seconds": time.perf_counter() - start}  # fmt: skip


def knn_worker(spec: JobSpec, session: TrainingSession) -> None:
    """The ``knn`` kind's worker entry: ``run_knn`` on the session; rank 0 reports the result."""
    result = run_knn(spec.config, spec.storage_path, session, spec.data_roots)
    if result is not None:
        log.info("kNN evaluation of %s: %s", spec.config.checkpoint, result)
        session.report_result(result)


class KnnMonitor:
    """The online kNN monitor of a SimCLR run (``config.monitor``): the top-1 (percent) of
    ``knn_scores`` with the current encoder, ``train_images`` labelled training images as the
    neighbours and ``test_images`` images of the held-out split as the queries. Both are drawn
    once from the run's seed and kept as uint8 centre views (about 3 x 32 x 32 bytes each on
    CIFAR-10), so a score costs two no-grad forward passes and no reading. Rank 0 only; it does
    not touch the run's random state, so a monitored run trains as an unmonitored one."""

    def __init__(self, config: SimCLRConfig, device: torch.device,
                 roots: Sequence[str] | None = None) -> None:  # fmt: skip
        monitor = config.monitor
        self.k, self.temperature = monitor.k, monitor.temperature
        self.device = device
        data = monitor.dataset or config.dataset
        generator = torch.Generator().manual_seed(config.seed)
        self.bank, self.bank_labels = self._views(
            data, build_dataset(data, "train", roots), monitor.train_images, generator
        )
        self.queries, self.query_labels = self._views(
            data, build_dataset(data, "test", roots), monitor.test_images, generator
        )
        if min(self.bank_labels.min(), self.query_labels.min()) < 0:
            raise ValueError(f"monitor: the images of {data.name} are not labelled")
        self.num_classes = int(max(self.bank_labels.max(), self.query_labels.max())) + 1

    @staticmethod
    def _views(data: DatasetConfig, dataset, count: int, generator: torch.Generator):
        chosen = torch.randperm(len(dataset), generator=generator)[:count].sort().values.tolist()
        views, labels = [], []
        for images, sizes, batch_labels in shard_batches(dataset, chosen, 256, data.loader_workers):
            views.append((center_views(images, sizes, data) * 255).round().to(torch.uint8))
            labels.append(batch_labels)
        return torch.cat(views), torch.cat(labels)

    @torch.no_grad()
    def _features(self, encoder: nn.Module, views: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            encoder(batch.to(self.device).float() / 255).float() for batch in views.split(256)
        ])  # fmt: skip

    def top1(self, encoder: nn.Module) -> float:
        """kNN top-1 (percent) of ``encoder``, run in eval mode (batch norms use their running
        statistics) and returned to the mode it was in."""
        training = encoder.training
        encoder.eval()
        try:
            bank = self._features(encoder, self.bank)
            queries = self._features(encoder, self.queries)
        finally:
            encoder.train(training)
        scores = knn_scores(bank, self.bank_labels, queries, self.num_classes, self.k,
                            self.temperature, self.device)  # fmt: skip
        return 100 * top_k_accuracy(scores, self.query_labels)[0]
