"""Image sources for every job kind. Each yields uint8 images; augmentation happens later, in batch,
on the training device.

- ``InMemoryImages``: a uint8 tensor (N, C, H, W) with labels: digits, CIFAR, STL-10, synthetic.
- ``ImageFolderImages``: the ImageFolder layout (``<root>/<class>/<image>``; ImageNet is
  ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG``), decoded lazily with libjpeg-turbo; a class
  list (ImageNet-100, any subset) selects and orders the classes.

``build_dataset(config, split, roots)`` picks one from a ``DatasetConfig``. Nothing is downloaded: a
missing file is an error that names what is missing and where it was looked for. With ``roots`` (the
data roots of the job spec) every folder and file read must resolve under one of them
(``trainer.data.confine``); None: unconfined, for runs started by hand.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch.utils.data import Dataset

from trainer.contracts.config import DatasetConfig
from trainer.data.confine import confined, read_class_list
from trainer.data.folders import DECODE_ERRORS, class_folders, decode_rgb, list_images

log = logging.getLogger(__name__)

DIGITS_TEST_FRACTION = 0.25
DIGITS_SPLIT_SEED = 0


class InMemoryImages(Dataset):
    """A labelled uint8 image tensor. ``images`` (N, C, H, W), ``labels`` (N,) long (-1: unlabelled)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: list[str]):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                f"images must be a uint8 (N, C, H, W) tensor, got {images.dtype} {tuple(images.shape)}"
            )
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must be ({images.shape[0]},), got {tuple(labels.shape)}")
        self.images = images
        self.labels = labels.long()
        self.classes = classes

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


@dataclass
class UnreadableImage:
    """What ``ImageFolderImages`` returns in place of an image it skipped."""

    path: str
    reason: str


class ImageFolderImages(Dataset):
    """``<root>/<class>/<file>`` decoded to uint8 RGB (3, h, w) with the longer side at most ``max_side``.

    Decoding is ``trainer.data.folders.decode_rgb`` (Pillow, libjpeg-turbo, reduced-scale DCT
    decoding of large JPEGs).

    ``on_error="skip"`` returns an ``UnreadableImage`` for a file that does not decode (the collate
    function drops it and counts it, and a warning names it); ``"raise"`` raises ``ValueError``.
    """

    def __init__(
        self,
        root: str | Path,
        max_side: int = 384,
        on_error: str = "skip",
        classes: list[str] | None = None,
        roots: Sequence[str] | None = None,
    ):
        """``classes``: the class folders to read, in label order (default: all, sorted);
        ``roots``: the root, every class folder and every image must resolve under one of these
        (None: unconfined)."""
        root = Path(root)
        self.classes = classes or class_folders(root, roots)
        self.samples = list_images(root, self.classes, roots)
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.root = root
        self.max_side = max_side
        self.on_error = on_error
        self.labels = torch.tensor([label for _, label in self.samples])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | UnreadableImage, int]:
        path, label = self.samples[index]
        try:
            pixels = torch.from_numpy(decode_rgb(path, self.max_side)).permute(2, 0, 1)
        except DECODE_ERRORS as error:
            if self.on_error == "raise":
                raise ValueError(f"cannot decode image {path}: {error}") from error
            log.warning("skipping unreadable image %s: %s", path, error)
            return UnreadableImage(path, str(error)), label
        return pixels, label


def split_folders(config: DatasetConfig, roots: Sequence[str] | None = None) -> dict[str, Path]:
    """``train`` and ``val`` folders of an ImageNet-layout root, checked: both exist (under
    ``roots``: None, unconfined) and hold the same classes (or every class of the class list)."""
    assert config.root is not None
    root = Path(config.root)
    folders = {"train": root / "train", "val": root / "val"}
    if roots is not None:
        folders = {split: confined(f, roots, f"{split}/ folder") for split, f in folders.items()}
    for split, folder in folders.items():
        if not folder.is_dir():
            raise FileNotFoundError(f"{config.name} root {root} has no {split}/ folder ({folder})")
    if config.class_list is None:
        train, val = (set(class_folders(folder)) for folder in folders.values())
        if train != val:
            only = {"train": sorted(train - val), "val": sorted(val - train)}
            raise ValueError(
                f"train and val of {root} hold different classes: "
                + "; ".join(f"only in {k}: {', '.join(v[:10])}" for k, v in only.items() if v)
            )
    return folders


