"""Input-pipeline benchmark: images/s delivered to the training loop, per CPU core.

Data: an ImageNet-layout tree of realistic JPEGs: the CIFAR-10 test images of ../shared/data
upscaled to 500x375 (bicubic, JPEG quality 90, about the size and file weight of an ImageNet photo),
or, without that archive, smooth random images of the same size. ``--images`` of them in 10 classes.

Paths, each on the whole machine (``--cores`` processes or Ray CPUs) for ``--seconds`` after a
warm-up, reported per core:
- ``torchvision``: ``torchvision.datasets.ImageFolder`` + per-image SimCLR transforms (random resized
  crop to 224, flip, colour jitter 0.8 x s, grey 0.2, blur 0.5, ToTensor) applied twice per image,
  a DataLoader with ``--cores`` workers: what most SimCLR code does.
- ``torch``: our ``ImageFolderImages`` (reduced-scale JPEG decoding to ``--max-side``), a DataLoader
  with ``--cores`` workers, then the batched ``SimCLRAugment`` on the main process.
- ``ray_data``: the packed shards (``simclr data pack``) through ``training_stream``'s Ray Data
  decode tasks on ``--cores`` CPUs, ``iter_torch_batches``, then the batched ``SimCLRAugment``.
- ``synthetic``: random canvases and the batched augmentation only: the ceiling of the loop's input.
For ``torch`` and ``ray_data`` the decode-only rate (canvases delivered, no augmentation) is also
measured: on a GPU machine the augmentation runs on the GPU and this is what CPUs must supply.
Run: ``python -m bench.input_pipeline [--images 2000] [--seconds 30] [--cores 2]``.
"""

from __future__ import annotations

import argparse
import gc
import io
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.common import machine_summary
from trainer.contracts.config import DatasetConfig
from trainer.data.augment import SimCLRAugment
from trainer.data.datasets import ImageFolderImages
from trainer.data.loader import EpochBatches, collate_padded
from trainer.data.pack import pack
from trainer.data.sources import SyntheticSource

ROOT = Path(__file__).resolve().parents[1]
CIFAR_ARCHIVE = ROOT.parent / "shared" / "data" / "cifar10-test-jpg.tar.gz"
PHOTO = (500, 375)
BATCH = 64
VIEW = 224


def cifar_images(count: int) -> Iterator[tuple[int, Image.Image]]:
    per_class: dict[str, int] = {}  # class name -> images taken; its label is its insertion order
    with tarfile.open(CIFAR_ARCHIVE) as tar:
        for member in tar:
            if not member.isfile() or not member.name.endswith(".jpg"):
                continue
            name = member.name.split("/")[-2]
            if per_class.get(name, 0) >= count // 10:
                continue
            per_class[name] = per_class.get(name, 0) + 1
            image = Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")
            yield list(per_class).index(name), image
            if sum(per_class.values()) >= count:
                return


def smooth_images(count: int) -> Iterator[tuple[int, Image.Image]]:
    rng = np.random.default_rng(0)
    for i in range(count):
        small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        yield i % 10, Image.fromarray(small)


def write_tree(root: Path, count: int) -> str:
    source = cifar_images(count) if CIFAR_ARCHIVE.is_file() else smooth_images(count)
    for i, (label, image) in enumerate(source):
        folder = root / "train" / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        image.resize(PHOTO, Image.Resampling.BICUBIC).save(folder / f"{i:06d}.jpg", quality=90)
    return "CIFAR-10 test images upscaled" if CIFAR_ARCHIVE.is_file() else "smooth random images"


def rate(batches: Iterator[int], seconds: float, warmup: int = 3) -> float:
    """Images/s of a generator of batch sizes, after ``warmup`` batches, for ``seconds``; then the
    generator is closed so that its loader processes or Ray tasks stop before the next path."""
    for _ in range(warmup):
        next(batches)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        count += next(batches)
    elapsed = time.perf_counter() - start
    batches.close()
    gc.collect()
    time.sleep(3)
    return count / elapsed


def forever(make: Callable[[], Iterable]) -> Iterator:
    while True:
        yield from make()


