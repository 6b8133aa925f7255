"""``simclr data pack SRC DST``: an ImageFolder tree (ImageNet layout or a plain folder) as Parquet
shards of the original JPEG bytes, for streaming with Ray Data (``trainer.data.ray_data``).

Layout of DST::

    manifest.json                      classes, per split: images, skipped files, shards + sha256
    <split>/shard-00000.parquet        columns index (int64), image (bytes), label (int32),
                                       height, width (int32: the original size)
    <split>/shard-00000.json           the shard's own record (rows, bytes, sha256, skipped files)

The images of a split are put in a seeded random order before they are cut into shards (so that a
shard holds every class, and reading whole shards in a shuffled order mixes classes), and shard
boundaries fall every ``shard_bytes`` of source files. Every image is decoded once to check it: a
corrupt or unreadable one is logged with its path and reason, skipped and counted in the shard's
record and the manifest, never silently. A shard is written to a temporary name and renamed, then
its record: an interrupted run resumes by packing only the shards without a record. No torch here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import random
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from trainer.data.confine import confined, confined_to, is_under, read_class_list, real_roots
from trainer.data.folders import DECODE_ERRORS, class_folders, list_images

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SCHEMA = pa.schema(
    [("index", pa.int64()), ("image", pa.binary()), ("label", pa.int32()),
     ("height", pa.int32()), ("width", pa.int32())]
)  # fmt: skip
ROW_GROUP_ROWS = 256  # streaming reads fetch row groups: a few tens of MB of JPEG


@dataclass
class ShardPlan:
    split: str
    number: int
    items: list[tuple[int, str, int]]  # (index, path, label)

    @property
    def name(self) -> str:
        return f"shard-{self.number:05d}"


def _splits(source: Path) -> dict[str, Path]:
    if (source / "train").is_dir() and (source / "val").is_dir():
        return {"train": source / "train", "val": source / "val"}
    return {"train": source}


def plan_shards(
    source: Path, classes: list[str], shard_bytes: int, seed: int
) -> dict[str, list[ShardPlan]]:
    """Which image goes into which shard, from file sizes alone (deterministic: resumable)."""
    plans: dict[str, list[ShardPlan]] = {}
    for split, folder in _splits(source).items():
        samples = list_images(folder, classes)
        order = list(range(len(samples)))
        random.Random(seed).shuffle(order)
        shards: list[ShardPlan] = []
        current: list[tuple[int, str, int]] = []
        size = 0
        for index in order:
            path, label = samples[index]
            current.append((index, path, label))
            size += os.path.getsize(path)
            if size >= shard_bytes:
                shards.append(ShardPlan(split, len(shards), current))
                current, size = [], 0
        if current:
            shards.append(ShardPlan(split, len(shards), current))
        plans[split] = shards
    return plans


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _image_size(path: str) -> tuple[int, int]:
    """(height, width) after a full decode: a truncated or corrupt file raises (opened by path, so
    that the reason names the file)."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return image.height, image.width


def pack_shard(plan: ShardPlan, destination: Path) -> dict:
    """Write one shard and its record; return the record."""
    folder = destination / plan.split
    folder.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list] = {name: [] for name in SCHEMA.names}
    skipped = []
    for index, path, label in plan.items:
        try:
            data = Path(path).read_bytes()
            height, width = _image_size(path)
        except DECODE_ERRORS as error:
            log.warning("skipping unreadable image %s: %s", path, error)
            skipped.append({"path": path, "reason": str(error)})
            continue
        for name, value in zip(SCHEMA.names, (index, data, label, height, width), strict=True):
            rows[name].append(value)
    target = folder / f"{plan.name}.parquet"
    temporary = folder / f".{plan.name}.parquet.tmp"
    pq.write_table(
        pa.table(rows, schema=SCHEMA), temporary, row_group_size=ROW_GROUP_ROWS, compression="none"
    )  # fmt: skip  (JPEG does not compress further)
    os.replace(temporary, target)
    record = {
        "file": f"{plan.split}/{target.name}",
        "rows": len(rows["index"]),
        "bytes": target.stat().st_size,
        "sha256": _sha256(target),
        "skipped": skipped,
    }
    record_path = folder / f"{plan.name}.json"
    record_path.with_suffix(".json.tmp").write_text(json.dumps(record))
    os.replace(record_path.with_suffix(".json.tmp"), record_path)
    return record


