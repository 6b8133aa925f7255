"""The linear-evaluation job without Ray: checkpoints of every shape load (and bad ones fail
clearly), the ImageNet layout and class lists on real JPEG files, fast mode's feature cache and its
agreement with scikit-learn, the augmented protocol, and sharded extraction over two ranks."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.distributed import run_on_ranks
from trainer.checkpoint import save_atomic
from trainer.contracts.config import DatasetConfig, LinearProbeConfig, SimCLRConfig
from trainer.data.datasets import build_dataset
from trainer.linear_probe import (
    CheckpointError,
    cached_features,
    feature_cache_dir,
    load_encoder,
    run_linear_probe,
)
from trainer.simclr_recipe import build_model

PRETRAIN = SimCLRConfig.model_validate({
    "dataset": {"name": "digits"}, "backbone": {"name": "small_cnn", "width": 8},
    "head": {"hidden_dim": 16, "out_dim": 8},
})  # fmt: skip


def write_checkpoint(path, prefix: str = "", dtype: torch.dtype = torch.float32):
    torch.manual_seed(0)
    model = build_model(PRETRAIN)
    backbone = {prefix + k: (v.to(dtype) if v.is_floating_point() else v)
                for k, v in model.backbone.state_dict().items()}  # fmt: skip
    save_atomic({"kind": "simclr", "config": PRETRAIN.model_dump(mode="json"), "backbone": backbone,
                 "head": model.head.state_dict(), "step": 3, "world_size": 4}, path / "state.pt")  # fmt: skip
    return model.backbone


def probe_config(checkpoint_dir, **settings) -> LinearProbeConfig:
    return LinearProbeConfig.model_validate({
        "source_job_id": "job-x", "checkpoint": "step-00000003", "checkpoint_path": str(checkpoint_dir),
        "dataset": {"name": "digits", "loader_workers": 0}, **settings,
    })  # fmt: skip


@pytest.mark.parametrize(("prefix", "dtype"), [("", torch.float32), ("module.", torch.bfloat16),
                                                ("module._orig_mod.", torch.float16)])  # fmt: skip
def test_checkpoints_load_with_any_prefix_and_precision(tmp_path, prefix, dtype):
    original = write_checkpoint(tmp_path, prefix, dtype)
    encoder, config = load_encoder(tmp_path)
    assert config.backbone.name == "small_cnn" and not encoder.training
    assert all(not p.requires_grad and p.dtype == torch.float32 for p in encoder.parameters())
    for name, value in original.state_dict().items():
        assert torch.allclose(encoder.state_dict()[name].float(), value.to(dtype).float())


def test_missing_corrupt_and_foreign_checkpoints_fail_clearly(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_encoder(tmp_path / "nowhere")
    (tmp_path / "state.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_encoder(tmp_path)
    torch.save({"model": {}}, tmp_path / "state.pt")
    with pytest.raises(CheckpointError, match="not a SimCLR pretraining checkpoint"):
        load_encoder(tmp_path)


def jpeg_tree(root, splits: dict[str, list[str]], per_class: int = 2):
    rng = np.random.default_rng(0)
    for split, classes in splits.items():
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 255, (40 + 8 * i, 56, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{name}_{i}.JPEG", quality=90)


def test_imagenet_layout_class_lists_and_mismatches_on_real_jpegs(tmp_path):
    wnids = ["n01440764", "n01443537", "n01484850"]
    jpeg_tree(tmp_path / "in", {"train": wnids, "val": wnids})
    config = DatasetConfig(name="imagenet", root=str(tmp_path / "in"), loader_workers=0)
    train, val = build_dataset(config, "train"), build_dataset(config, "val")
    assert train.classes == wnids and len(train) == 6 and len(val) == 6
    image, label = train[0]
    assert image.dtype == torch.uint8 and image.shape[0] == 3 and label == 0

    class_list = tmp_path / "imagenet-2.txt"
    class_list.write_text("# a subset, in this order\nn01484850\nn01440764\n")
    subset = build_dataset(config.model_copy(update={"class_list": str(class_list)}), "val")
    assert subset.classes == ["n01484850", "n01440764"] and len(subset) == 4
    assert subset[0][1] == 0 and "n01484850" in subset.samples[0][0]

    class_list.write_text("n01440764\nn99999999\n")
    with pytest.raises(FileNotFoundError, match=r"1 of 2 class folders missing .*line 2 of"):
        build_dataset(config.model_copy(update={"class_list": str(class_list)}), "train")

    jpeg_tree(tmp_path / "bad", {"train": wnids, "val": [*wnids[:2], "n02000000"]})
    bad = DatasetConfig(name="imagenet", root=str(tmp_path / "bad"))
    with pytest.raises(ValueError, match="only in train: n01484850; only in val: n02000000"):
        build_dataset(bad, "train")
    (tmp_path / "noval" / "train" / "n01440764").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no val/ folder"):
        build_dataset(DatasetConfig(name="imagenet", root=str(tmp_path / "noval")), "val")


def test_fast_mode_matches_scikit_learn_on_the_cached_features_and_reuses_them(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    write_checkpoint(tmp_path / "ckpt")
    config = probe_config(tmp_path / "ckpt")
    result = run_linear_probe(config, tmp_path / "storage")
    assert result.mode == "fast" and (result.train_images, result.test_images) == (1347, 450)
    cache = feature_cache_dir(tmp_path / "storage", config)
    train, test = (torch.load(cache / f"{split}.pt") for split in ("train", "test"))
    scaler = StandardScaler().fit(train["features"].numpy())
    reference = LogisticRegression(max_iter=5000).fit(
        scaler.transform(train["features"].numpy()), train["labels"].numpy()
    )
    sklearn_top1 = 100 * reference.score(
        scaler.transform(test["features"].numpy()), test["labels"].numpy()
    )
    assert abs(result.top1 - sklearn_top1) <= 1.0, (result.top1, sklearn_top1)

    mtime = (cache / "train.pt").stat().st_mtime_ns
    again = run_linear_probe(config, tmp_path / "storage")
    assert (cache / "train.pt").stat().st_mtime_ns == mtime  # served from the cache
    assert again.top1 == result.top1


def test_augmented_mode_runs_the_protocol(tmp_path):
    write_checkpoint(tmp_path / "ckpt")
    config = probe_config(tmp_path / "ckpt", mode="augmented", epochs=3, batch_size=256)
    result = run_linear_probe(config, tmp_path / "storage")
    assert result.mode == "augmented" and result.epochs == 3
    assert result.test_images == 450 and 10.0 < result.top1 <= 100.0
    assert not (tmp_path / "storage").exists()  # nothing cached in this mode


def _extract_on_rank(rank: int, world: int):
    directory = Path(os.environ["SIMCLR_TEST_DIR"])
    encoder, _ = load_encoder(directory / "ckpt")
    features = cached_features(encoder, probe_config(directory / "ckpt"), directory / f"storage{world}",
                               rank, world, torch.device("cpu"))  # fmt: skip
    return (
        None if features is None else {k: (v[0].clone(), v[1].clone()) for k, v in features.items()}
    )


def test_sharded_extraction_over_two_ranks_equals_one_rank(tmp_path, monkeypatch):
    write_checkpoint(tmp_path / "ckpt")
    monkeypatch.setenv("SIMCLR_TEST_DIR", str(tmp_path))  # the spawned ranks inherit it
    single = _extract_on_rank(0, 1)
    two = run_on_ranks(_extract_on_rank, world=2)
    assert two[1] is None
    for split in ("train", "test"):
        assert torch.allclose(two[0][split][0], single[split][0], atol=1e-5)
        assert torch.equal(two[0][split][1], single[split][1])
