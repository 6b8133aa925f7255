"""The SimCLR augmentation pipeline, batched, on any device.

``SimCLRAugment`` takes a whole batch and returns two views of it, drawing fresh random parameters
for every image and every view, with no Python loop over images. It follows the paper (Chen et al.
2020, App. A) and the official code (``data_util.py``):

1. random resized crop: area fraction U(0.08, 1), log aspect ratio U(log 3/4, log 4/3), sides and
   position in whole pixels, ten tries then a centre crop (torchvision's rule), resized to ``size``
   bilinearly without anti-aliasing (the official code resizes bicubic, also without it);
2. horizontal flip with p = 0.5, done with the crop;
3. colour jitter with p = 0.8: brightness, contrast and saturation factors U(1 - 0.8s, 1 + 0.8s),
   hue shift U(-0.2s, 0.2s) of a turn, the four applied in a random order per image;
4. grayscale with p = 0.2 (ITU-R 601 luma, the weights torchvision uses);
5. Gaussian blur with p = 0.5 (when ``blur``): sigma U(0.1, 2.0), a kernel of 2 * (size // 20) + 1
   taps (23 at 224 px, as in the official code's ``size // 10`` "kernel size" used as a diameter),
   reflect padding (the official code pads with zeros, which darkens the border). Taps further than
   4 sigma_max from the centre are dropped (17 instead of 23 at 224 px): together they weigh less
   than 2e-5 of the kernel, below the resolution of an 8-bit image. Where the views are blurred
   one by one (below), the same rule is applied to each view's own sigma: 2 * ceil(4 sigma) + 1
   taps, 10.4 on average instead of 17 (the taps dropped weigh at most 1.8e-5 for any sigma in
   [0.1, 2]).

The colour operations run on the views that draw each one, so their cost is what the probabilities
say: on a CPU view by view in place for views of 64 px or more, each operation and the blur fused
into one or two passes over the view by numba (``view_kernels``), otherwise on the gathered subset.
On the CPU the batch is processed in chunks (``chunk_size`` images, by default as many as keep their
views within 8 MiB) so that intermediates stay in cache, and crops of 40 px or more are cut and
resized one by one (``two_crops``). ``compile=True`` fuses each colour and grayscale operation, with
the gather and scatter of its subset, into one kernel with ``torch.compile`` (dynamic batch
dimension: compiled once per process, plus a specialisation for subsets of one view).
"""

from __future__ import annotations

import ctypes
import logging
import math
import sys
from collections.abc import Callable
from functools import cache
from types import ModuleType
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

LUMA = (0.2989, 0.587, 0.114)
Sextants = TypeVar("Sextants", float, torch.Tensor)
_CROP_TRIES = 10
# On a CPU, crop by crop beats one grid_sample over the batch from here (measured, one thread:
# 44 against 58 us a view at 48 px, 34 against 21 at 32 px, where the per-crop call dominates).
_CROP_BY_CROP_MIN_SIZE = 40
# On a CPU, the colour operations and the blur view by view from here (``_view_by_view``).
_VIEW_BY_VIEW_MIN_SIZE = 64
# The views of one CPU chunk: few enough to stay in cache (6 images at 224 px; 4 to 8 measured
# alike), many enough that small views are not processed a few at a time (8 at 32 px: 2.7x slower
# than the default 341).
_CHUNK_BYTES = 8 << 20
# One compiled ``apply_to_subset`` serves five operations, each specialised for subsets of one view
# and of several: more than dynamo's default of eight graphs per function.
_RECOMPILE_LIMIT = 32


_HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = 14  # Linux, <sys/mman.h>
# glibc's largest mmap threshold: a request this large gets a mapping of its own, which the advice
# below dies with; a smaller one may reuse heap pages already touched (no gain) and would leave the
# advice on the heap for whatever is allocated there next.
_HUGE_PAGES_FROM = 32 << 20


