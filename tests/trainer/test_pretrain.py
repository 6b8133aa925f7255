import json

import torch

from trainer.checkpoint import latest_checkpoint, load_checkpoint
from trainer.contracts.config import SimCLRConfig
from trainer.pretrain import pretrain
from trainer.simclr_recipe import LearningRateSchedule


def small_config(**overrides) -> SimCLRConfig:
    base = {
        "dataset": {
            "name": "synthetic",
            "image_size": 16,
            "synthetic_images": 96,
            "synthetic_classes": 4,
        },
        "backbone": {"name": "small_cnn", "width": 8},
        "head": {"hidden_dim": 32, "out_dim": 16},
        "optimizer": {"warmup_epochs": 1},
        "augment": {"strength": 0.5, "blur": False},
        "batch_size": 32,
        "epochs": 3,
        "temperature": 0.5,
        "log_every_steps": 1,
    }
    base.update(overrides)
    return SimCLRConfig.model_validate(base)


def test_checkpoint_holds_everything_needed_to_resume(tmp_path, device):
    """On CUDA too: the product's default precision (bf16 there), the device's random streams."""
    result = pretrain(small_config(), tmp_path, device, progress=False)
    assert result.steps == 9  # 3 epochs x 3 steps
    state = load_checkpoint(latest_checkpoint(tmp_path / "checkpoints"))
    assert {
        "backbone",
        "head",
        "optimizer",
        "step",
        "epoch",
        "batch_in_epoch",
        "rng",
        "config",
    } <= state.keys()
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (9, 3, 0)
    assert any("momentum_buffer" in s for s in state["optimizer"]["state"].values())
    assert all(t.device.type == "cpu" for t in state["backbone"].values())  # mapped to the CPU
    assert device.type == "cpu" or "cuda" in state["rng"][0]  # rank 0's CUDA generators
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 10))
    assert all(r.keys() >= {"loss", "lr", "images_per_s", "epoch"} for r in records)


def test_resumed_run_equals_uninterrupted_run(tmp_path, device, monkeypatch):
    """Exactly on the CPU. On CUDA, in fp32 with deterministic cuDNN, within 1e-3: no kernel of this
    run is known to add with atomics, but cuDNN and cuBLAS may pick another algorithm (a workspace
    that did not fit), which changes the last bits. A resume that lost its random streams moves
    these weights by 1 to 30 % (measured on the CPU)."""
    config = small_config(checkpoint_every_steps=2)
    exact = {"rtol": 0, "atol": 0}
    if device.type == "cuda":
        config = small_config(checkpoint_every_steps=2, precision="fp32")
        monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
        exact = {"rtol": 1e-3, "atol": 1e-4}
    straight = pretrain(config, tmp_path / "straight", device, progress=False)
    first = pretrain(
        config, tmp_path / "resumed", device, stop_after=4, progress=False
    )  # stops mid-epoch 1
    second = pretrain(config, tmp_path / "resumed", device, progress=False)
    assert first.steps == 4 and second.steps == 9
    assert first.learning_rates + second.learning_rates == straight.learning_rates
    schedule = LearningRateSchedule(config, steps_per_epoch=3)
    assert straight.learning_rates == [schedule(s) for s in range(9)]
    a = load_checkpoint(latest_checkpoint(tmp_path / "straight" / "checkpoints"))
    b = load_checkpoint(latest_checkpoint(tmp_path / "resumed" / "checkpoints"))
    for key in a["backbone"]:
        torch.testing.assert_close(a["backbone"][key], b["backbone"][key], **exact)


def test_max_steps_caps_the_run_but_not_the_schedule(tmp_path):
    result = pretrain(small_config(max_steps=2), tmp_path, progress=False)
    assert result.steps == 2
    assert result.learning_rates == [LearningRateSchedule(small_config(), 3)(s) for s in range(2)]


def test_train_steps_sets_the_schedule_and_the_run_length_over_epochs(tmp_path):
    """7 steps at 3 an epoch (the official code's --train_steps): the cosine ends at step 7, not
    at the 9 of ``epochs``, and the third epoch is read in part; max_steps still only stops."""
    config = small_config(train_steps=7, checkpoint_every_steps=2)
    assert (config.schedule_steps(3), config.data_epochs(3)) == (7, 3)
    assert (small_config().schedule_steps(3), small_config().data_epochs(3)) == (9, 3)
    assert small_config(train_steps=10).data_epochs(3) == 4
    schedule = LearningRateSchedule(config, steps_per_epoch=3)
    assert schedule.total_steps == 7 and schedule.warmup_steps == 3
    result = pretrain(config, tmp_path / "run", progress=False)
    assert result.steps == 7
    assert result.learning_rates == [schedule(s) for s in range(7)]
    # 3/4 of the way down the cosine, where the 9 steps of ``epochs`` would be halfway
    assert result.learning_rates[-1] < 0.5 * LearningRateSchedule(small_config(), 3)(6)
    saved = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert saved[-1] == "step-00000007.pt"
    capped = pretrain(small_config(train_steps=7, max_steps=5), tmp_path / "capped", progress=False)
    assert capped.learning_rates == result.learning_rates[:5]  # two of them past the warm-up
    first = pretrain(config, tmp_path / "resumed", stop_after=5, progress=False)  # mid-epoch 1
    second = pretrain(config, tmp_path / "resumed", progress=False)
    assert first.learning_rates + second.learning_rates == result.learning_rates


def test_a_warm_up_as_long_as_the_run_is_logged(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="trainer.simclr_loop"):
        pretrain(small_config(train_steps=3, max_steps=1), tmp_path, progress=False)
    assert "the learning rate only rises" in caplog.text


def test_trains_from_an_image_folder_with_a_broken_file(tmp_path):
    from tests.trainer.test_datasets import write_tree

    root = write_tree(tmp_path / "tree", per_class=5)
    (root / "dog" / "zz-broken.jpg").write_bytes(b"garbage")
    config = small_config(
        dataset={
            "name": "imagefolder",
            "root": str(root),
            "image_size": 16,
            "max_side": 32,
            "loader_workers": 0,
        },
        batch_size=4,
        epochs=1,
    )
    result = pretrain(config, tmp_path / "run", progress=False)
    assert result.steps == 2 and torch.isfinite(torch.tensor(result.final_loss))


def test_gradient_cache_runs_in_the_loop(tmp_path, device):
    result = pretrain(small_config(chunk_size=8, max_steps=3), tmp_path, device, progress=False)
    assert result.steps == 3 and torch.isfinite(torch.tensor(result.final_loss))


def test_channels_last_on_the_cpu_trains_the_same_run(tmp_path):
    """The layout is a speed choice: the losses and weights of the run do not depend on it (in
    fp32: under bf16 each layout's kernels round differently, by about 1 % of the loss here)."""
    plain = pretrain(small_config(channels_last=False, precision="fp32"), tmp_path / "plain",
                     progress=False)  # fmt: skip
    fast = pretrain(small_config(channels_last=True, precision="fp32"), tmp_path / "channels-last",
                    progress=False)  # fmt: skip
    assert abs(plain.final_loss - fast.final_loss) < 1e-3
    a, b = (load_checkpoint(r.checkpoint)["backbone"] for r in (plain, fast))
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-3) for k in a)
