"""The input pipeline: packing image folders into Parquet shards, decoding them for Ray Data, the
synthetic-input mode, and SimCLR streaming packed shards on 2 Ray workers, through the API and
resumed mid-epoch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from services.cli import main as cli_main
from tests.distributed import run_driver_process
from trainer.contracts.config import DatasetConfig, SimCLRConfig
from trainer.data.pack import pack, read_manifest
from trainer.data.ray_data import decode_batch, epoch_order, epoch_plan
from trainer.data.sources import SyntheticSource
from trainer.session import LocalSession
from trainer.simclr_loop import run_simclr

CLASSES = ("ant", "bee", "cat")


def write_imagenet_tree(root: Path, train_per_class: int = 16, val_per_class: int = 4) -> Path:
    rng = np.random.default_rng(0)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (30 + i % 5, 40, 3), dtype=np.uint8)
                pixels[..., label] = 255  # one colour channel per class
                Image.fromarray(pixels).save(folder / f"{name}_{i}.jpg", quality=90)
    (root / "train" / "bee" / "broken.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    return root


@pytest.fixture
def packed(tmp_path) -> Path:
    """Packed shards under ``<tmp>/data``, the data root of the service tests' settings."""
    source = write_imagenet_tree(tmp_path / "data" / "tree")
    pack(source, tmp_path / "data" / "packed", shard_bytes=20_000, progress=False)
    return tmp_path / "data" / "packed"


def test_pack_writes_checked_shards_of_mixed_classes_and_counts_unreadable_images(packed):
    manifest = read_manifest(packed)
    assert manifest["classes"] == list(CLASSES)
    train = manifest["splits"]["train"]
    assert (train["images"], train["skipped"]) == (48, 1)
    assert train["skipped_files"][0]["path"].endswith("broken.jpg")
    assert manifest["splits"]["val"]["images"] == 12
    assert len(train["shards"]) > 2
    indices = []
    for shard in train["shards"]:
        table = pq.read_table(packed / shard["file"])
        assert table.column_names == ["index", "image", "label", "height", "width"]
        assert table.num_rows == shard["rows"]
        indices += table.column("index").to_pylist()
    assert sorted(indices) == sorted(set(indices)) and len(indices) == 48
    first = pq.read_table(packed / train["shards"][0]["file"])
    assert len(set(first.column("label").to_pylist())) > 1  # shuffled across shards
    assert set(first.column("width").to_pylist()) == {40}


def test_pack_resumes_by_packing_only_missing_shards(packed, tmp_path):
    manifest = read_manifest(packed)
    shards = manifest["splits"]["train"]["shards"]
    kept = packed / shards[0]["file"]
    before = kept.stat().st_mtime_ns
    (packed / shards[1]["file"]).unlink()
    (packed / shards[1]["file"]).with_suffix(".json").unlink()
    again = pack(packed.parent / "tree", packed, shard_bytes=20_000, progress=False)
    assert again["splits"] == manifest["splits"]
    assert kept.stat().st_mtime_ns == before


def test_packing_in_parallel_processes_writes_the_same_shards(packed, tmp_path):
    parallel = pack(packed.parent / "tree", tmp_path / "parallel", shard_bytes=20_000, workers=2,
                    progress=False)  # fmt: skip
    serial = read_manifest(packed)["splits"]
    for split, info in parallel["splits"].items():
        assert info["shards"] == serial[split]["shards"]  # same files, byte for byte (sha256)
        assert [s["path"] for s in info["skipped_files"]] == [
            s["path"] for s in serial[split]["skipped_files"]
        ]


def test_the_cli_packs_and_names_a_missing_source(tmp_path, capsys):
    source = write_imagenet_tree(tmp_path / "tree", 2, 1)
    cli_main(["data", "pack", str(source), str(tmp_path / "out"), "--shard-mb", "1"])
    out = capsys.readouterr().out
    assert "train: 6 images in 1 shards, 1 unreadable skipped" in out
    with pytest.raises(SystemExit, match="does not exist"):
        cli_main(["data", "pack", str(tmp_path / "nowhere"), str(tmp_path / "out2")])


def test_decode_batch_makes_canvases_with_their_sizes_and_drops_what_does_not_decode(packed):
    table = pq.read_table(packed / read_manifest(packed)["splits"]["train"]["shards"][0]["file"])
    batch = {name: table.column(name).to_numpy() for name in ("index", "image", "label")}
    batch["image"][1] = b"not an image"
    decoded = decode_batch(batch, max_side=32)
    rows = table.num_rows - 1
    assert decoded["image"].shape == (rows, 32, 32, 3) and decoded["image"].dtype == np.uint8
    assert decoded["size"].tolist()[0] in ([24, 32], [25, 32], [26, 32], [27, 32], [28, 32])
    assert (decoded["image"][0, decoded["size"][0, 0] :] == 0).all()  # padding below the image
    assert decoded["index"].tolist() == np.delete(batch["index"], 1).tolist()


def test_epoch_order_is_a_seeded_permutation_that_changes_with_the_epoch():
    files = [f"s{i}" for i in range(20)]
    assert epoch_order(files, 0, 3) == epoch_order(files, 0, 3)
    assert epoch_order(files, 0, 3) != epoch_order(files, 0, 4)
    assert sorted(epoch_order(files, 0, 3)) == sorted(files)


