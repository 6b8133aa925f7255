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

import torch
import torch.nn.functional as F

from trainer.contracts.config import KnnConfig
from trainer.contracts.spec import JobSpec
from trainer.linear_classifier import top_k_accuracy
from trainer.linear_probe import cached_features, load_encoder
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
