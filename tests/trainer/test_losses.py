import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.distributed import run_on_ranks
from trainer.losses import nt_xent
from trainer.precision import autocast_for


def reference_nt_xent(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float) -> float:
    """Eq. (1) of the SimCLR paper written anchor by anchor, in float64."""
    z = F.normalize(torch.cat([z_a, z_b]).double(), dim=1)
    n = z_a.shape[0]
    losses = []
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        sims = [(z[i] @ z[k]).item() / temperature for k in range(2 * n)]
        denominator = sum(math.exp(s) for k, s in enumerate(sims) if k != i)
        losses.append(-(sims[positive] - math.log(denominator)))
    return sum(losses) / (2 * n)


@pytest.mark.parametrize("temperature", [0.05, 0.1, 0.5])
def test_matches_equation_one(temperature, device):
    z_a, z_b = torch.randn(6, 5, device=device), torch.randn(6, 5, device=device)
    assert nt_xent(z_a, z_b, temperature).item() == pytest.approx(
        reference_nt_xent(z_a, z_b, temperature), rel=1e-5
    )


def reference_nt_xent_tensor(
    z_a: torch.Tensor, z_b: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Eq. (1) anchor by anchor with torch operations, so autograd gives its exact gradient: the
    reference for nt_xent's gradient (run it in float64)."""
    z = torch.cat([z_a, z_b])
    z = z / z.norm(dim=1, keepdim=True)
    n = z_a.shape[0]
    losses = []
    for i in range(2 * n):
        others = torch.cat([z[:i], z[i + 1 :]])  # every k != i
        denominator = torch.logsumexp(others @ z[i] / temperature, dim=0)
        losses.append(denominator - z[i] @ z[(i + n) % (2 * n)] / temperature)
    return torch.stack(losses).mean()


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_gradient_matches_autograd_through_equation_one(temperature, device):
    """Both the anchors' and the negatives' paths carry gradient: detaching either (a bug some
    implementations shipped) changes the gradient, not the value."""
    generator = torch.Generator().manual_seed(3)
    z_a = torch.randn(5, 4, generator=generator, dtype=torch.float64).to(device)
    z_b = torch.randn(5, 4, generator=generator, dtype=torch.float64).to(device)
    ours = [z_a.clone().requires_grad_(), z_b.clone().requires_grad_()]
    nt_xent(*ours, temperature).backward()
    reference = [z_a.clone().requires_grad_(), z_b.clone().requires_grad_()]
    reference_nt_xent_tensor(*reference, temperature).backward()
    for got, expected in zip(ours, reference, strict=True):
        # nt_xent computes in float32: a float32-sized tolerance on float64 references
        torch.testing.assert_close(got.grad, expected.grad, rtol=1e-4, atol=1e-6)


def test_scale_invariant_and_symmetric():
    z_a, z_b = torch.randn(8, 16), torch.randn(8, 16)
    loss = nt_xent(z_a, z_b, 0.1)
    assert nt_xent(3 * z_a, 0.5 * z_b, 0.1).item() == pytest.approx(loss.item(), rel=1e-5)
    assert nt_xent(z_b, z_a, 0.1).item() == pytest.approx(loss.item(), rel=1e-5)


def test_aligned_views_score_lower_than_random_ones():
    z = torch.randn(32, 64)
    assert nt_xent(z, z + 0.01 * torch.randn_like(z), 0.1) < nt_xent(z, torch.randn_like(z), 0.1)


def test_stable_at_low_temperature_with_bf16_inputs(device):
    z_a = (torch.randn(64, 128, device=device) * 50).requires_grad_()
    z_b = z_a.detach() + torch.randn(64, 128, device=device)
    loss_bf16 = nt_xent(z_a.bfloat16(), z_b.bfloat16(), 0.05)
    assert loss_bf16.dtype == torch.float32
    assert torch.isfinite(loss_bf16)
    loss_bf16.backward()
    assert torch.isfinite(z_a.grad).all()
    assert loss_bf16.item() == pytest.approx(nt_xent(z_a, z_b, 0.05).item(), rel=0.05)


def test_the_similarities_stay_fp32_inside_an_autocast_block(device):
    """Called where the network ran, under bf16 autocast, the loss is still the fp32 one: its
    matmul is not cast down (bf16 rounds a cosine by up to 2^-9, a logit by 1/tau times that: 0.02
    at tau = 0.1, more than the gap between close negatives)."""
    z_a, z_b = torch.randn(2, 64, 128, device=device, requires_grad=True)
    plain = nt_xent(z_a, z_b, 0.1)
    with autocast_for("bf16", z_a.device):
        inside = nt_xent(z_a, z_b, 0.1)
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, plain, rtol=1e-6, atol=1e-6)
    grads = [torch.autograd.grad(loss, (z_a, z_b)) for loss in (plain, inside)]
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-7)


def test_shapes_alone_on_the_meta_device():
    """A device without autocast (meta: shape inference, FLOP counting) is not refused."""
    z = torch.empty(8, 16, device="meta")
    assert nt_xent(z, z, 0.1).shape == ()


def test_rejects_bad_inputs():
    with pytest.raises(ValueError, match="must both be"):
        nt_xent(torch.randn(4, 3), torch.randn(5, 3), 0.1)
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(torch.randn(4, 3), torch.randn(4, 3), 0.0)


# --- torch.distributed: 2 gloo processes against one process over the global batch ---------------

WORLD = 2
LOCAL_N = 4


def _model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 8))


def _global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    return torch.randn(WORLD * LOCAL_N, 10, generator=generator), torch.randn(
        WORLD * LOCAL_N, 10, generator=generator
    )


def _rank_loss_and_grads(rank: int, world: int):
    model = nn.parallel.DistributedDataParallel(_model())
    x_a, x_b = _global_batch()
    local = slice(rank * LOCAL_N, (rank + 1) * LOCAL_N)
    loss = nt_xent(model(x_a[local]), model(x_b[local]), 0.1)
    loss.backward()
    return loss.item(), [p.grad.clone() for p in model.parameters()]


def test_distributed_loss_and_gradients_equal_equation_one_over_the_global_batch():
    results = run_on_ranks(_rank_loss_and_grads, WORLD)

    # the reference: eq. (1) over the global batch on one process, in float64, through autograd
    model = _model().double()
    x_a, x_b = (x.double() for x in _global_batch())
    single = reference_nt_xent_tensor(model(x_a), model(x_b), 0.1)
    single.backward()

    mean_rank_loss = sum(results[r][0] for r in range(WORLD)) / WORLD
    assert mean_rank_loss == pytest.approx(single.item(), rel=1e-5)
    for rank in range(WORLD):
        for ddp_grad, p in zip(results[rank][1], model.parameters(), strict=True):
            torch.testing.assert_close(ddp_grad, p.grad.float(), rtol=1e-4, atol=1e-6)
