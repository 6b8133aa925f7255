"""The NT-Xent (normalised temperature-scaled cross-entropy) loss of SimCLR, eq. (1) of Chen et al. 2020.

For a batch of N images seen in two views, let z_1..z_2N be the L2-normalised projections and
s_ij = z_i . z_j / tau. The loss of anchor i with positive p(i) (its other view) is

    l_i = -log( exp(s_i,p(i)) / sum_{k != i} exp(s_ik) )

and the batch loss is the mean of l_i over all 2N anchors.

Under ``torch.distributed`` the negatives come from the global batch: every rank gathers all ranks'
projections with an autograd-aware all-gather (whose backward sums each rank's gradient back to its
owner), computes only the 2n rows of its own anchors against the 2N columns, and returns the mean
over its 2n anchors. With equal n on every rank the mean of the ranks' losses is the global loss,
and DDP's gradient averaging then yields exactly the gradient of the single-process loss over the
global batch. Nothing larger than 2n x 2N is ever built.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.amp import is_autocast_available

from trainer.distributed import is_distributed

# torch 2.14 renamed the tensor collectives (the old names warn); torch 2.11, the lent GPU
# machine's, has only the old ones
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter_single = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


class _AllGatherSumGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward returns, to each rank, the SUM over ranks of the
    gradient of its rows: one reduce-scatter, on NCCL and gloo alike (gloo has it in torch 2.11
    and 2.14), so the CPU's two-rank tests run the path a GPU cluster takes."""

    @staticmethod
    def forward(ctx, z: torch.Tensor) -> torch.Tensor:
        world = dist.get_world_size()
        gathered = z.new_empty((world * z.shape[0], *z.shape[1:]))
        _all_gather_single(gathered, z.contiguous())
        return gathered

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        local = grad.new_empty((grad.shape[0] // dist.get_world_size(), *grad.shape[1:]))
        _reduce_scatter_single(local, grad.contiguous(), op=dist.ReduceOp.SUM)
        return local


def _gather_with_grad(z: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """All ranks' rows of ``z`` stacked in rank order, the local offset into them, and the world size."""
    if not is_distributed():
        return z, 0, 1
    return _AllGatherSumGrad.apply(z), dist.get_rank() * z.shape[0], dist.get_world_size()


def nt_xent(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean NT-Xent loss over this process's 2n anchors, with negatives from the global batch.

    Args:
        z_a, z_b: (n, d) projections of the first and second view of this process's n images; any
            floating dtype (bf16 included): the similarities are computed in fp32, inside an
            autocast block too.
        temperature: tau > 0.
    Returns:
        A scalar fp32 tensor. On one process it is eq. (1) averaged over 2n anchors; under
        torch.distributed its mean over ranks is the loss of the global batch of 2N views.
    """
    if z_a.shape != z_b.shape or z_a.dim() != 2:
        raise ValueError(
            f"z_a and z_b must both be (n, d); got {tuple(z_a.shape)} and {tuple(z_b.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    kind = z_a.device.type  # fp32 inside the network's autocast too (where the device has one)
    with torch.autocast(kind, enabled=False) if is_autocast_available(kind) else nullcontext():
        n = z_a.shape[0]
        z_a = F.normalize(z_a.float(), dim=1)
        z_b = F.normalize(z_b.float(), dim=1)
        # one collective for both views: gather the (n, 2d) rows [z_a | z_b]
        gathered, offset, world = _gather_with_grad(torch.cat([z_a, z_b], dim=1))
        all_a, all_b = gathered.split(z_a.shape[1], dim=1)
        big_n = n * world
        columns = torch.cat([all_a, all_b])  # (2N, d): all first views, then all second views
        anchors = torch.cat([z_a, z_b])  # (2n, d): this rank's rows of ``columns``
        logits = anchors @ columns.T / temperature  # (2n, 2N)

        local = torch.arange(n, device=z_a.device) + offset
        self_column = torch.cat([local, local + big_n])
        positive_column = torch.cat([local + big_n, local])
        rows = torch.arange(2 * n, device=z_a.device)
        logits[rows, self_column] = float("-inf")
        return F.cross_entropy(logits, positive_column)
