import pytest
import torch

from trainer.checkpoint import (
    checkpoint_name,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    rng_state,
    save_atomic,
    set_rng_state,
)
from trainer.distributed import restore_rank_rng


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
