import subprocess
import sys

import pytest
from pydantic import ValidationError

from trainer.contracts.config import SimCLRConfig, load_config
from trainer.optim import scaled_learning_rate


def test_defaults_are_the_papers_imagenet_recipe():
    config = SimCLRConfig.model_validate(
        {"dataset": {"name": "imagenet", "root": "/data/imagenet"}}
    )
    assert config.batch_size == 4096 and config.epochs == 100 and config.temperature == 0.1
    assert config.backbone.name == "resnet50" and not config.backbone.cifar_stem
    assert config.dataset.view_size == 224
    opt = config.optimizer
    assert (
        opt.name == "lars" and opt.momentum == 0.9 and opt.weight_decay == 1e-6 and opt.eta == 1e-3
    )
    assert opt.warmup_epochs == 10
    assert scaled_learning_rate(opt.resolved_base_lr, 4096, opt.lr_scaling) == pytest.approx(4.8)
    assert config.augment.strength == 1.0 and config.augment.blur
    assert (config.head.hidden_dim, config.head.out_dim, config.head.num_layers) == (2048, 128, 2)


def test_the_default_learning_rate_scales_with_the_square_root_of_the_batch():
    """The paper's 4.8 at B = 4096 either way; below it, 0.075 x sqrt(B) (App. B.1)."""
    small = SimCLRConfig.model_validate({"dataset": {"name": "digits"}, "batch_size": 256})
    opt = small.optimizer
    assert scaled_learning_rate(opt.resolved_base_lr, 256, opt.lr_scaling) == pytest.approx(1.2)
    linear = small.optimizer.model_copy(update={"lr_scaling": "linear"})
    assert scaled_learning_rate(linear.resolved_base_lr, 4096, "linear") == pytest.approx(4.8)
    assert scaled_learning_rate(linear.resolved_base_lr, 256, "linear") == pytest.approx(0.3)


def test_unknown_fields_are_rejected_with_their_name():
    with pytest.raises(ValidationError, match="learning_rate"):
        SimCLRConfig.model_validate({"dataset": {"name": "digits"}, "learning_rate": 1.0})


def test_root_is_required_where_data_lives_on_disk():
    with pytest.raises(ValidationError, match="needs a 'root'"):
        SimCLRConfig.model_validate({"dataset": {"name": "cifar10"}})


def test_shipped_configs_load(tmp_path):
    for name in ("digits-demo", "cifar10", "cifar10-short", "imagenet"):
        load_config(f"configs/{name}.yaml")
    paper = load_config("configs/cifar10-paper.yaml")  # App. B.9, as its comment says
    assert (paper.backbone.name, paper.backbone.cifar_stem) == ("resnet50", True)
    assert (paper.batch_size, paper.epochs, paper.temperature) == (1024, 1000, 0.5)
    assert (paper.augment.strength, paper.augment.blur) == (0.5, False)
    assert (paper.optimizer.lr_scaling, paper.optimizer.resolved_base_lr) == ("linear", 1.0)
    broken = tmp_path / "broken.yaml"
    broken.write_text("batch_size: [1, 2\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(broken)
    with pytest.raises(FileNotFoundError, match=r"missing\.yaml"):
        load_config(tmp_path / "missing.yaml")


def test_the_control_plane_and_the_contracts_import_neither_torch_nor_ray():
    """The service, its CLI and every module of the package it shares with the workers
    (``trainer.contracts``: the configs, the registry of kinds, the job spec, the states) stay
    free of the training stack."""
    code = (
        "import importlib, pkgutil, sys, services.app, services.cli, trainer.contracts as c\n"
        "names = [m.name for m in pkgutil.iter_modules(c.__path__, 'trainer.contracts.')]\n"
        "assert {'trainer.contracts.kinds', 'trainer.contracts.spec'} <= set(names), names\n"
        "for name in names: importlib.import_module(name)\n"
        "found = {'torch', 'ray'} & set(sys.modules); assert not found, found"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