@cache
def _libc() -> ctypes.CDLL | None:
    return ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def empty_views(shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """An uninitialised float32 tensor for a batch of views; on a Linux CPU, one of 32 MiB or more
    has its whole 2-MiB pages asked to be transparent huge pages (``madvise(MADV_HUGEPAGE)``).

    The first write to each 4-KiB page of fresh memory is a page fault: a batch of 224-px views
    (588 KiB a view) spent about 0.2 ms a view in them on this project's VMs, as long as cutting
    its crop. 2-MiB pages take 512x fewer (SimCLRAugment(224) at 64 images: 1.87x -> 2.12x
    lightly's views/s, docs/benchmarks.md). It is a hint: a kernel whose THP setting is ``never``
    ignores it, and the tensor is the same either way.
    """
    views = torch.empty(shape, device=device)
    libc = _libc()
    nbytes = views.numel() * views.element_size()
    if libc is None or views.device.type != "cpu" or nbytes < _HUGE_PAGES_FROM:
        return views
    start = -(-views.data_ptr() // _HUGE_PAGE) * _HUGE_PAGE
    end = (views.data_ptr() + nbytes) // _HUGE_PAGE * _HUGE_PAGE
    libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_HUGEPAGE)
    return views


def to_float_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 in [0, 255] or float in [0, 1] -> float32 in [0, 1], same shape."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    if not images.is_floating_point():
        raise TypeError(f"images must be uint8 or floating point, got {images.dtype}")
    return images.float()


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(M, 3, H, W) -> (M, 1, H, W) luma."""
    r, g, b = x.unbind(1)
    return torch.mul(r, LUMA[0]).add_(g, alpha=LUMA[1]).add_(b, alpha=LUMA[2]).unsqueeze(1)


def _per_view(factor: torch.Tensor) -> torch.Tensor:
    """One parameter per view (M,), shaped to broadcast over views (M, C, H, W)."""
    return factor.view(-1, 1, 1, 1)


def _blend_(x: torch.Tensor, reference: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """x = factor * x + (1 - factor) * reference, clamped to [0, 1], in place (``reference``, a
    temporary, is overwritten too)."""
    f = _per_view(factor)
    return torch.addcmul(reference.mul_(1.0 - f), x, f, out=x).clamp_(0.0, 1.0)


def adjust_brightness_(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return x.mul_(_per_view(factor)).clamp_(0.0, 1.0)


def adjust_contrast_(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend_(x, grayscale(x).mean(dim=(-3, -2, -1), keepdim=True), factor)


def adjust_saturation_(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend_(x, grayscale(x), factor)


def hue_offset(sextants: Sextants) -> Sextants:
    """n + 6 shift - 5 for a channel's n + 6 shift (``sextants``: a number, or a tensor of them),
    less the whole turns that put n - 1 + 6 shift in [0, 6): see ``adjust_hue_``."""
    return sextants - 5.0 - 6.0 * ((sextants - 1.0) // 6.0)


def _hue_offsets(shift: torch.Tensor) -> torch.Tensor:
    """``hue_offset`` of each view's shift (M,) for channels n = 5, 3, 1 (red, green, blue), as
    (M, 3, 1, 1)."""
    channels = torch.arange(5.0, 0.0, -2.0, device=shift.device).view(1, 3, 1, 1)
    return hue_offset(6.0 * _per_view(shift) + channels)


def adjust_hue_(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue of every pixel of ``x`` by ``shift`` turns (one per view), keeping
    saturation and value, in place.

    RGB -> (H, S, V) -> RGB in closed form: with V = max, C = max - min and H in sextants,
    H = (g - b) / C where red is the largest channel, 2 + (b - r) / C where green is (and red is
    not), 4 + (r - g) / C otherwise (torchvision's ties), so H lies in [-1, 5). Channel n in
    {5: red, 3: green, 1: blue} is then V - C * clamp(min(k, 4 - k), 0, 1) with
    k = (n + H + 6 shift) mod 6 taken in [-1, 5), that is V - 2C + C * clamp(|k - 2|, 1, 2).

    The branch is taken by 0/1 masks written as floats (a product with a mask is exact, and
    ``torch.where`` costs 25x a multiplication on a CPU). No ``remainder`` and no comparison over
    the image: a per-view offset of whole turns puts q = n + H + 6 shift - 5 in [-5, 7), so
    q + 3 = k - 2 + 6j with j in {0, 1, 2}, and ||q| - 3|, the distance from q + 3 to the nearer
    of 0 and 6, is |k - 2| wherever that is under 2 (both are 2 or more elsewhere, and clamped).
    """
    r, g, b = x.unbind(1)
    maxc = torch.maximum(torch.maximum(r, g), b)
    chroma = maxc - torch.minimum(torch.minimum(r, g), b)
    # where chroma is 0 every channel equals maxc: the hue is then irrelevant, and 0 * 1e12 = 0
    inverse = chroma.clamp_min(1e-12).reciprocal_()
    red_max = torch.eq(maxc, r, out=torch.empty_like(r))
    not_red_max = torch.ne(maxc, r, out=torch.empty_like(r))
    green_max = torch.eq(maxc, g, out=torch.empty_like(g)).mul_(not_red_max)
    blue_max = not_red_max.sub_(green_max)
    hue = (g - b).mul_(red_max).addcmul_(b - r, green_max).addcmul_(r - g, blue_max)
    hue.mul_(inverse).add_(green_max, alpha=2.0).add_(blue_max, alpha=4.0)
    q = hue.unsqueeze(1) + _hue_offsets(shift)  # (M, 3, H, W) in [-5, 7)
    q.abs_().sub_(3.0).abs_().clamp_(1.0, 2.0)
    base = torch.add(maxc, chroma, alpha=-2.0).unsqueeze(1)
    return torch.addcmul(base, chroma.unsqueeze(1), q, out=x)


_JITTER_OPS = (adjust_brightness_, adjust_contrast_, adjust_saturation_, adjust_hue_)


@cache
def _view_kernels() -> ModuleType | None:
    """``trainer.data.view_kernels``, or None where numba cannot be imported (logged once)."""
    try:
        import numba  # noqa: F401
    except ImportError as missing:  # not installed, or built for another numpy
        log.warning(
            "numba cannot be imported (%s): SimCLRAugment's colour operations and blur run "
            "batched on the CPU, several times slower for views of %d px or more",
            missing,
            _VIEW_BY_VIEW_MIN_SIZE,
        )
        return None
    from trainer.data import view_kernels

    return view_kernels


def _expand_grayscale(x: torch.Tensor) -> torch.Tensor:
    return grayscale(x).expand(-1, 3, -1, -1)


def apply_to_subset(
    op: Callable[..., torch.Tensor], views: torch.Tensor, chosen: torch.Tensor, *args
) -> None:
    """``views[chosen] = op(views[chosen], *args)`` in place; compiled, gather, op and scatter fuse."""
    views[chosen] = op(views[chosen], *args)


def sample_crop_boxes(
    heights: torch.Tensor,
    widths: torch.Tensor,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random-resized-crop boxes (M, 4) as x1, y1, x2, y2 in whole pixels (float tensor).

    ``heights`` and ``widths`` (M,) are each image's valid size. torchvision's
    ``RandomResizedCrop.get_params``, batched: ten candidates per image, area U(scale) x H x W,
    log aspect U(log ratio), sides w = round(sqrt(area x aspect)), h = round(sqrt(area / aspect));
    the first with 0 < w <= W and 0 < h <= H is kept, at x1 uniform in {0, ..., W - w} (y1
    likewise); an image with none falls back to the largest centred crop whose aspect ratio lies
    in ``ratio``.
    """
    m, device = heights.shape[0], heights.device
    h_img, w_img = heights.float().unsqueeze(1), widths.float().unsqueeze(1)
    area = (
        h_img
        * w_img
        * torch.empty(m, _CROP_TRIES, device=device).uniform_(*scale, generator=generator)
    )
    log_ratio = torch.empty(m, _CROP_TRIES, device=device).uniform_(
        math.log(ratio[0]), math.log(ratio[1]), generator=generator
    )
    aspect = log_ratio.exp()
    w = (area * aspect).sqrt().round()
    h = (area / aspect).sqrt().round()
    fits = (w > 0) & (w <= w_img) & (h > 0) & (h <= h_img)
    first = fits.float().argmax(dim=1, keepdim=True)
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)

    h_img, w_img = h_img.squeeze(1), w_img.squeeze(1)
    image_ratio = w_img / h_img
    fallback_w = torch.where(image_ratio > ratio[1], (h_img * ratio[1]).round(), w_img)
    fallback_h = torch.where(image_ratio < ratio[0], (w_img / ratio[0]).round(), h_img)
    any_fits = fits.any(dim=1)
    w = torch.where(any_fits, w, fallback_w)
    h = torch.where(any_fits, h, fallback_h)
    u = torch.rand(2, m, device=device, generator=generator)
    x1 = torch.where(any_fits, (u[0] * (w_img - w + 1)).floor().minimum(w_img - w),
                     ((w_img - w) / 2).floor())  # fmt: skip
    y1 = torch.where(any_fits, (u[1] * (h_img - h + 1)).floor().minimum(h_img - h),
                     ((h_img - h) / 2).floor())  # fmt: skip
    return torch.stack([x1, y1, x1 + w, y1 + h], dim=1)


def two_crops(
    images: torch.Tensor,
    sizes: torch.Tensor,
    boxes: torch.Tensor,
    flip: torch.Tensor,
    size: int,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bilinear crop-and-resize of two boxes per image, with optional horizontal flip.

    Args:
        images: (B, C, H, W) uint8 in [0, 255] or float in [0, 1].
        sizes: (B, 2) valid (height, width) of each image at the canvas's top-left; samples are
            clamped to it, so the padding never bleeds into a crop.
        boxes: (B, 2, 4) float boxes x1, y1, x2, y2 in pixel coordinates (pixel i spans [i, i + 1]),
            two per image.
        flip: (B, 2) bool, mirror the crop left-right.
        size: side of the square output.
        out: optional (B, 2, C' , size, size) float32 destination, C' = C or 3 (grey is broadcast).
    Returns:
        (B, 2, C, size, size) float32 in [0, 1] (``out`` when given): for boxes on whole pixels,
        torchvision's ``resized_crop`` (bilinear, no anti-aliasing). On a CPU, for views of 40 px
        or more, each crop is cut and resized by ``F.interpolate``; on uint8 images its
        fixed-point kernel puts each sample within one level (1/255) of the exact value, 4-5x
        faster than sampling a grid in float at 224 px. Elsewhere one ``grid_sample`` call samples
        both crops of every image side by side (pixel centres spread evenly over the box, the
        ``align_corners=False`` convention), which also serves boxes off whole pixels.
    """
    by_crop = images.device.type == "cpu" and size >= _CROP_BY_CROP_MIN_SIZE
    crops = interpolated_crops if by_crop else sampled_crops
    return crops(images, sizes, boxes, flip, size, out)


def sampled_crops(
    images: torch.Tensor,
    sizes: torch.Tensor,
    boxes: torch.Tensor,
    flip: torch.Tensor,
    size: int,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``two_crops`` by one ``grid_sample`` call over the batch (any device, any boxes)."""
    b, channels, height, width = images.shape
    t = (torch.arange(size, device=boxes.device, dtype=torch.float32) + 0.5) / size
    x1, y1, x2, y2 = boxes.unbind(-1)  # each (B, 2)
    last = sizes.float()[:, None, :] - 1  # largest valid pixel-centre coordinate, (B, 1, 2)

    def sample_points(start: torch.Tensor, end: torch.Tensor, limit: torch.Tensor) -> torch.Tensor:
        """(B, 2, size) pixel-centre coordinates of the output samples, clamped to the box's first
        and last pixel (as cropping then resizing does) and to the valid image."""
        start, end = start[..., None], end[..., None]
        points = start + t * (end - start) - 0.5
        return points.maximum(start).minimum((end - 1).maximum(start)).minimum(limit[..., None])

    xs = sample_points(x1, x2, last[..., 1])
    xs = torch.where(flip[..., None], xs.flip(-1), xs)
    ys = sample_points(y1, y2, last[..., 0])
    xs, ys = (xs + 0.5) * (2.0 / width) - 1.0, (ys + 0.5) * (2.0 / height) - 1.0
    grid_x = xs.reshape(b, 1, 2 * size).expand(b, size, 2 * size)
    grid_y = ys.transpose(1, 2)[..., None].expand(b, size, 2, size).reshape(b, size, 2 * size)
    sampled = F.grid_sample(
        to_float_images(images),
        torch.stack([grid_x, grid_y], dim=-1),
        mode="bilinear",
        padding_mode="border",
        align_corners=False,
    )
    crops = sampled.view(b, channels, size, 2, size).permute(0, 3, 1, 2, 4)
    if out is None:
        return crops.contiguous()
    return out.copy_(crops)


def interpolated_crops(
    images: torch.Tensor,
    sizes: torch.Tensor,
    boxes: torch.Tensor,
    flip: torch.Tensor,
    size: int,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``two_crops`` crop by crop (a CPU's way): each box, rounded to whole pixels and clamped to
    the valid size ``sizes`` (at least one pixel), cut, flipped and resized by ``F.interpolate``.

    The crops are resized channels-last, where PyTorch's bilinear kernel for uint8 is vectorised
    over the pixels' channels: 0.23-0.36 against 0.45-0.67 ms a 224-px view with its conversion
    into ``out`` (one thread of an AVX2 AMD EPYC). A batch in that layout (the folder loader's and
    Ray Data's: decoded images are height x width x channels) is read as it is; from another each
    crop is converted. The flip comes before the resize, on the crop, whose sample points mirror
    (the same values for uint8; within float rounding otherwise)."""
    b, channels = images.shape[:2]
    convert = not images.is_contiguous(memory_format=torch.channels_last)
    if out is None:
        out = torch.empty(b, 2, channels, size, size)
    corners = boxes.round().long().tolist()
    valid = sizes.tolist()
    mirrored = flip.tolist()
    scale = 255.0 if images.dtype == torch.uint8 else 1.0
    for i in range(b):
        height, width = valid[i]
        for v in range(2):
            x1, y1, x2, y2 = corners[i][v]
            x1, y1 = min(max(x1, 0), width - 1), min(max(y1, 0), height - 1)
            x2, y2 = min(max(x2, x1 + 1), width), min(max(y2, y1 + 1), height)
            crop = images[i : i + 1, :, y1:y2, x1:x2]
            if convert:
                crop = crop.contiguous(memory_format=torch.channels_last)
            if mirrored[i][v]:
                crop = crop.flip(-1)
            resized = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)
            view = out[i, v]  # to [0, 1] while the crop is in cache; grey broadcast to RGB
            view.copy_(resized[0])  # the conversion's own kernel: a mixed-dtype div is 1.3x slower
            if scale != 1.0:
                view.div_(scale)
    return out


def gaussian_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """(M, 2 * radius + 1) Gaussian taps for each sigma (M,), each row summing to 1."""
    offsets = torch.arange(-radius, radius + 1, device=sigma.device, dtype=sigma.dtype)
    kernel = torch.exp(-(offsets**2) / (2.0 * sigma.view(-1, 1) ** 2))
    return kernel / kernel.sum(dim=1, keepdim=True)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Separable Gaussian blur of (M, C, H, W) with a per-image sigma (M,), 2 * radius + 1 taps.

    One depthwise convolution per direction with reflect padding; on the CPU it runs channels-last,
    where PyTorch's depthwise kernel is about twice as fast.
    """
    m, c, height, width = x.shape
    kernel = gaussian_kernels(sigma, radius).to(x.dtype).repeat_interleave(c, dim=0)  # (M*C, taps)
    flat = F.pad(x.reshape(1, m * c, height, width), (radius,) * 4, mode="reflect")
    if flat.device.type == "cpu":
        flat = flat.contiguous(memory_format=torch.channels_last)
    flat = F.conv2d(flat, kernel.view(m * c, 1, 1, -1), groups=m * c)
    flat = F.conv2d(flat, kernel.view(m * c, 1, -1, 1), groups=m * c)
    return flat.reshape(m, c, height, width)


class SimCLRAugment(nn.Module):
    """Two SimCLR views of a batch: ``forward(images, sizes=None) -> (view_a, view_b)``.

    Args:
        size: side of the square output views.
        strength: colour-jitter strength s (1.0 for ImageNet, 0.5 for the CIFAR recipe).
        blur: apply the Gaussian blur (off in the CIFAR recipe).
        compile: fuse the batched colour operations with ``torch.compile`` (slow to start; on a
            CPU the default's numba kernels are faster from 64 px, the compiled module under it).
        chunk_size: images processed at once on the CPU (None: as many as keep their two views
            within 8 MiB, 6 at 224 px, 341 at 32 px); on other devices the whole batch is always
            processed at once.

    ``images`` is (B, C, H, W), uint8 or float in [0, 1], C in {1, 3}, on any device. ``sizes``, if
    given, is (B, 2) long: the valid (height, width) of each image placed at the top-left of the
    canvas (a batch of images of different sizes); crops are drawn inside it. ``generator``, if
    given, draws every random number, so a second call with an equally seeded generator repeats
    the views exactly. Each view is a float32 tensor (B, 3, size, size) on the input's device; the
    two are interleaved halves of one (B, 2, 3, size, size) tensor, so they are not contiguous.
    """

    def __init__(
        self,
        size: int,
        strength: float = 1.0,
        blur: bool = True,
        *,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip_p: float = 0.5,
        jitter_p: float = 0.8,
        grayscale_p: float = 0.2,
        blur_p: float = 0.5,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        compile: bool = False,
        chunk_size: int | None = None,
    ):
        super().__init__()
        if size < 1:
            raise ValueError(f"size must be positive, got {size}")
        if strength < 0:
            raise ValueError(f"strength must be >= 0, got {strength}")
        if not (0 < scale[0] <= scale[1] <= 1):
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}")
        if not (0 < ratio[0] <= ratio[1]):
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {ratio}")
        if not (0 < blur_sigma[0] <= blur_sigma[1]):
            raise ValueError(f"blur_sigma must satisfy 0 < min <= max, got {blur_sigma}")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1 (or None), got {chunk_size}")
        self.size = size
        self.strength = strength
        self.blur = blur
        self.scale = scale
        self.ratio = ratio
        self.flip_p = flip_p
        self.jitter_p = jitter_p
        self.grayscale_p = grayscale_p
        self.blur_p = blur_p
        self.blur_sigma = blur_sigma
        self.blur_radius = min(size // 20, math.ceil(4 * blur_sigma[1]))
        self.chunk_size = chunk_size
        self.compile = compile
        self._apply = torch.compile(apply_to_subset, dynamic=True) if compile else apply_to_subset

    def extra_repr(self) -> str:
        return f"size={self.size}, strength={self.strength}, blur={self.blur}"

    @torch.no_grad()
    def forward(
        self,
        images: torch.Tensor,
        sizes: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"images must be (B, 1 or 3, H, W), got shape {tuple(images.shape)}")
        if not (images.dtype == torch.uint8 or images.is_floating_point()):
            raise TypeError(f"images must be uint8 or floating point, got {images.dtype}")
        b, _, height, width = images.shape
        if sizes is None:
            sizes = torch.tensor([[height, width]], device=images.device).expand(b, 2)
        elif sizes.shape != (b, 2):
            raise ValueError(f"sizes must be (B, 2) = ({b}, 2), got {tuple(sizes.shape)}")
        sizes = sizes.to(images.device)
        if images.device.type != "cpu":
            step = b
        else:
            step = self.chunk_size or max(1, _CHUNK_BYTES // (2 * 3 * self.size**2 * 4))
        views = empty_views((b, 2, 3, self.size, self.size), images.device)
        for start in range(0, b, step):
            chunk = slice(start, start + step)
            self._two_views(images[chunk], sizes[chunk], views[chunk], generator)
        return views[:, 0], views[:, 1]

    def _two_views(
        self,
        images: torch.Tensor,
        sizes: torch.Tensor,
        out: torch.Tensor,
        generator: torch.Generator | None,
    ) -> None:
        """Both views of a chunk of b images into ``out`` (b, 2, 3, S, S): the 2b crops, then the
        colour operations in place on the 2b views."""
        b, device = images.shape[0], images.device
        boxes = sample_crop_boxes(
            sizes[:, 0].repeat_interleave(2),
            sizes[:, 1].repeat_interleave(2),
            self.scale,
            self.ratio,
            generator,
        )
        flip = self._draw(2 * b, self.flip_p, device, generator)
        two_crops(images, sizes, boxes.view(b, 2, 4), flip.view(b, 2), self.size, out=out)
        views = out.view(2 * b, 3, self.size, self.size)
        with torch._dynamo.config.patch(recompile_limit=_RECOMPILE_LIMIT):
            self._color_jitter(views, generator)
            self._grayscale(views, generator)
        if self.blur:
            self._blur(views, generator)

    def _view_by_view(self, views: torch.Tensor) -> bool:
        """Whether the colour operations and the blur run view by view, in place, by the fused
        kernels of ``view_kernels``: on a CPU without compile, for views of 64 px or more.
        Otherwise, or where numba is missing, on the gathered subsets, batched. Measured, views/s
        of the whole module (view by view against batched): 2,186 against 628 at 128 px, 5,458
        against 2,665 at 64 px one thread, 5,947 against 3,904 two; at 32 px 13,200 against
        11,062 one thread but 15,621 against 18,208 two, where the batched operations share the
        threads (``docs/benchmarks.md``)."""
        return (
            views.device.type == "cpu"
            and not self.compile
            and views.shape[-1] >= _VIEW_BY_VIEW_MIN_SIZE
            and _view_kernels() is not None
        )

    def _draw(
        self, m: int, p: float, device: torch.device, generator: torch.Generator | None
    ) -> torch.Tensor:
        return torch.rand(m, device=device, generator=generator) < p

    def _color_jitter(self, views: torch.Tensor, generator: torch.Generator | None) -> None:
        m, device, s = views.shape[0], views.device, self.strength
        apply = self._draw(m, self.jitter_p, device, generator)
        u = torch.rand(4, m, device=device, generator=generator)
        low, high = max(0.0, 1.0 - 0.8 * s), 1.0 + 0.8 * s
        factors = torch.cat([low + u[:3] * (high - low), (2.0 * u[3:] - 1.0) * 0.2 * s])
        order = torch.rand(m, 4, device=device, generator=generator).argsort(dim=1)
        if self._view_by_view(views):
            orders, chosen = order.tolist(), apply.nonzero().squeeze(1).tolist()
            per_view, ops = factors.tolist(), _view_kernels().JITTER_OPS
            for j in chosen:
                for op_index in orders[j]:
                    ops[op_index](views[j], per_view[op_index][j])
            return
        for position in range(4):
            for op_index, op in enumerate(_JITTER_OPS):
                chosen = (apply & (order[:, position] == op_index)).nonzero().squeeze(1)
                if chosen.numel():
                    self._apply(op, views, chosen, factors[op_index, chosen])

    def _grayscale(self, views: torch.Tensor, generator: torch.Generator | None) -> None:
        draw = self._draw(views.shape[0], self.grayscale_p, views.device, generator)
        chosen = draw.nonzero().squeeze(1)
        if self._view_by_view(views):
            for j in chosen.tolist():
                views[j : j + 1].copy_(_expand_grayscale(views[j : j + 1]))
        elif chosen.numel():
            self._apply(_expand_grayscale, views, chosen)

    def _blur(self, views: torch.Tensor, generator: torch.Generator | None) -> None:
        draw = self._draw(views.shape[0], self.blur_p, views.device, generator)
        sigma = torch.empty(views.shape[0], device=views.device).uniform_(
            *self.blur_sigma, generator=generator
        )
        chosen = draw.nonzero().squeeze(1)
        if self.blur_radius == 0:
            return
        if self._view_by_view(views):  # each view's taps reach 4 of its own sigmas (4.7 on average)
            blur_view_ = _view_kernels().gaussian_blur_view_
            for j, view_sigma in zip(chosen.tolist(), sigma[chosen].tolist(), strict=True):
                radius = min(self.blur_radius, math.ceil(4 * view_sigma))
                blur_view_(views[j], view_sigma, radius)
        elif chosen.numel():
            apply_to_subset(gaussian_blur, views, chosen, sigma[chosen], self.blur_radius)
