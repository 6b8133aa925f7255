import torch
from torch import nn

from tests.distributed import run_on_ranks
from trainer.global_bn import GlobalBatchNorm, convert_to_global_batch_norm
from trainer.losses import nt_xent

LOCAL_N = 6


def _model() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(4, 8), nn.BatchNorm1d(8),
    )  # fmt: skip


def _views(world: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(4)
    return tuple(
        torch.randn(world * LOCAL_N, 3, 5, 5, generator=generator) * 2 + 1 for _ in range(2)
    )


def _rank_step(rank: int, world: int):
    model = nn.parallel.DistributedDataParallel(convert_to_global_batch_norm(_model()))
    view_a, view_b = _views(world)
    local = slice(rank * LOCAL_N, (rank + 1) * LOCAL_N)
    z_a, z_b = model(torch.cat([view_a[local], view_b[local]])).chunk(2)
    loss = nt_xent(z_a, z_b, 0.2)
    loss.backward()
    norms = [m for m in model.modules() if isinstance(m, GlobalBatchNorm)]
    return (
        loss.item(),
        [p.grad.clone() for p in model.parameters()],
        [(m.running_mean.clone(), m.running_var.clone()) for m in norms],
    )


def test_global_batch_norm_on_two_ranks_equals_batch_norm_over_the_global_batch():
    results = run_on_ranks(_rank_step, 2)

    model = _model()
    view_a, view_b = _views(2)
    halves = [slice(r * LOCAL_N, (r + 1) * LOCAL_N) for r in range(2)]
    # one forward over every rank's [first views, second views]: the rows of the global batch
    ordered = torch.cat([torch.cat([view_a[h], view_b[h]]) for h in halves])
    z = model(ordered)
    z_a = torch.cat([z[2 * LOCAL_N * r : 2 * LOCAL_N * r + LOCAL_N] for r in range(2)])
    z_b = torch.cat([z[2 * LOCAL_N * r + LOCAL_N : 2 * LOCAL_N * (r + 1)] for r in range(2)])
    loss = nt_xent(z_a, z_b, 0.2)
    loss.backward()

    torch.testing.assert_close(
        torch.tensor(sum(r[0] for r in results) / 2), loss.detach(), rtol=1e-5, atol=1e-6
    )
    for _, grads, running in results:
        for grad, p in zip(grads, model.parameters(), strict=True):
            torch.testing.assert_close(grad, p.grad, rtol=1e-4, atol=1e-5)
        norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        for (mean, var), m in zip(running, norms, strict=True):
            torch.testing.assert_close(mean, m.running_mean, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(var, m.running_var, rtol=1e-5, atol=1e-6)


def test_conversion_keeps_state_and_is_plain_batch_norm_on_one_process():
    model = _model()
    model[1].running_mean.fill_(0.5)
    converted = convert_to_global_batch_norm(_model())
    converted[1].running_mean.fill_(0.5)
    assert isinstance(converted[1], GlobalBatchNorm) and isinstance(converted[6], GlobalBatchNorm)
    x = torch.randn(8, 3, 5, 5)
    torch.testing.assert_close(converted(x), model(x))
    converted.eval()
    model.eval()
    torch.testing.assert_close(converted(x), model(x))


def _rank_far_from_zero(rank: int, world: int) -> torch.Tensor:
    norm = GlobalBatchNorm(3)
    norm.running_mean.fill_(1e4)  # where the running mean has settled after some steps
    generator = torch.Generator().manual_seed(7)
    x = 1e4 + torch.randn(world * 64, 3, generator=generator)
    return norm(x[rank * 64 : (rank + 1) * 64]).detach()


def test_statistics_of_inputs_far_from_zero_keep_their_precision():
    """Activations with a mean of 1e4 and a deviation of 1: E[x^2] - E[x]^2 in float32 loses the
    variance entirely (x^2 ~ 1e8, float32 resolves about 8 there); the sums are taken around the
    running mean, where nothing cancels. Against float64 batch norm over the global batch."""
    local = torch.cat(run_on_ranks(_rank_far_from_zero, 2))
    generator = torch.Generator().manual_seed(7)
    x = (1e4 + torch.randn(128, 3, generator=generator)).double()
    expected = (x - x.mean(0)) / (x.var(0, unbiased=False) + 1e-5).sqrt()
    torch.testing.assert_close(local.double(), expected, rtol=1e-3, atol=1e-3)
