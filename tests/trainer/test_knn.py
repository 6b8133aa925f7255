"""The kNN evaluation job without Ray: the weighted vote against a direct computation, and a
checkpoint scored from the linear probe's feature cache through the worker entry."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.trainer.test_linear_probe import write_checkpoint
from trainer.contracts.config import KnnConfig
from trainer.contracts.spec import JobSpec
from trainer.knn import knn_scores, knn_worker
from trainer.linear_probe import feature_cache_dir
from trainer.session import LocalSession


def reference_scores(train, labels, test, classes, k, temperature):
    """Wu et al.'s weighted vote written out test image by test image, in float64."""
    train = [row / row.norm() for row in train.double()]
    out = torch.zeros(len(test), classes, dtype=torch.float64)
    for i, x in enumerate(test.double()):
        x = x / x.norm()
        similarities = sorted(((float(x @ f), int(c)) for f, c in zip(train, labels, strict=True)),
                              reverse=True)[:k]  # fmt: skip
        for similarity, label in similarities:
            out[i, label] += math.exp(similarity / temperature)
    return out


@pytest.mark.parametrize("k, temperature", [(1, 0.1), (5, 0.07), (200, 0.5)])
def test_the_vote_matches_a_direct_computation(k, temperature):
    generator = torch.Generator().manual_seed(0)
    train = torch.randn(60, 8, generator=generator)
    labels = torch.randint(0, 4, (60,), generator=generator)
    test = torch.randn(25, 8, generator=generator)
    # chunks of 7 rows, the last shorter
    scores = knn_scores(train, labels, test, 4, k, temperature, max_elements=7 * 60)
    expected = reference_scores(train, labels, test, 4, k, temperature)
    # the same votes up to each row's scale (the highest similarity's weight is 1 in ours)
    torch.testing.assert_close(
        scores.double() / scores.double().sum(1, keepdim=True),
        expected / expected.sum(1, keepdim=True),
        rtol=1e-4,
        atol=1e-7,
    )
    if k == 1:  # the nearest neighbour's label, nothing else
        assert (scores > 0).sum(1).eq(1).all()


def test_a_checkpoint_is_scored_through_the_worker_entry_and_reuses_the_feature_cache(tmp_path):
    write_checkpoint(tmp_path / "ckpt")
    config = KnnConfig.model_validate({
        "source_job_id": "job-x", "checkpoint": "step-00000003",
        "checkpoint_path": str(tmp_path / "ckpt"), "dataset": {"name": "digits", "loader_workers": 0},
        "k": 20,
    })  # fmt: skip
    spec = JobSpec(job_id="knn-1", kind="knn", config=config, storage_path=str(tmp_path / "runs"))
    knn_worker(spec, LocalSession(tmp_path / "out"))
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["protocol"] == "knn" and (result["k"], result["temperature"]) == (20, 0.1)
    assert (result["train_images"], result["test_images"]) == (1347, 450)
    # a random small CNN on digits: far above chance (10 %), below a trained encoder
    assert 50 < result["top1"] <= result["top5"] <= 100
    cache = feature_cache_dir(tmp_path / "runs", config)
    assert (cache / "train.pt").is_file() and (cache / "test.pt").is_file()
    (tmp_path / "out" / "result.json").unlink()
    knn_worker(spec, LocalSession(tmp_path / "out"))  # from the cache: the same number
    assert json.loads((tmp_path / "out" / "result.json").read_text())["top1"] == result["top1"]


def test_a_small_temperature_does_not_overflow():
    """exp(1 / 0.001) is far beyond float32: the votes must still rank the classes."""
    train = torch.tensor([[1.0, 0.0], [0.99, 0.14], [0.0, 1.0]])
    scores = knn_scores(train, torch.tensor([0, 0, 1]), torch.tensor([[1.0, 0.05]]), 2, 3, 0.001)
    assert torch.isfinite(scores).all() and scores.argmax(1).item() == 0
