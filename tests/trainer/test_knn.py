"""The kNN evaluation job without Ray: the weighted vote against a direct computation, and a
checkpoint scored from the linear probe's feature cache through the worker entry; the online
monitor of a SimCLR run against the same direct computation."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.trainer.test_linear_probe import write_checkpoint
from tests.trainer.test_pretrain import small_config
from trainer import simclr_loop
from trainer.contracts.config import KnnConfig, MonitorConfig, SimCLRConfig
from trainer.contracts.spec import JobSpec
from trainer.data.datasets import load_digits_split
from trainer.knn import KnnMonitor, knn_scores, knn_worker
from trainer.linear_classifier import center_view
from trainer.linear_probe import feature_cache_dir
from trainer.pretrain import pretrain
from trainer.session import LocalSession
from trainer.simclr_recipe import build_model


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


def test_the_monitor_scores_its_held_out_images_as_a_direct_computation():
    config = SimCLRConfig.model_validate({
        "dataset": {"name": "digits"}, "backbone": {"name": "small_cnn", "width": 8},
        "monitor": {"every_steps": 5, "train_images": 300, "test_images": 100, "k": 10},
    })  # fmt: skip
    monitor = KnnMonitor(config, torch.device("cpu"))
    torch.manual_seed(123)  # another global random state: the same images, drawn by the run's seed
    again = KnnMonitor(config, torch.device("cpu"))
    assert again.bank.equal(monitor.bank) and again.queries.equal(monitor.queries)
    train, test = load_digits_split("train"), load_digits_split("test")
    # the views of distinct images of each split, drawn by the seed, with their own labels
    assert monitor.bank.shape == (300, 3, 16, 16) and monitor.queries.shape == (100, 3, 16, 16)
    assert len({tuple(v.flatten().tolist()) for v in monitor.bank}) == 300
    expected_bank = (center_view(train.images, 16) * 255).round().to(torch.uint8)
    matches = (monitor.bank[:, None] == expected_bank[None]).flatten(2).all(2)
    assert matches.any(1).all()
    assert monitor.bank_labels.equal(train.labels[matches.int().argmax(1)])
    assert len(test) == 450 and monitor.num_classes == 10
    assert [config.monitor.due(s) for s in (4, 5, 10, 11)] == [False, True, True, False]

    torch.manual_seed(0)
    encoder = build_model(config).backbone.train()
    rng = torch.get_rng_state()
    top1 = monitor.top1(encoder)
    assert encoder.training and torch.get_rng_state().equal(rng)  # mode and random state kept
    with torch.no_grad():
        encoder.eval()
        bank, queries = encoder(monitor.bank / 255), encoder(monitor.queries / 255)
    scores = reference_scores(bank, monitor.bank_labels, queries, 10, 10, 0.1)
    expected = 100 * (scores.argmax(1) == monitor.query_labels).double().mean().item()
    assert top1 == pytest.approx(expected, abs=1e-4) and 20 < top1 < 100  # one image: 1.0


def test_a_monitored_run_reports_knn_top1_and_trains_as_an_unmonitored_one(tmp_path):
    config = small_config(epochs=4, log_every_steps=4)  # 12 steps, 3 an epoch
    monitored = config.model_copy(update={"monitor": MonitorConfig(
        every_steps=5, train_images=64, test_images=32, k=5)})  # fmt: skip
    plain = pretrain(config, tmp_path / "plain", progress=False)
    watched = pretrain(monitored, tmp_path / "watched", progress=False)
    assert watched.final_loss == plain.final_loss
    records = [json.loads(line) for line in (tmp_path / "watched" / "metrics.jsonl").open()]
    scored = {r["step"]: r["knn_top1"] for r in records if "knn_top1" in r}
    assert sorted(scored) == [5, 10] and all(0 <= v <= 100 for v in scored.values())
    # logged every 4 steps, checkpointed every epoch, and steps 5 and 10 for the monitor alone
    assert [r["step"] for r in records] == [3, 4, 5, 6, 8, 9, 10, 12]


def test_the_monitor_cannot_read_packed_shards_without_a_data_set():
    packed = {"name": "packed", "root": "/data/shards", "loader": "ray_data"}
    with pytest.raises(ValueError, match="monitor: packed shards"):
        SimCLRConfig.model_validate({"dataset": packed, "monitor": {"every_steps": 100}})
    SimCLRConfig.model_validate({"dataset": packed, "monitor": {
        "every_steps": 100, "dataset": {"name": "imagefolder", "root": "/data/images"}}})  # fmt: skip


def test_a_monitor_that_cannot_start_or_fails_leaves_the_run_going(tmp_path, monkeypatch):
    config = small_config(epochs=2, monitor=MonitorConfig(every_steps=2, train_images=32,
                                                          test_images=16, k=5))  # fmt: skip

    def unreadable(*args, **kwargs):
        raise FileNotFoundError("no val/ folder")

    monkeypatch.setattr(simclr_loop, "KnnMonitor", unreadable)
    assert pretrain(config, tmp_path / "a", progress=False).steps == 6
    monkeypatch.undo()
    monkeypatch.setattr(KnnMonitor, "top1", lambda self, encoder: 1 / 0)
    assert pretrain(config, tmp_path / "b", progress=False).steps == 6
    for run in ("a", "b"):
        records = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").open()]
        assert records and not any("knn_top1" in r for r in records)


def test_the_monitors_images_are_bounded():
    with pytest.raises(ValueError, match=r"monitor: 200000 views of 224 px are 28\.0 GiB"):
        SimCLRConfig.model_validate({"dataset": {"name": "imagenet", "root": "/data"}, "monitor": {
            "every_steps": 10, "train_images": 100_000, "test_images": 100_000}})  # fmt: skip
    SimCLRConfig.model_validate({"dataset": {"name": "imagenet", "root": "/data"},
                                 "monitor": {"every_steps": 10}})  # fmt: skip
