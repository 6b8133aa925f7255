import logging

import pytest
import torch
from PIL import Image

from trainer.contracts.config import DatasetConfig
from trainer.data.datasets import (
    ImageFolderImages,
    UnreadableImage,
    build_dataset,
    load_digits_split,
    make_synthetic,
)
from trainer.data.loader import EpochBatches, collate_padded, iterate_batches


def test_digits_split_is_fixed_and_stratified():
    train, test = load_digits_split("train"), load_digits_split("test")
    assert len(train) == 1347 and len(test) == 450
    assert train.images.shape[1:] == (1, 8, 8) and train.images.dtype == torch.uint8
    assert train.images.max() == 255 and train.images.min() == 0
    assert set(test.labels.tolist()) == set(range(10))
    assert torch.equal(load_digits_split("test").images, test.images)
    with pytest.raises(ValueError, match="unknown split 'val'"):
        load_digits_split("val")


def test_synthetic_is_deterministic():
    a, b = make_synthetic(20, 4, 16, seed=3), make_synthetic(20, 4, 16, seed=3)
    assert torch.equal(a.images, b.images) and a.images.shape == (20, 3, 16, 16)
    assert a.labels.bincount().tolist() == [5, 5, 5, 5]


def write_tree(root, per_class=3, size=(24, 36)):
    for name, colour in (("cat", (200, 30, 30)), ("dog", (30, 200, 30))):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (size[1], size[0]), colour).save(root / name / f"{i}.jpg", quality=90)
    return root


def test_image_folder_reads_real_jpegs(tmp_path):
    dataset = ImageFolderImages(write_tree(tmp_path / "tree"), max_side=18)
    assert dataset.classes == ["cat", "dog"] and len(dataset) == 6
    image, label = dataset[4]
    assert label == 1 and image.dtype == torch.uint8 and image.shape == (3, 12, 18)
    assert image[1].float().mean() > 150  # the dog images are green


def test_image_folder_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        ImageFolderImages(tmp_path / "missing")
    (tmp_path / "flat").mkdir()
    with pytest.raises(FileNotFoundError, match="no class sub-directories"):
        ImageFolderImages(tmp_path / "flat")
    root = write_tree(tmp_path / "tree")
    (root / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty holds no images"):
        ImageFolderImages(root)


def test_unreadable_images_are_skipped_and_counted_or_raised(tmp_path, caplog):
    root = write_tree(tmp_path / "tree")
    (root / "cat" / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    skipping = ImageFolderImages(root, on_error="skip")
    index = next(i for i, (path, _) in enumerate(skipping.samples) if path.endswith("broken.jpg"))
    with caplog.at_level(logging.WARNING):
        item, _ = skipping[index]
    assert isinstance(item, UnreadableImage) and "broken.jpg" in caplog.text
    batch = collate_padded([skipping[index], skipping[0]])
    assert batch.skipped == 1 and batch.images.shape[0] == 1
    with pytest.raises(ValueError, match=r"broken\.jpg"):
        ImageFolderImages(root, on_error="raise")[index]


def test_collate_pads_to_a_canvas_and_keeps_sizes():
    items = [
        (torch.full((3, 4, 6), 9, dtype=torch.uint8), 0),
        (torch.full((3, 7, 2), 9, dtype=torch.uint8), 1),
    ]
    batch = collate_padded(items)
    assert batch.images.shape == (2, 3, 7, 6)
    assert batch.sizes.tolist() == [[4, 6], [7, 2]]
    assert batch.images[0, :, 4:].sum() == 0 and batch.images[1, :, :, 2:].sum() == 0
    assert batch.images[0, :, :4].eq(9).all() and batch.images[1, :, :, :2].eq(9).all()
    # the decoders' layout, which the augmentation's crop-by-crop resize reads without converting
    assert batch.images.is_contiguous(memory_format=torch.channels_last)


def test_missing_torchvision_sets_say_where_they_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        build_dataset(DatasetConfig(name="cifar10", root=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match="stl10_binary"):
        build_dataset(DatasetConfig(name="stl10", root=str(tmp_path)), "unlabeled")
    with pytest.raises(FileNotFoundError, match="train"):
        build_dataset(DatasetConfig(name="imagenet", root=str(tmp_path)))


def test_epoch_batches_shard_one_global_batch_across_ranks():
    ranks = [list(EpochBatches(103, 20, seed=1, epoch=2, rank=r, world_size=4)) for r in range(4)]
    single = list(EpochBatches(103, 20, seed=1, epoch=2))
    assert len(single) == 5 and all(len(r) == 5 for r in ranks)
    for step in range(5):
        assert sorted(index for r in ranks for index in r[step]) == sorted(single[step])
    assert list(EpochBatches(103, 20, seed=1, epoch=3)) != single
    assert list(EpochBatches(103, 20, seed=1, epoch=2, start_batch=3)) == single[3:]
    with pytest.raises(ValueError, match="not divisible"):
        EpochBatches(100, 10, seed=0, epoch=0, world_size=3)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        EpochBatches(5, 10, seed=0, epoch=0)


def test_image_folder_batches_through_a_dataloader(tmp_path):
    dataset = ImageFolderImages(write_tree(tmp_path / "tree", per_class=4))
    batches = list(
        iterate_batches(dataset, EpochBatches(len(dataset), 4, seed=0, epoch=0), loader_workers=2)
    )
    assert len(batches) == 2 and all(b.images.shape == (4, 3, 24, 36) for b in batches)
    assert sorted(torch.cat([b.labels for b in batches]).tolist()) == [0] * 4 + [1] * 4
