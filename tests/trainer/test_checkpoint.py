import os
import pickle
import random
import re
import shlex

import numpy as np
import pytest
import torch

from trainer.checkpoint import (
    RAY_CHECKPOINT_FILE,
    CheckpointError,
    checkpoint_name,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_atomic,
)
from trainer.distributed import restore_rank_rng
from trainer.rng import rng_state, set_rng_state


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("disk full (simulated)")


def test_atomic_save_never_leaves_a_partial_file(tmp_path):
    path = tmp_path / checkpoint_name(5)
    save_atomic({"step": 5}, path)
    with pytest.raises(RuntimeError, match="disk full"):
        save_atomic({"step": 6, "bad": Unpicklable()}, path)
    assert load_checkpoint(path)["step"] == 5
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_latest_and_prune(tmp_path):
    for step in (10, 2, 30):
        save_atomic({"step": step}, tmp_path / checkpoint_name(step))
    assert latest_checkpoint(tmp_path).name == "step-00000030.pt"
    prune_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000010.pt", "step-00000030.pt"]
    assert latest_checkpoint(tmp_path / "none") is None


def test_corrupt_or_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt"):
        load_checkpoint(bad)


def test_rng_state_round_trip():
    state = rng_state()
    first = torch.rand(3)
    set_rng_state(state)
    torch.testing.assert_close(torch.rand(3), first)


def test_a_rank_resumes_its_own_rng_stream_or_reseeds_when_the_worker_count_changed(caplog):
    torch.manual_seed(7)
    saved = [rng_state(), {"never": "read"}]  # rank 0's state, then rank 1's
    expected = torch.rand(3)
    torch.manual_seed(99)
    restore_rank_rng(saved, rank=0, world=2, seed=0, step=40)
    assert torch.equal(torch.rand(3), expected)

    restore_rank_rng(saved, rank=2, world=3, seed=5, step=40)  # two saved states, three ranks
    reseeded = torch.rand(3)
    torch.manual_seed(5 + 1 + 2 + 40)
    assert torch.equal(reseeded, torch.rand(3))
    assert "checkpoint from 2 workers resumed on 3: RNG reseeded" in caplog.text


# --- loading is weights-only: a file that would run code is refused, old checkpoints still load ---


class RunsCode:
    """Unpickling this runs a shell command (the attack a checkpoint path must not allow)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


class NotAllowed:
    """A harmless class that is simply not on the allow-list."""


def _malicious_files(tmp_path):
    marker = tmp_path / "pwned"
    as_checkpoint = tmp_path / "evil.pt"
    torch.save({"step": 1, "backbone": {}, "config": {}, "x": RunsCode(marker)}, as_checkpoint)
    as_pickle = tmp_path / "evil.pkl"  # a plain pickle, not torch's zip format
    as_pickle.write_bytes(pickle.dumps(RunsCode(marker), protocol=2))
    return marker, [as_checkpoint, as_pickle]


def test_a_checkpoint_that_would_run_code_is_refused_and_nothing_runs(tmp_path):
    marker, files = _malicious_files(tmp_path)
    for path in files:
        with pytest.raises(CheckpointError, match=re.escape(str(path))) as refused:
            load_checkpoint(path)
        assert "touch" not in str(refused.value) and "pwned" not in str(refused.value)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match=r"may not hold \(posix\.system\)|\(nt\.system\)"):
        load_checkpoint(files[0])
    assert not marker.exists()
    # control: the same bytes do run the command when unpickled without the restriction
    pickle.loads(files[1].read_bytes())
    assert marker.exists()


def test_an_object_of_a_class_not_allowed_is_refused(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save({"step": 1, "extra": NotAllowed()}, path)
    with pytest.raises(CheckpointError, match=r"foreign\.pt holds .*NotAllowed\).*refused"):
        load_checkpoint(path)


def test_load_encoder_and_the_feature_cache_refuse_a_file_that_would_run_code(tmp_path):
    from trainer.contracts.config import LinearProbeConfig
    from trainer.linear_probe import CheckpointError as EvaluateCheckpointError
    from trainer.linear_probe import cached_features, feature_cache_dir, load_encoder

    marker, (evil, _) = _malicious_files(tmp_path)
    (tmp_path / "ckpt").mkdir()
    evil.rename(tmp_path / "ckpt" / RAY_CHECKPOINT_FILE)
    with pytest.raises(EvaluateCheckpointError, match=r"unreadable checkpoint: .*refused"):
        load_encoder(tmp_path / "ckpt")
    with pytest.raises(EvaluateCheckpointError):
        load_encoder(tmp_path / "ckpt" / RAY_CHECKPOINT_FILE)

    config = LinearProbeConfig.model_validate({
        "source_job_id": "job-x", "checkpoint": "step-00000003",
        "checkpoint_path": str(tmp_path / "ckpt"), "dataset": {"name": "digits"},
    })  # fmt: skip
    cache = feature_cache_dir(tmp_path / "storage", config)
    cache.mkdir(parents=True)
    for split in ("train", "test"):
        torch.save({"features": RunsCode(marker), "labels": torch.zeros(1)}, cache / f"{split}.pt")
    with pytest.raises(CheckpointError, match="refused"):
        cached_features(None, config, tmp_path / "storage", 0, 1, torch.device("cpu"))
    assert not marker.exists()


def _legacy_rng_state() -> dict:
    """``rng_state`` as the code before weights-only loading wrote it: NumPy's tuple."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }


