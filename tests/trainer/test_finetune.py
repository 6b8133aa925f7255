"""The fine-tuning evaluation job without Ray: the class-balanced and listed label subsets, the
paper's optimiser settings, and a run interrupted after an epoch that resumes to the result of an
uninterrupted one."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from tests.trainer.test_linear_probe import jpeg_tree, write_checkpoint
from trainer.checkpoint import latest_checkpoint, load_checkpoint
from trainer.contracts.config import DatasetConfig, FinetuneConfig
from trainer.contracts.spec import JobSpec
from trainer.data.datasets import build_dataset
from trainer.finetune import balanced_subset, finetune_worker, listed_subset
from trainer.session import LocalSession


def test_the_balanced_subset_takes_the_fraction_of_every_class_by_the_seed():
    labels = torch.tensor([0] * 100 + [1] * 50 + [2] * 7)
    subset = balanced_subset(labels, 0.1, seed=3)
    assert torch.bincount(labels[subset]).tolist() == [10, 5, 1]  # at least one of each class
    assert subset.equal(subset.sort().values) and len(subset.unique()) == len(subset)
    assert subset.equal(balanced_subset(labels, 0.1, seed=3))
    assert not subset.equal(balanced_subset(labels, 0.1, seed=4))


def test_a_listed_subset_matches_file_names_and_paths_and_refuses_the_rest(tmp_path):
    jpeg_tree(tmp_path / "in", {"train": ["a", "b"], "val": ["a", "b"]}, per_class=3)
    dataset = build_dataset(DatasetConfig(name="imagenet", root=str(tmp_path / "in")), "train")
    names = [sample.split("/")[-1] for sample, _ in dataset.samples]
    listing = tmp_path / "in" / "1percent.txt"
    listing.write_text(f"# the official lists hold file names\n{names[1]}\n\nb/{names[4]}\n")
    assert listed_subset(dataset, listing, [str(tmp_path)]).tolist() == [1, 4]
    listing.write_text(f"{names[0]}\nn000_missing.JPEG\n")
    with pytest.raises(ValueError, match=r"1 line\(s\) name no image .* line 2\)"):
        listed_subset(dataset, listing, None)
    with pytest.raises(PermissionError, match="label subset"):
        listed_subset(dataset, listing, [str(tmp_path / "elsewhere")])


def finetune_spec(tmp_path, **settings) -> JobSpec:
    write_checkpoint(tmp_path / "ckpt")
    config = FinetuneConfig.model_validate({
        "source_job_id": "job-x", "checkpoint": "step-00000003",
        "checkpoint_path": str(tmp_path / "ckpt"), "dataset": {"name": "digits", "loader_workers": 0},
        **settings,
    })  # fmt: skip
    return JobSpec(job_id="ft-1", kind="finetune", config=config, storage_path=str(tmp_path))


class StopAfter(LocalSession):
    """A session whose worker dies right after its ``reports``-th report (checkpoint written)."""

    def __init__(self, *args, reports: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.left = reports

    def report(self, metrics, state=None):
        super().report(metrics, state)
        self.left -= 1
        if self.left == 0:
            raise RuntimeError("worker lost")


def test_an_interrupted_run_resumes_at_its_epoch_to_the_uninterrupted_result(tmp_path):
    spec = finetune_spec(tmp_path, label_fraction=0.1, epochs=3, batch_size=64)
    finetune_worker(spec, LocalSession(tmp_path / "whole"))
    whole = json.loads((tmp_path / "whole" / "result.json").read_text())
    # 10 % of digits' 1,347 training images, class-balanced (each class has about 135)
    assert whole["protocol"] == "finetune" and 130 <= whole["train_images"] <= 140
    assert whole["label_fraction"] == pytest.approx(whole["train_images"] / 1347)
    assert (whole["epochs"], whole["test_images"]) == (3, 450)
    assert 10 < whole["top1"] <= whole["top5"] <= 100

    with pytest.raises(RuntimeError, match="worker lost"):
        finetune_worker(spec, StopAfter(tmp_path / "cut", reports=2))
    assert not (tmp_path / "cut" / "result.json").exists()
    shutil.rmtree(tmp_path / "ckpt")  # pruned by its pretraining run meanwhile
    finetune_worker(spec, LocalSession(tmp_path / "cut"))  # the restarted worker
    resumed = json.loads((tmp_path / "cut" / "result.json").read_text())
    assert (resumed["top1"], resumed["top5"]) == (whole["top1"], whole["top5"])
    # the same weights, bit for bit: momentum, data order and augmentation draws all resumed
    final = [load_checkpoint(latest_checkpoint(tmp_path / run / "checkpoints"))["model"]
             for run in ("whole", "cut")]  # fmt: skip
    for name, value in final[0].items():
        torch.testing.assert_close(final[1][name], value, rtol=0, atol=0, msg=name)
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "cut" / "metrics.jsonl").open()]
    assert epochs == [1, 2, 3]  # the third epoch ran once, after the resume


def test_the_whole_encoder_trains_with_the_papers_optimiser(tmp_path, monkeypatch):
    spec = finetune_spec(tmp_path, label_fraction=0.01, batch_size=8)
    # the paper's epochs, also for a 1 % that per-class rounding lifts a little
    assert [spec.config.resolved_epochs(f) for f in (0.01, 0.0104, 0.1)] == [60, 60, 30]
    made = []

    class Recorded(torch.optim.SGD):
        def __init__(self, params, **kwargs):
            params = list(params)
            made.append((params, kwargs))
            super().__init__(params, **kwargs)

    monkeypatch.setattr(torch.optim, "SGD", Recorded)
    finetune_worker(spec.model_copy(update={"config": spec.config.model_copy(update={"epochs": 1})}),
                    LocalSession(tmp_path / "out"))  # fmt: skip
    params, kwargs = made[0]
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    labelled = result["train_images"]
    assert 10 <= labelled <= 20  # about 1 % of 1,347, at least one per class
    # every labelled image in every epoch: ceil(n / 8) steps of an evened-out batch
    batch = labelled // math.ceil(labelled / 8)
    # every encoder weight and the new layer; lr 0.05 x B/256, Nesterov, no weight decay
    assert len(params) > 2 and all(p.requires_grad for p in params)
    assert kwargs == {"lr": 0.05 * batch / 256, "momentum": 0.9, "nesterov": True,
                      "weight_decay": 0.0}  # fmt: skip


def test_a_label_subset_is_for_image_folders_only():
    with pytest.raises(ValueError, match="label_subset lists image files"):
        FinetuneConfig.model_validate({
            "source_job_id": "j", "checkpoint": "c", "checkpoint_path": "/p",
            "dataset": {"name": "digits"}, "label_subset": "/data/1percent.txt",
        })  # fmt: skip
