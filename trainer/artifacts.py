"""Pictures a job leaves for a person to look at."""

from __future__ import annotations

import io

import torch
from PIL import Image
from torchvision.utils import make_grid

MIN_SHOWN_SIDE = 64


def views_grid_png(view_a: torch.Tensor, view_b: torch.Tensor, count: int = 8) -> bytes:
    """PNG of ``count`` augmented pairs: first views on the top row, second views below, so the
    two views of one image stand in one column. Views are float images in [0, 1]."""
    count = min(count, view_a.shape[0])
    pairs = torch.cat([view_a[:count], view_b[:count]]).detach().float().cpu().clamp(0, 1)
    grid = make_grid(pairs, nrow=count, padding=2, pad_value=1.0)
    pixels = grid.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    image = Image.fromarray(pixels)
    scale = -(-MIN_SHOWN_SIDE // view_a.shape[-1])  # small views (digits, CIFAR) shown larger
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