def load_digits_split(split: str) -> InMemoryImages:
    """scikit-learn's 1,797 8x8 digits, 0..16 scaled to 0..255, in a fixed stratified split.

    ``train`` holds 1,347 images and ``test`` 450 (25 %, ``random_state=0``), every class in both.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    indices = torch.arange(len(digits.target)).numpy()
    train_idx, test_idx = train_test_split(
        indices,
        test_size=DIGITS_TEST_FRACTION,
        stratify=digits.target,
        random_state=DIGITS_SPLIT_SEED,
    )
    chosen = {"train": train_idx, "test": test_idx}[_check_split(split, ("train", "test"))]
    pixels = torch.from_numpy(digits.images[chosen]).float() * (255.0 / 16.0)
    images = pixels.round().clamp(0, 255).to(torch.uint8).unsqueeze(1)
    return InMemoryImages(
        images, torch.from_numpy(digits.target[chosen]), [str(d) for d in range(10)]
    )


def make_synthetic(
    num_images: int, num_classes: int, size: int = 32, seed: int = 0
) -> InMemoryImages:
    """Seeded RGB images whose class sets a colour and a stripe orientation, plus noise: for tests."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_images) % num_classes
    colours = torch.rand(num_classes, 3, 1, 1, generator=generator)
    angles = torch.arange(num_classes) * torch.pi / num_classes
    coords = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    stripes = torch.sin(
        6
        * (
            xx[None] * torch.cos(angles)[:, None, None]
            + yy[None] * torch.sin(angles)[:, None, None]
        )
    )
    base = colours * (0.6 + 0.4 * stripes[:, None])  # (K, 3, S, S)
    noise = 0.15 * torch.randn(num_images, 3, size, size, generator=generator)
    images = ((base[labels] + noise).clamp(0, 1) * 255).round().to(torch.uint8)
    return InMemoryImages(images, labels, [f"class{k}" for k in range(num_classes)])


def _confine_torchvision_files(
    root: str | Path, dataset_cls: type, roots: Sequence[str] | None
) -> Path:
    """The real path of ``root`` after checking that it and every file torchvision may read of
    ``dataset_cls`` there resolve under ``roots`` (None: unconfined, ``root`` returned as is)."""
    if roots is None:
        return Path(root)
    real = confined(root, roots, "dataset root")
    folder = confined(real / dataset_cls.base_folder, roots, "dataset folder")
    names = [name for name, _ in [*dataset_cls.train_list, *dataset_cls.test_list]]
    names += [getattr(dataset_cls, "meta", {}).get("filename")]
    names += [getattr(dataset_cls, "class_names_file", None)]
    names += [getattr(dataset_cls, "folds_list_file", None)]
    for name in filter(None, names):
        confined(folder / name, roots, "dataset file")
    return real


def load_cifar(
    root: str | Path, split: str, classes: int = 10, roots: Sequence[str] | None = None
) -> InMemoryImages:
    """CIFAR-10/100 from torchvision's python-pickle layout under ``root`` (never downloaded),
    whose files must resolve under ``roots`` (None: unconfined)."""
    dataset_cls = torchvision.datasets.CIFAR10 if classes == 10 else torchvision.datasets.CIFAR100
    train = _check_split(split, ("train", "test")) == "train"
    root = _confine_torchvision_files(root, dataset_cls, roots)
    try:
        dataset = dataset_cls(str(root), train=train, download=False)
    except RuntimeError:
        folder = Path(root) / dataset_cls.base_folder
        raise FileNotFoundError(
            f"CIFAR-{classes} not found: expected the python version in {folder} "
            f"({', '.join(name for name, _ in (dataset_cls.train_list if train else dataset_cls.test_list))}); "
            "nothing is downloaded"
        ) from None
    images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
    return InMemoryImages(images, torch.tensor(dataset.targets), list(dataset.classes))


