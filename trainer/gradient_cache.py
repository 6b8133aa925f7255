"""Exact NT-Xent gradients for a batch of any size with memory bounded by a chunk (gradient cache,
Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup").

Accumulating gradients over micro-batches does not work for SimCLR: each micro-batch would see only
its own negatives. The gradient cache keeps the whole batch's negatives:

1. embed every view chunk by chunk without autograd (activations of one chunk alive at a time);
2. compute the NT-Xent loss over all embeddings (under torch.distributed: the global batch) and its
   gradient with respect to the embeddings, dL/dz, which is small (2n x d);
3. re-run each chunk with autograd and backpropagate dL/dz of its rows: by the chain rule the sum of
   these backward passes is dL/dtheta of the full batch.

Random state (dropout, stochastic depth) is replayed: each chunk's second pass starts from the RNG
state its first pass started from. Batch-norm running statistics are restored after the first pass,
so that only the second pass moves them: once per chunk, not once per step as without chunking.
With k = 2n / ``chunk_size`` chunks a step applies k updates of momentum m (0.1 by default), each
towards one chunk's statistics. What that means at evaluation (eval mode, where the running
statistics normalise): the running mean moves to a geometrically weighted mean of the chunks'
means (the later chunks weigh more) rather than the step's mean; the running variance tracks the
variance within chunks, which misses the spread between the chunks' means (small when chunks are
random draws of the batch, as here); and the statistics follow the last steps more closely
(weight 1 - (1 - m)^k on each step instead of m). ``tests/trainer/test_gradient_cache.py``
asserts this behaviour.

Batch normalisation is also the one difference in the gradient. Each chunk normalises with its own statistics, so a
chunked step is not the unchunked step on a network with batch norm (it is exact for networks
without batch-dependent layers, e.g. GroupNorm). Chunks are cut from the first views and from the
second views separately, so the two views of an image are always in different chunks: a positive
pair never shares batch statistics, the leak that the paper's global BN prevents. Within a chunk
the statistics come from ``chunk_size`` views of one rank, a smaller population than global BN's.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

from trainer.losses import nt_xent


def _norm_buffers(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(buffer, saved copy) for every running statistic of every batch norm in ``model``."""
    saved = []
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
            for buffer in (module.running_mean, module.running_var, module.num_batches_tracked):
                if buffer is not None:
                    saved.append((buffer, buffer.clone()))
    return saved


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def gradient_cache_backward(
    model: nn.Module,
    view_a: torch.Tensor,
    view_b: torch.Tensor,
    temperature: float,
    chunk_size: int,
    autocast=nullcontext,
) -> torch.Tensor:
    """Accumulate into ``model``'s ``.grad`` the gradient of NT-Xent over the whole batch.

    ``model`` maps views to projections (it may be DDP-wrapped: gradients are synchronised once,
    on the last chunk). ``view_a``, ``view_b``: (n, C, H, W). ``autocast``: a factory of the
    precision context for forward passes. Returns the loss, detached.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    chunks = [*view_a.split(chunk_size), *view_b.split(chunk_size)]
    device = view_a.device
    statistics = _norm_buffers(model)
    rng_states = []
    with torch.no_grad():
        embeddings = []
        for chunk in chunks:
            rng_states.append(_rng_state(device))
            with autocast():
                embeddings.append(model(chunk).float())
    for buffer, saved in statistics:
        buffer.copy_(saved)

    z = torch.cat(embeddings).requires_grad_()
    z_a, z_b = z.split(view_a.shape[0])
    loss = nt_xent(z_a, z_b, temperature)
    loss.backward()
    grads = z.grad.split([chunk.shape[0] for chunk in chunks])

    after = _rng_state(device)
    no_sync = getattr(model, "no_sync", nullcontext)
    for index, (chunk, grad, rng) in enumerate(zip(chunks, grads, rng_states, strict=True)):
        _set_rng_state(rng, device)
        with no_sync() if index < len(chunks) - 1 else nullcontext():
            with autocast():
                projection = model(chunk)
            projection.float().backward(grad)
    _set_rng_state(after, device)
    return loss.detach()
