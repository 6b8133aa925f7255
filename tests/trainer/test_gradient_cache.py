import pytest
import torch
from torch import nn

from tests.distributed import run_on_ranks
from trainer.gradient_cache import gradient_cache_backward
from trainer.losses import nt_xent

LOCAL_N = 8


def rounding(device: torch.device) -> dict[str, float]:
    """Tolerances for the same sums in other orders: a GPU picks its kernels by batch size."""
    return {"rtol": 1e-4, "atol": 1e-6 if device.type == "cuda" else 1e-7}


def _group_norm_model() -> nn.Module:
    """No batch-dependent layer: chunking must not change the gradient at all."""
    torch.manual_seed(5)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 8),
    )  # fmt: skip


def _views(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(6)
    return torch.randn(n, 3, 6, 6, generator=generator), torch.randn(
        n, 3, 6, 6, generator=generator
    )


def _eval_dropout_free(model: nn.Module) -> nn.Module:
    # Dropout draws differ between a chunked and a whole-batch forward, so compare without it;
    # its replay across the two passes is tested separately.
    model[7].p = 0.0
    return model


@pytest.mark.parametrize("chunk_size", [1, 3, 8])
def test_chunked_gradients_equal_whole_batch_gradients(chunk_size, device):
    whole, chunked = (
        _eval_dropout_free(_group_norm_model()).to(device),
        _eval_dropout_free(_group_norm_model()).to(device),
    )
    view_a, view_b = (view.to(device) for view in _views(LOCAL_N))
    z_a, z_b = whole(torch.cat([view_a, view_b])).chunk(2)
    loss = nt_xent(z_a, z_b, 0.1)
    loss.backward()
    cached_loss = gradient_cache_backward(chunked, view_a, view_b, 0.1, chunk_size)
    assert cached_loss.item() == pytest.approx(
        loss.item(), rel=1e-5 if device.type == "cuda" else 1e-6
    )
    for a, b in zip(whole.parameters(), chunked.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, **rounding(device))


def test_dropout_is_replayed_between_the_two_passes(device):
    """The masks of the first pass come back in the second, on the device's own generator too."""
    model = _group_norm_model().to(device)
    view_a, view_b = (view.to(device) for view in _views(LOCAL_N))
    torch.manual_seed(9)
    gradient_cache_backward(model, view_a, view_b, 0.1, 4)
    grads = [p.grad.clone() for p in model.parameters()]
    # The same step by hand: if pass 2 drew new dropout masks, its gradient would belong to other
    # embeddings than the loss was computed on; replayed, it matches the analytic chain rule.
    model.zero_grad()
    torch.manual_seed(9)
    chunks = [*view_a.split(4), *view_b.split(4)]
    z_a, z_b = torch.cat([model(chunk) for chunk in chunks]).split(LOCAL_N)
    nt_xent(z_a, z_b, 0.1).backward()
    for a, b in zip(grads, model.parameters(), strict=True):
        torch.testing.assert_close(a, b.grad, **rounding(device))


def test_batch_norm_statistics_move_once_per_chunk_in_the_second_pass_only():
    model = nn.Sequential(nn.Flatten(), nn.Linear(108, 8), nn.BatchNorm1d(8))
    reference = nn.Sequential(nn.Flatten(), nn.Linear(108, 8), nn.BatchNorm1d(8))
    reference.load_state_dict(model.state_dict())
    view_a, view_b = _views(LOCAL_N)
    gradient_cache_backward(model, view_a, view_b, 0.1, LOCAL_N)
    reference(view_a)
    reference(view_b)
    assert model[2].num_batches_tracked.item() == 2  # one update per chunk, in the second pass only
    torch.testing.assert_close(model[2].running_mean, reference[2].running_mean)


def _rank_grads(rank: int, world: int, chunk_size: int | None):
    model = nn.parallel.DistributedDataParallel(_eval_dropout_free(_group_norm_model()))
    view_a, view_b = _views(world * LOCAL_N)
    local = slice(rank * LOCAL_N, (rank + 1) * LOCAL_N)
    if chunk_size is None:
        z_a, z_b = model(torch.cat([view_a[local], view_b[local]])).chunk(2)
        nt_xent(z_a, z_b, 0.1).backward()
    else:
        gradient_cache_backward(model, view_a[local], view_b[local], 0.1, chunk_size)
    return [p.grad.clone() for p in model.parameters()]


def _rank_grads_whole(rank: int, world: int):
    return _rank_grads(rank, world, None)


def _rank_grads_chunked(rank: int, world: int):
    return _rank_grads(rank, world, 3)


def test_chunked_equals_unchunked_on_two_gloo_processes():
    whole, chunked = run_on_ranks(_rank_grads_whole, 2), run_on_ranks(_rank_grads_chunked, 2)
    for rank in range(2):
        for a, b in zip(whole[rank], chunked[rank], strict=True):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-7)
    for a, b in zip(chunked[0], chunked[1], strict=True):
        torch.testing.assert_close(a, b)  # DDP synchronised the accumulated gradients