def pack(
    source: str | Path,
    destination: str | Path,
    *,
    shard_bytes: int = 256 << 20,
    class_list: str | Path | None = None,
    workers: int = 1,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Pack ``source`` into ``destination`` (resuming an earlier run there); return the manifest."""
    source, destination = Path(source), Path(destination)
    splits = _splits(source)
    classes = (
        read_class_list(class_list) if class_list else class_folders(next(iter(splits.values())))
    )
    plans = plan_shards(source, classes, shard_bytes, seed)
    records: dict[str, list[dict | None]] = {}
    todo: list[ShardPlan] = []
    for split, shards in plans.items():
        records[split] = []
        for plan in shards:
            record_path = destination / split / f"{plan.name}.json"
            if record_path.is_file() and (destination / split / f"{plan.name}.parquet").is_file():
                records[split].append(json.loads(record_path.read_text()))
            else:
                records[split].append(None)
                todo.append(plan)
    done = sum(len(s) for s in plans.values()) - len(todo)
    if done:
        log.info("resuming: %d shards already packed, %d to go", done, len(todo))
    from tqdm import tqdm

    bar = tqdm(total=len(todo), unit="shard", disable=not progress)
    if workers == 1:
        for plan in todo:
            records[plan.split][plan.number] = pack_shard(plan, destination)
            bar.update(1)
    else:
        # spawned, not forked: the caller may hold threads (a Ray or gRPC client) that a fork breaks
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = {pool.submit(pack_shard, plan, destination): plan for plan in todo}
            for future, plan in futures.items():
                records[plan.split][plan.number] = future.result()
                bar.update(1)
    bar.close()
    manifest = {
        "version": 1,
        "source": str(source),
        "classes": classes,
        "seed": seed,
        "splits": {
            split: {
                "images": sum(r["rows"] for r in shard_records),
                "skipped": sum(len(r["skipped"]) for r in shard_records),
                "skipped_files": [s for r in shard_records for s in r["skipped"]],
                "shards": [
                    {k: r[k] for k in ("file", "rows", "bytes", "sha256")} for r in shard_records
                ],
            }
            for split, shard_records in records.items()
        },
    }
    temporary = destination / f".{MANIFEST}.tmp"
    temporary.write_text(json.dumps(manifest, indent=1))
    os.replace(temporary, destination / MANIFEST)
    for split, info in manifest["splits"].items():
        log.info("%s: %d images in %d shards, %d unreadable skipped", split, info["images"],
                 len(info["shards"]), info["skipped"])  # fmt: skip
    return manifest


def read_manifest(root: str | Path, roots: Iterable[str | os.PathLike[str]] | None = None) -> dict:
    """The manifest of a packed directory, which must resolve under ``roots`` (None: unconfined);
    errors say what is missing, never what the file holds."""
    shown = Path(root) / MANIFEST
    path = confined(shown, roots, "packed-data manifest")
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{shown} not found: pack the images first (simclr data pack SRC {root})"
        ) from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(f"{shown} is not a packed-data manifest (not JSON)") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("splits"), dict):
        raise ValueError(f"{shown} is not a packed-data manifest (no splits)")
    return manifest


def manifest_shards(
    root: str | Path, split: str = "train", roots: Iterable[str | os.PathLike[str]] | None = None
) -> tuple[list[tuple[str, int]], int]:
    """The ``split``'s shards as (resolved path, rows), in manifest order, and its image count.

    The packed directory must resolve under ``roots`` (None: unconfined), and every shard ``file``
    of the manifest, resolved against it, must stay inside it (a ``..`` or a symbolic link out is
    refused with ``PermissionError``). Errors cite shards by their position, never the manifest's
    text."""
    resolved = real_roots(roots)
    packed = confined_to(root, resolved, "packed data")
    manifest = read_manifest(packed, resolved)
    where = f"{Path(root) / MANIFEST}"
    if split not in manifest["splits"]:
        raise ValueError(
            f"{root} has no {split!r} split (its manifest lists {len(manifest['splits'])} splits)"
        )
    info = manifest["splits"][split]
    try:
        entries = [(shard["file"], int(shard["rows"])) for shard in info["shards"]]
        images = int(info["images"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(
            f"{where}: the {split!r} split is malformed (shards, rows, images)"
        ) from None
    shards = []
    for position, (file, rows) in enumerate(entries):
        if not isinstance(file, str) or not file or "\0" in file or Path(file).is_absolute():
            raise PermissionError(
                f"{where}: shard {position} of the {split!r} split is not a path relative to {root}"
            )
        real = Path(os.path.realpath(packed / file))
        if not is_under(real, (packed,)):  # hence under the roots too: packed is
            raise PermissionError(
                f"{where}: shard {position} of the {split!r} split resolves outside the packed "
                f"directory {packed}"
            )
        shards.append((str(real), rows))
    return shards, images
