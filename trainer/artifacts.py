"""Pictures a job leaves for a person to look at: image grids, 2-D scatter plots, loss curves."""

from __future__ import annotations

import io

import torch
from PIL import Image
from torchvision.utils import make_grid

from trainer.plots import pyplot

MIN_SHOWN_SIDE = 64


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def image_grid_png(images: torch.Tensor, per_row: int) -> bytes:
    """PNG of float images in [0, 1] (B, C, H, W), ``per_row`` to a row; small images (digits,
    CIFAR) are shown enlarged."""
    images = images.detach().float().cpu().clamp(0, 1)
    grid = make_grid(images, nrow=per_row, padding=2, pad_value=1.0)
    pixels = grid.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    image = Image.fromarray(pixels)  # make_grid gives 3 channels, also for grey images
    scale = -(-MIN_SHOWN_SIDE // images.shape[-1])
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    return _png(image)


def views_grid_png(view_a: torch.Tensor, view_b: torch.Tensor, count: int = 8) -> bytes:
    """PNG of ``count`` augmented pairs: first views on the top row, second views below, so the
    two views of one image stand in one column. Views are float images in [0, 1]."""
    count = min(count, view_a.shape[0])
    return image_grid_png(torch.cat([view_a[:count], view_b[:count]]), per_row=count)


def _figure_png(figure) -> bytes:
    plt = pyplot()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def scatter_png(samples: torch.Tensor, reference: torch.Tensor, title: str) -> bytes:
    """2-D samples (orange) over held-out data (grey)."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(5, 5), constrained_layout=True)
    reference, samples = reference.detach().cpu().numpy(), samples.detach().cpu().numpy()
    axis.scatter(reference[:, 0], reference[:, 1], s=3, c="0.6", label="data")
    axis.scatter(samples[:, 0], samples[:, 1], s=3, c="tab:orange", label="samples")
    low, high = reference.min(0) - 0.5, reference.max(0) + 0.5
    axis.set(xlim=(low[0], high[0]), ylim=(low[1], high[1]), title=title, aspect="equal")
    axis.legend(loc="upper right")
    return _figure_png(figure)


def curves_png(history: list[dict[str, float]], names: list[str], title: str) -> bytes:
    """One panel per metric name against the step, from rows that hold it."""
    plt = pyplot()
    figure, axes = plt.subplots(len(names), 1, figsize=(7, 2.4 * len(names)), squeeze=False,
                                constrained_layout=True)  # fmt: skip
    for axis, name in zip(axes[:, 0], names, strict=True):
        rows = [row for row in history if name in row]
        axis.plot(
            [row["step"] for row in rows],
            [row[name] for row in rows],
            marker="." if len(rows) < 30 else None,
        )
        axis.set(ylabel=name)
        axis.grid(alpha=0.3)
    axes[-1, 0].set(xlabel="step")
    axes[0, 0].set(title=title)
    return _figure_png(figure)