def torchvision_path(root: Path, cores: int) -> Iterator[int]:
    from torchvision import datasets, transforms

    s = 1.0
    view = transforms.Compose([
        transforms.RandomResizedCrop(VIEW), transforms.RandomHorizontalFlip(),
        transforms.RandomApply([transforms.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=0.8),
        transforms.RandomGrayscale(p=0.2),
        transforms.RandomApply([transforms.GaussianBlur(23, sigma=(0.1, 2.0))], p=0.5),
        transforms.ToTensor(),
    ])  # fmt: skip
    dataset = datasets.ImageFolder(
        str(root / "train"), transform=lambda image: (view(image), view(image))
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=cores,
                                         drop_last=True, persistent_workers=True, prefetch_factor=4)  # fmt: skip
    for views, _ in forever(lambda: loader):
        yield views[0].shape[0]


def torch_path(
    root: Path, cores: int, max_side: int, augment: SimCLRAugment | None
) -> Iterator[int]:
    dataset = ImageFolderImages(root / "train", max_side=max_side)
    sampler = EpochBatches(len(dataset), BATCH, seed=0, epoch=0)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=cores,
                                         collate_fn=collate_padded, persistent_workers=True,
                                         prefetch_factor=4)  # fmt: skip
    for batch in forever(lambda: loader):
        if augment is not None:
            augment(batch.images, batch.sizes)
        yield batch.images.shape[0]


def ray_data_path(packed: Path, max_side: int, augment: SimCLRAugment | None) -> Iterator[int]:
    from trainer.data.ray_data import training_stream

    config = DatasetConfig(name="packed", root=str(packed), loader="ray_data", max_side=max_side)
    stream = training_stream(config, BATCH, seed=0, start_epoch=0, epochs=1000)
    for batch in stream.iter_torch_batches(batch_size=BATCH, drop_last=True, prefetch_batches=4):
        images = batch["image"].permute(0, 3, 1, 2)
        if augment is not None:
            augment(images, batch["size"])
        yield images.shape[0]


def synthetic_path(max_side: int, augment: SimCLRAugment) -> Iterator[int]:
    config = DatasetConfig(name="imagenet", root="/unused", loader="synthetic", max_side=max_side)
    for batch in SyntheticSource(config, BATCH, torch.device("cpu"), seed=0).batches(0):
        augment(batch.images, batch.sizes)
        yield batch.images.shape[0]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--max-side", type=int, default=256, help="decoded canvas side (ours)")
    args = parser.parse_args()
    fewest = -(-BATCH // 10) * 10  # whole classes of 10 images, at least one full batch
    if args.images < fewest:
        parser.error(
            f"--images {args.images}: at least {fewest} are needed for one batch of {BATCH}"
        )
    torch.set_num_threads(args.cores)
    with tempfile.TemporaryDirectory(prefix="input-bench-") as scratch_dir:
        scratch = Path(scratch_dir)
        what = write_tree(scratch / "tree", args.images)
        mean_kb = np.mean([p.stat().st_size for p in (scratch / "tree").rglob("*.jpg")]) / 1024
        pack(scratch / "tree", scratch / "packed", shard_bytes=32 << 20, progress=False)
        print(f"# {machine_summary()}; {args.images} JPEGs {PHOTO[0]}x{PHOTO[1]} ({what}), mean {mean_kb:.0f} kB; "
              f"{args.cores} cores; views {VIEW} px, batch {BATCH}, canvas {args.max_side}")  # fmt: skip
        augment = SimCLRAugment(VIEW, strength=1.0, blur=True)

        import ray

        ray.init(address="local", num_cpus=args.cores, include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        paths = {
            "torchvision ImageFolder + per-image transforms": lambda: torchvision_path(scratch / "tree", args.cores),
            "torch: ImageFolderImages + batched augment": lambda: torch_path(scratch / "tree", args.cores, args.max_side, augment),
            "ray_data: packed shards + batched augment": lambda: ray_data_path(scratch / "packed", args.max_side, augment),
            "synthetic input + batched augment (ceiling)": lambda: synthetic_path(args.max_side, augment),
            "torch decode only (canvases, no augment)": lambda: torch_path(scratch / "tree", args.cores, args.max_side, None),
            "ray_data decode only (canvases, no augment)": lambda: ray_data_path(scratch / "packed", args.max_side, None),
        }  # fmt: skip
        print("| path | images/s (two views each) | per core |")
        print("|---|---|---|")
        for name, make in paths.items():
            images_per_s = rate(make(), args.seconds)
            print(f"| {name} | {images_per_s:.0f} | {images_per_s / args.cores:.0f} |", flush=True)


if __name__ == "__main__":
    main()
