"""Global batch normalisation: batch statistics over the whole global batch, on any device.

SimCLR normalises with statistics of all devices' examples (paper section 2, "global BN"): with
per-device statistics the two views of an image, which sit on the same device, share them, and the
network can use that leak to find positives. PyTorch's ``SyncBatchNorm`` runs on CUDA only (and
DDP refuses it on the CPU), so this module does the same with one all-reduce of per-channel sums
in the forward pass and one in the backward pass, which gloo and NCCL both provide.

Forward over the global batch of M values per channel (all ranks), in one all-reduce of
(sum(d), sum(d^2), M) with d = x - c, c a shift equal on every rank (the running mean, which global
statistics keep identical everywhere; subtracting it avoids the cancellation of E[x^2] - E[x]^2):
    mu = c + sum(d) / M,  var = sum(d^2) / M - (sum(d) / M)^2,  xhat = (x - mu) / sqrt(var + eps)
    y = gamma * xhat + beta
Backward, for the gradient dy that reaches this rank's outputs:
    dx = gamma / sqrt(var + eps) * (dy - mean_global(dy) - xhat * mean_global(dy * xhat))
and the local sums sum(dy * xhat), sum(dy) for gamma and beta, which DDP then averages like every
other parameter gradient. Running statistics use the unbiased global variance, var * M / (M - 1).
Outside training, or on one process, it is an ordinary batch norm.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from trainer.distributed import is_distributed


def _channel_dims(x: torch.Tensor) -> list[int]:
    return [0, *range(2, x.dim())]


def _channel_shape(x: torch.Tensor) -> list[int]:
    return [1, -1] + [1] * (x.dim() - 2)


class _GlobalBatchNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, shift, eps):
        dims, shape = _channel_dims(x), _channel_shape(x)
        channels = x.shape[1]
        shifted = x.float() - shift.float().view(shape)
        sums = torch.cat(
            [
                shifted.sum(dims),
                shifted.pow(2).sum(dims),
                shifted.new_tensor([x.numel() / channels]),
            ]
        )
        dist.all_reduce(sums)
        count = sums[-1]
        mean_shifted = sums[:channels] / count
        var = (sums[channels : 2 * channels] / count - mean_shifted.pow(2)).clamp_(min=0)
        mean = shift.float() + mean_shifted
        invstd = torch.rsqrt(var + eps)
        xhat = (shifted - mean_shifted.view(shape)) * invstd.view(shape)
        out = xhat * weight.float().view(shape) + bias.float().view(shape)
        ctx.mark_non_differentiable(mean, var, count)
        ctx.save_for_backward(xhat, invstd, weight, count)
        return out.to(x.dtype), mean, var, count

    @staticmethod
    def backward(ctx, grad_out, _grad_mean, _grad_var, _grad_count):
        xhat, invstd, weight, count = ctx.saved_tensors
        dims, shape = _channel_dims(xhat), _channel_shape(xhat)
        dy = grad_out.float()
        local = torch.cat([dy.sum(dims), (dy * xhat).sum(dims)])
        total = local.clone()
        dist.all_reduce(total)
        channels = xhat.shape[1]
        mean_dy, mean_dy_xhat = (total / count).split(channels)
        scale = (weight.float() * invstd).view(shape)
        grad_x = scale * (dy - mean_dy.view(shape) - xhat * mean_dy_xhat.view(shape))
        grad_bias, grad_weight = local.split(channels)
        return (
            grad_x.to(grad_out.dtype),
            grad_weight.to(weight.dtype),
            grad_bias.to(weight.dtype),
            None,
            None,
        )


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """A batch norm over (N, C, ...) inputs whose training statistics span every rank."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(
                f"expected an input of at least 2 dimensions (N, C, ...), got {x.dim()}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if not (self.training and is_distributed()):
            return super().forward(x)
        weight = self.weight if self.weight is not None else x.new_ones(x.shape[1])
        bias = self.bias if self.bias is not None else x.new_zeros(x.shape[1])
        shift = self.running_mean if self.track_running_stats else x.new_zeros(x.shape[1])
        out, mean, var, count = _GlobalBatchNormFunction.apply(
            x, weight, bias, shift.detach(), self.eps
        )
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = (
                    self.momentum
                    if self.momentum is not None
                    else 1.0 / self.num_batches_tracked.item()
                )
                unbiased = var * (count / (count - 1).clamp(min=1))
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        return out


def convert_to_global_batch_norm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm1d/2d/3d in ``module`` by a ``GlobalBatchNorm`` with the same state."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
        module, GlobalBatchNorm
    ):
        converted = GlobalBatchNorm(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
        )
        if module.affine:
            with torch.no_grad():
                converted.weight.copy_(module.weight)
                converted.bias.copy_(module.bias)
            converted.weight.requires_grad_(module.weight.requires_grad)
            converted.bias.requires_grad_(module.bias.requires_grad)
        if module.track_running_stats:
            converted.running_mean.copy_(module.running_mean)
            converted.running_var.copy_(module.running_var)
            converted.num_batches_tracked.copy_(module.num_batches_tracked)
        return converted
    for name, child in module.named_children():
        module.add_module(name, convert_to_global_batch_norm(child))
    return module
