"""Every generative kind trains, reports, draws, and resumes exactly, on the local session, and
trains data-parallel on 2 gloo ranks that keep equal weights; configs reject what cannot run. (The
same loop on Ray workers through the API: test_generative_service.py.)"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import torch.distributed as dist
from pydantic import ValidationError

from tests.distributed import run_on_ranks
from trainer.contracts.config import DatasetConfig, read_mapping
from trainer.contracts.kinds import KINDS, kinds
from trainer.contracts.spec import JobSpec
from trainer.generative import loop
from trainer.generative.data import load_images
from trainer.generative.frechet import InceptionFeatures, frechet_distance
from trainer.generative.loop import run_generative
from trainer.generative.tasks import task_of
from trainer.session import LocalSession

TINY_UNET = {
    "base_channels": 8, "channel_mults": [1, 2], "blocks_per_resolution": 1,
    "attention_resolutions": [4], "dropout": 0.0,
}  # fmt: skip
KIND_SETTINGS = {
    "ddpm": {"timesteps": 10, "unet": TINY_UNET, "mlp_hidden": 32, "warmup_steps": 2},
    "vae": {"iwae_k": 4, "latent_dim": 4, "width": 8, "hidden": 32},
    "gan": {"width": 8, "latent_dim": 8, "hidden": 32},
    "flow": {"layers": ["sigmoidal", "residual", "planar", "radial"]},
    "diffusevae": {
        "vae_steps": 2,
        "vae": {"latent_dim": 4, "width": 8, "hidden": 32},
        "diffusion": {"timesteps": 10, "unet": TINY_UNET, "mlp_hidden": 32},
    },
}
TOY = {"name": "two_moons", "train_size": 256, "test_size": 32}
DIGITS = {"name": "digits"}


def config_of(kind: str, data: dict, **overrides):
    fields = {"data": data, "batch_size": 32, "steps": 4, "log_every_steps": 1,
              "checkpoint_every_steps": 2, "eval_examples": 16, "sample_count": 9,
              "frechet_classifier_steps": 5, **KIND_SETTINGS[kind], **overrides}  # fmt: skip
    return KINDS[kind].config.model_validate(fields)


def parameters(run_dir) -> dict[str, torch.Tensor]:
    state = torch.load(sorted((run_dir / "checkpoints").glob("step-*.pt"))[-1], weights_only=False)
    return {f"{n}.{k}": v for n, sd in state["networks"].items() for k, v in sd.items()}


@pytest.mark.parametrize("data", [TOY, DIGITS], ids=["two_moons", "digits"])
@pytest.mark.parametrize("kind", list(kinds("generate")))
def test_each_kind_trains_reports_draws_and_resumes_exactly(kind, data, tmp_path):
    config = config_of(kind, data)
    whole = run_generative(kind, config, LocalSession(tmp_path / "whole"), progress=False)
    assert whole.steps == 4
    rows = [
        json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    evaluated = rows[-1]
    if data is DIGITS:
        assert evaluated["frechet_classifier"] >= 0
    else:
        assert evaluated["data_log_likelihood_nats"] == pytest.approx(-1.01, abs=0.02)
    bound = {"ddpm": "bound_nats", "vae": "iwae_nats", "flow": "log_likelihood_nats",
             "diffusevae": "ddpm_term_nats", "gan": None}[kind]  # fmt: skip
    if bound and data is TOY:  # no model beats the data's own log-likelihood (-H = -1.01 nats)
        assert evaluated[bound] < -1.01
    if bound and data is DIGITS:  # bits per dim are nats per example over 64 dims and ln 2
        bits = evaluated[bound.replace("_nats", "_bpd")]
        assert bits == pytest.approx(-evaluated[bound] / (64 * math.log(2)), rel=1e-9)
    if bound:  # what these seeded 4-step runs reach: a nats/bits slip (x1.44 or x0.69) or a
        # log10 one (x0.43 or x2.3) lands outside 20 % in either direction
        expected = {("ddpm", TOY["name"]): -2.21, ("vae", TOY["name"]): -2.20,
                    ("flow", TOY["name"]): -3.34, ("diffusevae", TOY["name"]): -2.40,
                    ("ddpm", "digits"): -294.4, ("vae", "digits"): -147.1,
                    ("flow", "digits"): -236.1, ("diffusevae", "digits"): -294.3}  # fmt: skip
        assert evaluated[bound] == pytest.approx(expected[kind, data["name"]], rel=0.2)
    for name in ("samples.png", "curves.png"):
        assert (tmp_path / "whole" / name).read_bytes().startswith(b"\x89PNG")

    interrupted = LocalSession(tmp_path / "resumed")
    assert run_generative(kind, config, interrupted, stop_after=2, progress=False).steps == 2
    resumed = run_generative(kind, config, LocalSession(tmp_path / "resumed"), progress=False)
    assert resumed.steps == 4 and [row["step"] for row in resumed.history] == [1, 2, 3, 4]
    expected, got = parameters(tmp_path / "whole"), parameters(tmp_path / "resumed")
    assert expected.keys() == got.keys()
    for name, value in expected.items():
        assert torch.equal(value, got[name]), f"{kind}: {name} differs after resuming"


class RankSession(LocalSession):
    """A ``LocalSession`` on one rank of the initialised process group, in a folder of its own;
    as on Ray, the loop gives only rank 0 a state to checkpoint."""

    def __init__(self, output_dir: Path):
        super().__init__(output_dir)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()


# every kind on the toy data; the GAN also on digits, whose image generator has batch norm
ON_TWO_RANKS = [(kind, TOY) for kind in kinds("generate")] + [("gan", DIGITS)]


def _every_kind_on_this_rank(rank: int, world: int, root: str) -> dict:
    """Each case's steps, losses and final weights (every network's state) on this rank."""
    made = []

    def recording(kind: str):
        def make(*args, **kwargs):
            made.append(task_of(kind)(*args, **kwargs))
            return made[-1]

        return make

    results = {}
    for kind, data in ON_TWO_RANKS:
        made.clear()
        session = RankSession(Path(root, f"{kind}-{data['name']}", f"rank{rank}"))
        with mock.patch.object(loop, "task_of", recording):
            run = run_generative(kind, config_of(kind, data, precision="fp32"), session,
                                 progress=False)  # fmt: skip
        assert len(made) == 1, "run_generative made more than one task"
        weights = {f"{name}.{key}": value.clone() for name, network in made[0].networks.items()
                   for key, value in network.state_dict().items()}  # fmt: skip
        results[kind, data["name"]] = (run.steps, [row["loss"] for row in run.history], weights)
    return results


def test_each_kind_trains_data_parallel_on_two_ranks_that_keep_equal_weights(tmp_path):
    """The arithmetic the Ray workers run, without Ray: gradients averaged over the ranks (every
    network, every optimiser), batch-norm statistics shared (the GAN's generator), metrics the
    mean over the ranks; a network left out of either would drift apart on the two ranks."""
    ranks = run_on_ranks(functools.partial(_every_kind_on_this_rank, root=str(tmp_path)))
    for kind, data in ON_TWO_RANKS:
        case = f"{kind}-{data['name']}"
        (steps, losses, weights), (other_steps, other_losses, other_weights) = (
            rank[kind, data["name"]] for rank in ranks
        )
        assert steps == other_steps == 4 and losses == other_losses, case
        assert weights.keys() == other_weights.keys()
        for name, value in weights.items():
            assert torch.equal(value, other_weights[name]), f"{case}: {name} differs between ranks"
        checkpoints = sorted(p.name for p in (tmp_path / case / "rank0" / "checkpoints").iterdir())
        assert checkpoints == ["step-00000002.pt", "step-00000004.pt"], case
        assert not (tmp_path / case / "rank1" / "checkpoints").exists()


def test_configs_reject_what_cannot_run():
    with pytest.raises(ValidationError, match="vae_steps"):
        config_of("diffusevae", TOY, vae_steps=4)
    with pytest.raises(ValidationError, match="bernoulli"):
        config_of("vae", TOY, decoder="bernoulli")
    with pytest.raises(ValidationError, match="layers"):
        config_of("flow", TOY, layers=["spline"])
    with pytest.raises(ValidationError, match="name"):
        config_of("ddpm", {"name": "three_moons"})


def test_a_job_spec_validates_a_generative_config_with_its_kind():
    spec = JobSpec.model_validate(
        {"job_id": "g1", "kind": "gan", "storage_path": "/tmp/x",
         "config": {"data": {"name": "cifar10", "root": "/data/cifar"}, "r1_gamma": 1.0}}
    )  # fmt: skip
    assert type(spec.config).__name__ == "GANConfig" and spec.config.r1_gamma == 1.0
    with pytest.raises(ValidationError, match="r1_gamma"):
        JobSpec.model_validate({"job_id": "g2", "kind": "gan", "storage_path": "/tmp/x",
                                "config": {"data": TOY, "r1_gamma": -1}})  # fmt: skip


def test_the_bernoulli_decoder_scores_binarised_digits(tmp_path):
    config = config_of("vae", DIGITS, decoder="bernoulli")
    run = run_generative("vae", config, LocalSession(tmp_path), progress=False)
    assert 0 < run.metrics["iwae_bpd"] < 1  # binary pixels: at most 1 bit each
    assert run.metrics["iwae_nats"] >= run.metrics["elbo_nats"] - 1.0


@pytest.mark.parametrize(
    "kind, name",
    [("ddpm", "ddpm-digits"), ("vae", "vae-digits"), ("gan", "gan-digits"),
     ("diffusevae", "diffusevae-digits"), ("flow", "flow-two-moons")],
)  # fmt: skip
def test_shipped_generative_configs_validate(kind, name):
    KINDS[kind].config.model_validate(read_mapping(f"configs/{name}.yaml"))


def test_an_image_folder_is_cropped_resized_and_split(tmp_path):
    from PIL import Image

    for label, colour in enumerate(["red", "blue"]):
        folder = tmp_path / "tree" / f"class{label}"
        folder.mkdir(parents=True)
        for i in range(10):
            Image.new("RGB", (40 + i, 30), colour).save(folder / f"{i}.jpg")
    (tmp_path / "tree" / "class0" / "broken.jpg").write_bytes(b"not a jpeg")
    data = load_images(DatasetConfig(name="imagefolder", root=str(tmp_path / "tree")), 16)
    assert data.train.shape == (18, 3, 16, 16) and data.test.shape == (2, 3, 16, 16)
    assert data.levels == 256 and data.train.min() >= -1 and data.train.max() <= 1
    red = data.train[data.train_labels == 0]
    assert (red[:, 0].mean() > 0.9) and (red[:, 2].mean() < -0.9)


def test_fid_uses_pytorch_fids_network_from_a_local_file_and_refuses_another(tmp_path):
    """A randomly initialised state of the FID architecture stands for the reference weights (the
    number itself needs the real ones): pytorch-fid's blocks patch only the forward, so the
    parameters are those of torchvision's Inception-v3 with 1,008 classes and no auxiliary logits."""
    from torchvision.models import inception_v3

    weights = tmp_path / "pt_inception.pth"
    torch.manual_seed(0)
    state = inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=True)
    torch.save(state.state_dict(), weights)
    scorer = InceptionFeatures(str(weights), torch.device("cpu"))
    patched = {"FIDInceptionA", "FIDInceptionC", "FIDInceptionE_1", "FIDInceptionE_2"}
    assert patched <= {type(module).__name__ for module in scorer.network.modules()}
    generator = torch.Generator().manual_seed(1)
    real = torch.rand(12, 3, 16, 16, generator=generator) * 2 - 1
    features = scorer.features(real)
    assert features.shape == (12, 2048) and torch.isfinite(features).all()
    # the package's network on the package's input range ([0, 1]) gives the same features
    torch.testing.assert_close(features, scorer.network((real + 1) / 2)[0].flatten(1))
    torchvision_state = tmp_path / "torchvision.pt"  # 1,000 classes and aux logits: not FID's
    torch.save(inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict(),
               torchvision_state)  # fmt: skip
    with pytest.raises(ValueError, match="not a state of pytorch-fid's FID Inception-v3"):
        InceptionFeatures(str(torchvision_state), torch.device("cpu"))
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        InceptionFeatures(str(tmp_path / "missing.pt"), torch.device("cpu"))


def test_the_frechet_distance_agrees_with_pytorch_fids():
    from pytorch_fid.fid_score import calculate_frechet_distance

    generator = np.random.default_rng(0)
    a, b = generator.normal(size=(400, 16)), generator.normal(0.3, 1.5, size=(400, 16))
    statistics = [(x.mean(axis=0), np.cov(x, rowvar=False)) for x in (a, b)]
    ours = frechet_distance(*statistics[0], *statistics[1])
    assert ours == pytest.approx(calculate_frechet_distance(*statistics[0], *statistics[1]))
    assert ours > 1.0
