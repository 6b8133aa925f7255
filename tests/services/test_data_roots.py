"""Jobs read data only under the service's data roots: at submit (the API resolves dataset paths and
reads class lists) and on the worker (every folder, shard and image file resolved and checked
against the roots of the job spec). Errors never echo what a class list or a manifest holds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.services.test_api import assert_problem, make_client
from trainer.contracts.config import DatasetConfig
from trainer.contracts.spec import JobSpec
from trainer.data.confine import confined, read_class_list
from trainer.data.datasets import ImageFolderImages, build_dataset
from trainer.data.pack import MANIFEST, manifest_shards
from trainer.data.ray_data import read_shards
from trainer.generative.data import load_generative_data

SECRET = "sk-live-7f3a9c1e5b"  # what a token file holds: never to appear in an error


def write_image(path: Path, value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 10, 3), value, dtype=np.uint8)).save(path, quality=90)


def write_tree(root: Path, classes=("cat", "dog"), per_class: int = 2) -> Path:
    for name in classes:
        for i in range(per_class):
            write_image(root / name / f"{name}_{i}.jpg")
    return root


def secret_name(name: str) -> str:
    """``name`` with the secret in it (``..`` stays alone: ``..<secret>`` is a folder name)."""
    return name if name == ".." else f"{name}{SECRET}"


@pytest.fixture
def data(tmp_path) -> Path:
    """The data root (``make_client`` sets ``data_roots=[tmp_path / "data"]``) and, beside it, a
    directory outside it."""
    (tmp_path / "outside").mkdir()
    write_image(tmp_path / "outside" / "secret" / "leak.jpg")
    return write_tree(tmp_path / "data" / "tree").parent


@pytest.fixture
def api(tmp_path):
    with make_client(f"sqlite:///{tmp_path / 'simclr.db'}", tmp_path) as client:
        yield client


def submit_folder(api, root: str, class_list: str | None = None):
    dataset = {
        "name": "imagefolder",
        "root": root,
        **({"class_list": class_list} if class_list else {}),
    }
    config = {"dataset": dataset, "backbone": {"name": "small_cnn"}, "max_steps": 2}
    return api.post("/v1/jobs", json={"kind": "simclr", "config": config})


# -- at submit -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../outside", "/etc", "a/b", "..", "a\\b"])
def test_class_names_that_are_paths_are_refused_at_submit_by_line(api, data, name):
    class_list = data / "classes.txt"
    class_list.write_text(f"# subset\ncat\n{secret_name(name)}\n")
    response = submit_folder(api, str(data / "tree"), str(class_list))
    assert_problem(response, 422, "config.dataset.class_list", "line 3")
    assert SECRET not in response.text


def test_a_class_list_the_service_cannot_read_is_refused_at_submit(api, data, tmp_path):
    response = submit_folder(api, str(data / "tree"), str(data / "absent.txt"))
    assert_problem(response, 422, "config.dataset.class_list", "not found under the data roots")
    (data / "dir.txt").mkdir()
    response = submit_folder(api, str(data / "tree"), str(data / "dir.txt"))
    assert_problem(response, 422, "config.dataset.class_list", "not found under the data roots")
    response = submit_folder(api, str(data / "tree\0x"))
    assert_problem(response, 422, "config.dataset.root", "not a usable path")
    # one linked out of the roots, to a token file: refused, and nothing of it read back
    (tmp_path / "outside" / "token").write_text(SECRET + "\n")
    (data / "classes.txt").symlink_to(tmp_path / "outside" / "token")
    response = submit_folder(api, str(data / "tree"), str(data / "classes.txt"))
    assert_problem(response, 422, "config.dataset.class_list", "data roots")
    assert SECRET not in response.text


def test_the_stored_config_holds_the_resolved_paths(api, data, tmp_path):
    (data / "link").symlink_to(data / "tree")
    (data / "classes.txt").write_text("cat\ndog\n")
    (data / "lists").mkdir()
    spelled = str(data / "lists" / ".." / "classes.txt")
    response = submit_folder(api, str(data / "link"), spelled)
    assert response.status_code == 202, response.text
    dataset = response.json()["config"]["dataset"]
    assert dataset["root"] == str((data / "tree").resolve())
    assert dataset["class_list"] == str((data / "classes.txt").resolve())
    stored = api.get(response.headers["location"]).json()["config"]["dataset"]
    assert stored == dataset
    # the symbolic link re-pointed after submit: the worker, given the path as submitted and the
    # roots of the spec, refuses it; the stored (resolved) path still reads the same images
    (data / "link").unlink()
    (data / "link").symlink_to(tmp_path / "outside")
    spec = JobSpec.model_validate({"job_id": "j1", "config": response.json()["config"],
                                   "storage_path": str(tmp_path / "runs"),
                                   "data_roots": [str(data.resolve())]})  # fmt: skip
    moved = DatasetConfig(name="imagefolder", root=str(data / "link"), loader_workers=0)
    with pytest.raises(PermissionError, match="outside the data roots"):
        build_dataset(moved, "train", spec.data_roots)
    assert len(build_dataset(spec.config.dataset, "train", spec.data_roots)) == 4


def test_job_specs_carry_the_data_roots():
    spec = {"job_id": "j", "config": {"dataset": {"name": "digits"}}, "storage_path": "/runs"}
    assert JobSpec.model_validate(spec).data_roots is None
    assert JobSpec.model_validate({**spec, "data_roots": ["/data"]}).data_roots == ["/data"]


# -- on the worker -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../outside", "/etc", "a/b", "..", "a\\b", "x\0y"])
def test_read_class_list_refuses_names_that_are_paths_by_line(tmp_path, name):
    class_list = tmp_path / "classes.txt"
    class_list.write_text(f"cat\n\n{secret_name(name)}\n")
    with pytest.raises(ValueError, match="line 3") as error:
        read_class_list(class_list)
    assert SECRET not in str(error.value)
    config = DatasetConfig(name="imagefolder", root=str(tmp_path), class_list=str(class_list))
    with pytest.raises(ValueError, match="line 3") as error:
        build_dataset(config, "train", [str(tmp_path)])
    assert SECRET not in str(error.value)


def test_errors_about_a_class_list_never_echo_its_names(data):
    class_list = data / "classes.txt"
    class_list.write_text(f"cat\n{SECRET}\n{SECRET}-2\n")
    config = DatasetConfig(name="imagefolder", root=str(data / "tree"), class_list=str(class_list))
    with pytest.raises(FileNotFoundError) as error:
        build_dataset(config, "train", [str(data)])
    assert SECRET not in str(error.value)
    assert "2 of 3 class folders missing" in str(error.value) and "lines 2, 3" in str(error.value)
    with pytest.raises(FileNotFoundError) as error:  # unconfined: the same message
        build_dataset(config, "train")
    assert SECRET not in str(error.value)
    class_list.write_text(f"cat\n{SECRET}\ndog\n{SECRET}\n")
    with pytest.raises(ValueError, match="line 4") as error:
        read_class_list(class_list)
    assert SECRET not in str(error.value)


def test_a_symlinked_class_folder_pointing_outside_is_refused(data, tmp_path):
    (data / "tree" / "secret").symlink_to(tmp_path / "outside" / "secret")
    with pytest.raises(PermissionError, match=r"class folder .*outside the data roots"):
        ImageFolderImages(data / "tree", roots=[str(data)])
    config = DatasetConfig(name="imagefolder", root=str(data / "tree"))
    with pytest.raises(PermissionError, match="outside the data roots"):
        build_dataset(config, "train", [str(data)])
    with pytest.raises(PermissionError, match="outside the data roots"):
        load_generative_data(config, 16, [str(data)])
    # named by a class list: refused, cited by its line
    (data / "classes.txt").write_text("cat\nsecret\n")
    listed = config.model_copy(update={"class_list": str(data / "classes.txt")})
    with pytest.raises(PermissionError, match="line 2 of class list"):
        build_dataset(listed, "train", [str(data)])
    assert len(build_dataset(listed, "train")) == 3  # unconfined (runs started by hand)


def test_a_symlinked_class_folder_pointing_inside_a_root_is_read(data):
    write_tree(data / "elsewhere", classes=("bird",))
    (data / "tree" / "bird").symlink_to(data / "elsewhere" / "bird")
    dataset = ImageFolderImages(data / "tree", roots=[str(data)])
    assert dataset.classes == ["bird", "cat", "dog"] and len(dataset) == 6
    assert all(Path(path).resolve() == Path(path) for path, _ in dataset.samples)
    assert dataset[0][0].shape[0] == 3


def test_a_symlinked_image_pointing_outside_is_refused(data, tmp_path):
    (data / "tree" / "cat" / "zz.jpg").symlink_to(tmp_path / "outside" / "secret" / "leak.jpg")
    with pytest.raises(PermissionError, match=r"image .*zz\.jpg.*outside the data roots"):
        ImageFolderImages(data / "tree", roots=[str(data)])
    (data / "tree" / "cat" / "zz.jpg").unlink()
    (data / "tree" / "cat" / "sub").symlink_to(tmp_path / "outside" / "secret")
    try:  # a linked sub-folder: refused, or not followed (Python < 3.13 does not follow it)
        dataset = ImageFolderImages(data / "tree", roots=[str(data)])
    except PermissionError as error:
        assert "outside the data roots" in str(error)
    else:
        assert all(Path(p).is_relative_to(data.resolve()) for p, _ in dataset.samples)


def test_a_root_or_class_list_outside_the_roots_is_refused_on_the_worker(data, tmp_path):
    outside = DatasetConfig(name="imagefolder", root=str(tmp_path / "outside"))
    with pytest.raises(PermissionError, match=r"dataset root .*outside the data roots"):
        build_dataset(outside, "train", [str(data)])
    (tmp_path / "outside" / "list.txt").write_text("cat\n")
    listed = DatasetConfig(name="imagefolder", root=str(data / "tree"),
                           class_list=str(tmp_path / "outside" / "list.txt"))  # fmt: skip
    with pytest.raises(PermissionError, match=r"class_list .*outside the data roots"):
        build_dataset(listed, "train", [str(data)])
    with pytest.raises(PermissionError, match="outside the data roots"):
        build_dataset(DatasetConfig(name="imagefolder", root=str(data / "tree")), "train", [])


def test_cifar_files_symlinked_out_of_the_roots_are_refused(data, tmp_path):
    folder = data / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    (folder / "data_batch_1").symlink_to(tmp_path / "outside" / "secret" / "leak.jpg")
    config = DatasetConfig(name="cifar10", root=str(data / "cifar"))
    with pytest.raises(PermissionError, match="data_batch_1"):
        build_dataset(config, "train", [str(data)])


def write_manifest(packed: Path, files: list[str]) -> None:
    packed.mkdir(parents=True, exist_ok=True)
    shards = [{"file": file, "rows": 4, "bytes": 1, "sha256": "0"} for file in files]
    manifest = {"version": 1, "classes": ["a"],
                "splits": {"train": {"images": 4 * len(files), "shards": shards}}}  # fmt: skip
    (packed / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize("file", ["../../etc/passwd", "train/../../../outside/x", "/etc/passwd"])
def test_manifest_shards_that_leave_the_packed_directory_are_refused(data, file):
    packed = data / "packed"
    write_manifest(packed, ["train/shard-00000.parquet", file])
    config = DatasetConfig(name="packed", root=str(packed), loader="ray_data")
    for roots in ([str(data)], None):
        with pytest.raises(PermissionError, match="shard 1 of the 'train' split") as error:
            read_shards(config, "train", roots)
        assert "passwd" not in str(error.value) and "outside/x" not in str(error.value)


def test_manifest_shards_symlinked_out_and_packed_roots_outside_are_refused(data, tmp_path):
    packed = data / "packed"
    write_manifest(packed, ["train/shard-00000.parquet"])
    (packed / "train").mkdir()
    (packed / "train" / "shard-00000.parquet").symlink_to(tmp_path / "outside" / "secret")
    with pytest.raises(PermissionError, match="shard 0"):
        manifest_shards(packed, "train", [str(data)])
    (packed / "train" / "shard-00000.parquet").unlink()
    (packed / "train" / "shard-00000.parquet").write_bytes(b"")
    shards, images = manifest_shards(packed, "train", [str(data)])
    assert shards == [(str((packed / "train" / "shard-00000.parquet").resolve()), 4)]
    assert images == 4
    write_manifest(tmp_path / "outside" / "packed", ["train/shard-00000.parquet"])
    with pytest.raises(PermissionError, match="outside the data roots"):
        manifest_shards(tmp_path / "outside" / "packed", "train", [str(data)])


def test_manifest_errors_do_not_echo_the_file(data, tmp_path):
    packed = data / "packed"
    packed.mkdir()
    (packed / MANIFEST).write_text(SECRET)
    with pytest.raises(ValueError, match="not JSON") as error:
        manifest_shards(packed, "train", [str(data)])
    assert SECRET not in str(error.value)
    (packed / MANIFEST).write_text(json.dumps({"splits": {SECRET: {}}}))
    with pytest.raises(ValueError, match="no 'train' split") as error:
        manifest_shards(packed, "train", [str(data)])
    assert SECRET not in str(error.value)


def test_confined_names_the_path_and_the_roots(tmp_path):
    tmp_path = tmp_path.resolve()
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "up").symlink_to(tmp_path)
    assert confined(tmp_path / "root" / "x", [tmp_path / "root"]) == (tmp_path / "root" / "x")
    assert confined(tmp_path / "anywhere", None) == tmp_path / "anywhere"
    with pytest.raises(PermissionError) as error:
        confined(tmp_path / "root" / "up" / "secret", [tmp_path / "root"], "image")
    message = str(error.value)
    assert message.startswith(f"image {tmp_path / 'root' / 'up' / 'secret'} (resolves to ")
    assert str(tmp_path / "root") in message and "SIMCLR_DATA_ROOTS" in message