def test_a_checkpoint_with_numpys_legacy_rng_tuple_loads_and_restores_every_stream(tmp_path):
    np.random.seed(3)
    random.seed(4)
    torch.manual_seed(5)
    state = {"step": 7, "rng": [_legacy_rng_state()], "loss": float("nan")}
    torch.save(state, tmp_path / "old.pt")  # as ``save_atomic`` did
    expected = (np.random.rand(4), random.random(), torch.rand(3))
    np.random.seed(0)
    random.seed(0)
    torch.manual_seed(0)

    loaded = load_checkpoint(tmp_path / "old.pt")
    assert isinstance(loaded["rng"][0]["numpy"], tuple)
    assert loaded["rng"][0]["numpy"][1].dtype == np.uint32
    restore_rank_rng(loaded["rng"], rank=0, world=1, seed=0, step=7)
    np.testing.assert_array_equal(np.random.rand(4), expected[0])
    assert random.random() == expected[1]
    assert torch.equal(torch.rand(3), expected[2])


def test_new_checkpoints_need_no_allowed_globals_and_restore_numpy(tmp_path):
    np.random.seed(11)
    np.random.standard_normal()  # leaves a cached Gaussian in the state
    state = rng_state()
    expected = (np.random.standard_normal(), np.random.rand(3))
    save_atomic({"rng": [state]}, tmp_path / "new.pt")
    assert torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / "new.pt") == []
    with torch.serialization.safe_globals([]):  # plain weights_only=True, no allow-list
        torch.load(tmp_path / "new.pt", weights_only=True)
    np.random.seed(0)
    set_rng_state(load_checkpoint(tmp_path / "new.pt")["rng"][0])
    assert np.random.standard_normal() == expected[0]
    np.testing.assert_array_equal(np.random.rand(3), expected[1])


def test_a_run_resumes_from_a_checkpoint_written_by_the_old_code(tmp_path):
    from tests.trainer.test_pretrain import small_config
    from trainer.pretrain import pretrain

    config = small_config(checkpoint_every_steps=2)
    straight = pretrain(config, tmp_path / "straight", progress=False)
    first = pretrain(config, tmp_path / "resumed", stop_after=4, progress=False)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(first.checkpoint) == []
    # rewrite the checkpoint as the old code wrote it: NumPy's state as np.random.get_state() gave
    state = load_checkpoint(first.checkpoint)
    for rank_state in state["rng"]:
        np_state = rank_state["numpy"]
        rank_state["numpy"] = (
            np_state["bit_generator"], np.asarray(np_state["key"], dtype=np.uint32),
            np_state["pos"], np_state["has_gauss"], np_state["gauss"],
        )  # fmt: skip
    save_atomic(state, first.checkpoint)
    assert "numpy.ndarray" in torch.serialization.get_unsafe_globals_in_checkpoint(first.checkpoint)
    second = pretrain(config, tmp_path / "resumed", progress=False)
    assert second.steps == 9
    assert first.learning_rates + second.learning_rates == straight.learning_rates
    a = load_checkpoint(latest_checkpoint(tmp_path / "straight" / "checkpoints"))
    b = load_checkpoint(latest_checkpoint(tmp_path / "resumed" / "checkpoints"))
    for key in a["backbone"]:
        torch.testing.assert_close(a["backbone"][key], b["backbone"][key], rtol=0, atol=0)
    assert isinstance(b["rng"][0]["numpy"], dict)  # written again in the new form
