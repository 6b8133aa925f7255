"""Taking the encoder away: each export format, fetched through the API (and the CLI), loads in a
fresh interpreter that imports nothing of this project and gives the checkpoint encoder's
features (fp32, 1e-5); the model card names the checkpoint and its evaluations; what cannot be
exported is refused with the reason."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from services import cli
from services.client import Client
from tests.services.test_api import assert_problem, make_client, run_dir, submit, worker_auth
from trainer.checkpoint import save_atomic
from trainer.contracts.config import SimCLRConfig
from trainer.linear_probe import load_encoder
from trainer.simclr_recipe import build_model

RESNET = {"dataset": {"name": "digits"}, "backbone": {"name": "resnet18", "cifar_stem": True},
          "head": {"hidden_dim": 32, "out_dim": 16}}  # fmt: skip
SMALL = {"dataset": {"name": "digits"}, "backbone": {"name": "small_cnn", "width": 8},
         "head": {"hidden_dim": 16, "out_dim": 8}}  # fmt: skip

# What a downstream user writes, in an interpreter that never imports this project: the model
# from the file (and, for torchvision and safetensors, the torchvision constructor its metadata
# names), then its features of the images in images.pt.
LOAD = {
    "torchscript": "model = torch.jit.load(str(file))",
    "torchvision": """
        state = torch.load(file, weights_only=True)
        model = torchvision.models.resnet18()
        model.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = torch.nn.Identity()
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected, (missing, unexpected)
        model.fc = torch.nn.Identity()
    """,
    "safetensors": """
        from safetensors import safe_open
        from safetensors.torch import load_file
        with safe_open(str(file), "pt") as opened:
            metadata = opened.metadata()
        recipe = json.loads(metadata["torchvision"])
        assert json.loads(metadata["simclr_config"])["backbone"]["name"] == "resnet18"
        state = load_file(str(file))
        for line in recipe["build"]:  # the recipe as it stands, nothing added
            exec(line)
    """,
}


def features_in_a_fresh_interpreter(files: dict[str, Path], images: Path, out: Path) -> None:
    """Each format's features of ``images``, saved to ``out/<format>.pt`` by one interpreter."""
    lines = ["import json, sys, torch, torchvision", f"images = torch.load({str(images)!r})"]
    for format, file in files.items():
        lines += [f"file = {str(file)!r}", textwrap.dedent(LOAD[format]), "model.eval()",
                  "with torch.no_grad():",
                  f"    torch.save(model(images), {str(out / f'{format}.pt')!r})"]  # fmt: skip
    lines += ["ours = [m for m in sys.modules if m.split('.')[0] in ('trainer', 'models', 'services')]",
              "assert not ours, ours"]  # fmt: skip
    subprocess.run([sys.executable, "-I", "-c", "\n".join(lines)], check=True, cwd=out)


def write_checkpoint(path: Path, config: dict) -> None:
    pretrain = SimCLRConfig.model_validate(config)
    torch.manual_seed(0)
    model = build_model(pretrain)
    for module in model.modules():  # statistics a trained encoder has, not the initial 0 and 1
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    save_atomic({"kind": "simclr", "config": pretrain.model_dump(mode="json"),
                 "backbone": model.backbone.state_dict(), "head": model.head.state_dict(),
                 "step": 4}, path / "state.pt")  # fmt: skip