def test_each_epoch_plans_exactly_the_rows_its_steps_use():
    shards = [(f"s{i}", 10 + i) for i in range(5)]  # 60 rows
    plan = epoch_plan(shards, rows_per_epoch=56, seed=0, start_epoch=1, epochs=4)
    totals, epoch, rows = [], 0, 0
    for read in plan:
        rows += read["rows"]
        if rows == 56:
            totals.append(rows)
            epoch, rows = epoch + 1, 0
    assert totals == [56, 56, 56] and rows == 0
    assert plan[: len(plan) // 3] != plan[len(plan) // 3 : 2 * len(plan) // 3]  # orders differ


def test_packed_data_and_the_ray_data_loader_go_together():
    with pytest.raises(ValidationError, match="ray_data loader"):
        DatasetConfig(name="packed", root="/data/packed")
    with pytest.raises(ValidationError, match="ray_data loader"):
        DatasetConfig(name="imagenet", root="/data/imagenet", loader="ray_data")
    assert DatasetConfig(name="packed", root="/p", loader="ray_data").eval_crop_fraction == 0.875


def test_synthetic_input_trains_without_reading_anything(tmp_path):
    config = SimCLRConfig.model_validate({
        "dataset": {"name": "imagenet", "root": str(tmp_path / "absent"), "loader": "synthetic",
                    "max_side": 40, "image_size": 24, "synthetic_images": 64},
        "backbone": {"name": "small_cnn", "width": 8}, "head": {"hidden_dim": 16, "out_dim": 8},
        "batch_size": 16, "epochs": 1, "optimizer": {"warmup_epochs": 0},
    })  # fmt: skip
    result = run_simclr(config, LocalSession(tmp_path / "run"), progress=False)
    assert result.steps == 4 and np.isfinite(result.final_loss)


def test_synthetic_batches_are_laid_out_as_the_real_loaders_give_them():
    config = DatasetConfig(name="imagenet", root="/absent", loader="synthetic", max_side=40)
    batch = next(SyntheticSource(config, 4, torch.device("cpu"), seed=0).batches(0))
    assert batch.images.shape == (4, 3, 40, 40) and batch.images.dtype == torch.uint8
    # the folder loader's and Ray Data's layout, so the ceiling pays no conversion the real paths skip
    assert batch.images.is_contiguous(memory_format=torch.channels_last)
    assert ((batch.sizes >= 20) & (batch.sizes <= 40)).all()


# -- on Ray --------------------------------------------------------------------------------------


def streaming_config(root: Path, **overrides) -> dict:
    return {
        "dataset": {"name": "packed", "root": str(root), "loader": "ray_data", "max_side": 32,
                    "image_size": 16, "log_indices": True},
        "backbone": {"name": "small_cnn", "width": 8}, "head": {"hidden_dim": 16, "out_dim": 8},
        "batch_size": 8, "epochs": 1, "log_every_steps": 1, "optimizer": {"warmup_epochs": 0},
        "augment": {"strength": 0.5, "blur": False}, **overrides,
    }  # fmt: skip


def test_a_stream_of_more_epochs_than_any_run_reads_is_refused_before_it_is_planned(packed):
    from trainer.contracts.spec import JobSpec
    from trainer.driver import ray_data_stream

    config = streaming_config(packed, train_steps=10**9)  # 6 steps an epoch
    spec = JobSpec(job_id="long", kind="simclr", config=config, storage_path=str(packed.parent))
    with pytest.raises(ValueError, match="166666667 epochs of data; at most 100000"):
        ray_data_stream(spec, str(packed.parent / "long"))


def trained_indices(run_dir: Path) -> dict[int, list[int]]:
    """step -> the indices every rank trained on at that step (sorted)."""
    steps: dict[int, list[int]] = {}
    for log in sorted((run_dir / "indices").glob("rank-*.jsonl")):
        for line in log.read_text().splitlines():
            row = json.loads(line)
            steps.setdefault(row["step"], []).extend(row["indices"])
    return {step: sorted(indices) for step, indices in steps.items()}


@pytest.mark.slow
def test_simclr_streams_packed_shards_through_the_api_and_resumes_mid_epoch_on_the_same_images(
    settings, ray_head, packed, tmp_path
):
    """A 9-step run through the service on 2 workers, then the same run in two driver processes
    (as the service relaunches one), stopped at step 3 and resumed mid-epoch: 48 images / 8 = 6
    steps per epoch, so both go into the second epoch, which the stream must hold though
    ``epochs`` is 1 (``train_steps`` 9 overrides it)."""
    from services.client import Client
    from tests.services.test_service_ray import ServiceThread

    client = Client(f"http://127.0.0.1:{settings.port}")
    with ServiceThread(settings):
        job = client.submit("simclr", streaming_config(packed, train_steps=9), {"num_workers": 2},
                            "streamed")  # fmt: skip
        done = client.wait(job["id"])
        assert done["status"] == "succeeded", done["error"]
        assert [c["step"] for c in client.checkpoints(job["id"])] == [6, 9]
        assert {"loss", "images_per_s"} <= {m["name"] for m in client.metrics(job["id"])}

    def run(max_steps: int) -> None:
        spec = {"job_id": "resumed",
                "config": streaming_config(packed, train_steps=9, max_steps=max_steps),
                "resources": {"num_workers": 2}, "storage_path": str(tmp_path / "runs")}  # fmt: skip
        run_driver_process(spec, ray_head.gcs_address)

    run(3)
    run(9)  # resumes at step 3, mid-epoch
    whole = trained_indices(Path(settings.storage_path) / job["id"])
    resumed = trained_indices(tmp_path / "runs" / "resumed")
    assert sorted(whole) == sorted(resumed) == list(range(1, 10))
    assert all(len(indices) == 8 for indices in whole.values())
    assert resumed == whole  # the deterministic split: exactly the same images at every step
    # Blocks go to the rank with the fewest rows so far, so an epoch's boundary on a rank can be off
    # by part of a block: at most one local batch per rank from the neighbouring epoch.
    first_epoch = [i for step in range(1, 7) for i in whole[step]]
    assert len(set(first_epoch)) >= 48 - 2 * 4