def load_stl10(root: str | Path, split: str, roots: Sequence[str] | None = None) -> InMemoryImages:
    """STL-10 from torchvision's binary layout under ``root`` (whose files must resolve under
    ``roots``; None: unconfined); ``unlabeled`` images have label -1."""
    split = _check_split(split, ("train", "test", "unlabeled", "train+unlabeled"))
    root = _confine_torchvision_files(root, torchvision.datasets.STL10, roots)
    try:
        dataset = torchvision.datasets.STL10(str(root), split=split, download=False)
    except RuntimeError:
        folder = Path(root) / torchvision.datasets.STL10.base_folder
        raise FileNotFoundError(
            f"STL-10 not found: expected the binary files in {folder}; nothing is downloaded"
        ) from None
    return InMemoryImages(
        torch.from_numpy(dataset.data), torch.from_numpy(dataset.labels), list(dataset.classes)
    )


def confine_dataset(config: DatasetConfig, roots: Sequence[str] | None) -> DatasetConfig:
    """``config`` with its ``root`` and ``class_list`` replaced by their real paths, which must lie
    under ``roots`` (else ``PermissionError``); ``config`` itself when ``roots`` is None."""
    if roots is None:
        return config
    update = {
        field: str(confined(value, roots, f"dataset {field}"))
        for field in ("root", "class_list")
        if (value := getattr(config, field))
    }
    return config.model_copy(update=update)


def build_dataset(
    config: DatasetConfig, split: str = "train", roots: Sequence[str] | None = None
) -> InMemoryImages | ImageFolderImages:
    """The images a ``DatasetConfig`` names, for ``split`` (train, test/val, or STL-10's splits).

    ``roots``: the directories the job may read (the job spec's ``data_roots``); the root, the
    class list and every folder and file read must resolve under one of them, else
    ``PermissionError``. None: unconfined (runs started by hand)."""
    name = config.name
    if name == "digits":
        return load_digits_split(split)
    if name == "synthetic":
        seed = {"train": 0, "test": 1}[_check_split(split, ("train", "test"))]
        return make_synthetic(
            config.synthetic_images, config.synthetic_classes, config.view_size, seed
        )
    assert config.root is not None  # DatasetConfig requires a root for every other set
    config = confine_dataset(config, roots)
    if name == "packed":
        raise ValueError(
            f"packed shards ({config.root}) are streamed by the ray_data loader of a Ray job; "
            "point this job at the image folder instead"
        )
    if name in ("cifar10", "cifar100"):
        return load_cifar(config.root, split, int(name.removeprefix("cifar")), roots)
    if name == "stl10":
        return load_stl10(config.root, split, roots)
    classes = read_class_list(config.class_list, roots) if config.class_list else None
    split = _check_split(split, ("train", "val", "test"))
    folder = Path(config.root)
    imagenet_layout = (folder / "train").is_dir() and (folder / "val").is_dir()
    if name == "imagenet" or imagenet_layout or split != "train":
        # train/ and val/ folders; a plain image folder is a train split by itself
        folder = split_folders(config, roots)["train" if split == "train" else "val"]
    return ImageFolderImages(folder, config.max_side, config.on_error, classes, roots)


def _check_split(split: str, allowed: tuple[str, ...]) -> str:
    if split not in allowed:
        raise ValueError(f"unknown split {split!r}: expected one of {', '.join(allowed)}")
    return split