def job_with_checkpoint(api, config: dict) -> str:
    job_id = submit(api, config).json()["id"]
    path = Path(run_dir(api, job_id), "step-00000004")
    write_checkpoint(path, config)
    body = {"name": path.name, "step": 4, "epoch": 0, "path": str(path), "metrics": {}}
    assert api.post(f"/internal/v1/jobs/{job_id}/checkpoints", json=body,
                    headers=worker_auth(job_id)).status_code == 201  # fmt: skip
    return job_id


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_every_format_loads_without_this_project_and_gives_the_same_features(
    database_url, tmp_path
):
    images = tmp_path / "images.pt"
    torch.save(torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)), images)
    with make_client(database_url, tmp_path) as api:
        job_id = job_with_checkpoint(api, RESNET)
        encoder, _ = load_encoder(Path(run_dir(api, job_id), "step-00000004"))
        with torch.no_grad():
            expected = encoder(torch.load(images))
        files = {}
        for format in ("safetensors", "torchvision", "torchscript"):
            response = api.get(f"/v1/jobs/{job_id}/checkpoints/latest/export",
                               params={"format": format})  # fmt: skip
            assert response.status_code == 200, response.text
            assert f"{job_id}-step-00000004-encoder" in response.headers["content-disposition"]
            files[format] = tmp_path / f"encoder-{format}"
            files[format].write_bytes(response.content)
        features_in_a_fresh_interpreter(files, images, tmp_path)
        for format in files:
            torch.testing.assert_close(
                torch.load(tmp_path / f"{format}.pt"), expected, rtol=1e-5, atol=1e-5
            )
        exports = Path(api.app.state.service.settings.storage_root, "exports", job_id)
        assert len(list(exports.glob("step-00000004/encoder.*"))) == 3  # kept, written once
        assert not list(exports.glob("**/.*tmp"))  # no temporary file left behind

        card = api.get(f"/v1/jobs/{job_id}/checkpoints/latest/export",
                       params={"format": "card"}).json()  # fmt: skip
        assert (card["job"], card["checkpoint"], card["step"]) == (job_id, "step-00000004", 4)
        assert card["config"]["backbone"]["name"] == "resnet18" and card["evaluations"] == []
        assert (
            card["torchvision"]["cifar_stem"]
            and "model.maxpool = torch.nn.Identity()" in (card["torchvision"]["build"])
        )


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_small_cnn_exports_to_two_formats_and_refusals_say_why(
    database_url, tmp_path, capsys, monkeypatch
):
    with make_client(database_url, tmp_path) as api:
        job_id = job_with_checkpoint(api, SMALL)
        export = f"/v1/jobs/{job_id}/checkpoints/step-00000004/export"
        assert_problem(api.get(export, params={"format": "torchvision"}), 422,
                       "small_cnn encoder has no torchvision counterpart")  # fmt: skip
        scripted = api.get(export, params={"format": "torchscript"})
        assert scripted.status_code == 200
        assert_problem(api.get(export, params={"format": "onnx"}), 422, "format")
        assert_problem(api.get(f"/v1/jobs/{job_id}/checkpoints/step-9/export"), 404, "step-9")
        # hostile names: a parent directory (encoded, so it reaches the route) and a long one
        assert_problem(api.get(f"/v1/jobs/{job_id}/checkpoints/%2E%2E/export"), 404, "'..'")
        assert_problem(api.get(f"/v1/jobs/{job_id}/checkpoints/{'s' * 101}/export"), 422, "name")
        # a checkpoint that does not load: said, without quoting the file
        broken = Path(run_dir(api, job_id), "step-00000008")
        broken.mkdir()
        (broken / "state.pt").write_bytes(b"secret contents, not a checkpoint")
        body = {"name": broken.name, "step": 8, "epoch": 1, "path": str(broken), "metrics": {}}
        api.post(f"/internal/v1/jobs/{job_id}/checkpoints", json=body, headers=worker_auth(job_id))
        refused = assert_problem(api.get(f"/v1/jobs/{job_id}/checkpoints/latest/export"), 422,
                                 "step-00000008", "does not load")  # fmt: skip
        assert "secret" not in refused["detail"]

        # one export at a time per process: the next is told to come back, holding no thread
        from services.export import ONE_AT_A_TIME

        with ONE_AT_A_TIME:
            busy = api.get(export, params={"format": "safetensors"})
        assert_problem(busy, 503, "another export is being written")
        assert busy.headers["retry-after"] == "10"

        # the CLI: the file and its model card beside it
        monkeypatch.setattr(cli, "Client", lambda: Client(http=api))
        output = tmp_path / "encoder.safetensors"
        cli.main(["export", job_id, "--checkpoint", "step-00000004", "-o", str(output)])
        from safetensors.torch import load_file

        tensors = load_file(str(output))
        assert "features.0.weight" in tensors
        assert json.loads(Path(f"{output}.json").read_text())["checkpoint"] == "step-00000004"
        assert "encoder.safetensors.json: its model card" in capsys.readouterr().out
