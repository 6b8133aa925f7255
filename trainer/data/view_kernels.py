"""One view's colour operations and blur on a CPU, each fused into one or two passes by numba
(LLVM, no C++ compiler: the wheels carry it).

``SimCLRAugment`` processes views of 64 px or more one by one on a CPU (``augment.py``). Written
with tensor operations, each operation makes several passes over the view, the hue rotation about
25 (0.5-0.7 ms a 224-px view on one thread of this project's VMs), the blur two a tap. These
kernels make one pass (two for the contrast, whose mean is a reduction, and for the blur, one per
direction) and compute what the tensor operations compute, within float rounding (tested against
torchvision). Each is compiled on first use and cached on disk (``_jit``). Every value a kernel
uses comes in as an argument (the luma weights too), so a cached kernel cannot keep a constant
that another module has since changed: numba keys its cache on this file alone.

Every public function works in place on one float32 view (3, H, W), contiguous on the CPU, and
takes its parameter as a Python number (one view, one draw) or a numpy scalar.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from functools import cache

import numba
import numpy as np
import torch

from trainer.data.augment import LUMA, hue_offset

log = logging.getLogger(__name__)

# Not nnan or ninf: a NaN in an image stays a NaN, as with tensor operations.
_FAST_MATH = {"nsz", "arcp", "contract", "reassoc"}


@cache
def _warn_uncached() -> None:
    log.warning("numba has no writable cache directory: the view kernels compile in every process")


def _jit(function: Callable) -> Callable:
    """``numba.njit``, cached on disk where numba finds a writable directory (``NUMBA_CACHE_DIR``,
    else beside this file, else the user's cache; on a file system shared by hosts of different
    CPUs, give each host its own ``NUMBA_CACHE_DIR``); where none is (a read-only install and no
    home), compiled in every process instead of failing."""
    options = {"nogil": True, "fastmath": _FAST_MATH, "error_model": "numpy"}
    try:
        return numba.njit(cache=True, **options)(function)
    except RuntimeError as error:  # numba: "cannot cache function ...: no locator available"
        if "cannot cache" not in str(error):
            raise
        _warn_uncached()
        return numba.njit(**options)(function)


@_jit
def _blend_constant(x, factor, constant):
    """x = clamp(f x + (1 - f) constant, 0, 1): brightness (constant 0), contrast (the mean)."""
    f = np.float32(factor)
    rest = np.float32(constant) * (np.float32(1.0) - f)
    for i in range(x.shape[0]):
        x[i] = min(max(f * x[i] + rest, np.float32(0.0)), np.float32(1.0))


@_jit
def _blend_luma(x, factor, luma):
    """x = clamp(f x + (1 - f) luma, 0, 1), each pixel's luma (saturation); x is (3, N)."""
    f = np.float32(factor)
    rest = np.float32(1.0) - f
    weight_r, weight_g, weight_b = np.float32(luma[0]), np.float32(luma[1]), np.float32(luma[2])
    r, g, b = x[0], x[1], x[2]
    for i in range(r.shape[0]):
        grey = (weight_r * r[i] + weight_g * g[i] + weight_b * b[i]) * rest
        r[i] = min(max(f * r[i] + grey, np.float32(0.0)), np.float32(1.0))
        g[i] = min(max(f * g[i] + grey, np.float32(0.0)), np.float32(1.0))
        b[i] = min(max(f * b[i] + grey, np.float32(0.0)), np.float32(1.0))


@_jit
def _mean_luma(x, luma):
    """The mean luma of x (3, N), summed in float64."""
    weight_r, weight_g, weight_b = np.float32(luma[0]), np.float32(luma[1]), np.float32(luma[2])
    r, g, b = x[0], x[1], x[2]
    total = 0.0
    for i in range(r.shape[0]):
        total += weight_r * r[i] + weight_g * g[i] + weight_b * b[i]
    return total / r.shape[0]


@_jit
def _rotate_hue(x, offset_r, offset_g, offset_b):
    """``augment.adjust_hue_`` (its docstring derives it) on x (3, N), given each channel's
    ``augment.hue_offset``."""
    one, two = np.float32(1.0), np.float32(2.0)
    o_r, o_g, o_b = np.float32(offset_r), np.float32(offset_g), np.float32(offset_b)
    r, g, b = x[0], x[1], x[2]
    for i in range(r.shape[0]):
        red, green, blue = r[i], g[i], b[i]
        value = max(max(red, green), blue)
        chroma = value - min(min(red, green), blue)
        inverse = one / max(chroma, np.float32(1e-12))
        red_max = np.float32(value == red)
        green_max = np.float32(value == green) * (one - red_max)
        blue_max = one - red_max - green_max
        hue = red_max * (green - blue) + green_max * (blue - red) + blue_max * (red - green)
        hue = hue * inverse + two * green_max + np.float32(4.0) * blue_max
        base = value - two * chroma
        three = np.float32(3.0)
        r[i] = base + chroma * min(max(abs(abs(hue + o_r) - three), one), two)
        g[i] = base + chroma * min(max(abs(abs(hue + o_g) - three), one), two)
        b[i] = base + chroma * min(max(abs(abs(hue + o_b) - three), one), two)


@numba.njit(inline="always")
def _reflect(i, n):
    """Index i of a row of n, reflected at the ends without repeating them (|i| < n)."""
    return -i if i < 0 else (2 * (n - 1) - i if i >= n else i)


@_jit
def _blur(x, weights):
    """Separable blur of each channel of x (C, H, W) by taps ``weights`` (centre out), reflect
    padding, radius under H and W: rows, then columns, each written in one pass."""
    radius = weights.shape[0] - 1
    channels, height, width = x.shape
    rows = np.empty((height, width), dtype=np.float32)
    for c in range(channels):
        image = x[c]
        for y in range(height):
            src, dst = image[y], rows[y]
            for j in range(width):
                dst[j] = weights[0] * src[j]
            for k in range(1, radius + 1):
                w = weights[k]
                left, right, inner = src[: width - 2 * k], src[2 * k :], dst[k : width - k]
                for j in range(width - 2 * k):  # indices from 0: no wraparound, vectorised
                    inner[j] += w * (left[j] + right[j])
                for j in range(k):  # the edges, reflected (all of the row when 2k >= width)
                    dst[j] += w * (src[_reflect(j - k, width)] + src[_reflect(j + k, width)])
                for j in range(max(width - k, k), width):
                    dst[j] += w * (src[_reflect(j - k, width)] + src[_reflect(j + k, width)])
        for y in range(height):
            dst = image[y]
            centre = rows[y]
            for j in range(width):
                dst[j] = weights[0] * centre[j]
            for k in range(1, radius + 1):
                w = weights[k]
                above, below = rows[_reflect(y - k, height)], rows[_reflect(y + k, height)]
                for j in range(width):
                    dst[j] += w * (above[j] + below[j])


def _planes(view: torch.Tensor) -> np.ndarray:
    """A view (3, H, W), float32, contiguous on the CPU -> its (3, H * W) array, shared."""
    if view.dim() != 3 or view.shape[0] != 3:
        raise ValueError(f"a view must be (3, H, W), got shape {tuple(view.shape)}")
    if view.dtype != torch.float32 or not view.is_contiguous() or view.device.type != "cpu":
        raise ValueError(
            f"a view must be float32 and contiguous on the CPU, got {view.dtype} on "
            f"{view.device.type}{'' if view.is_contiguous() else ', not contiguous'}"
        )
    return view.view(3, -1).numpy()


def adjust_brightness_(view: torch.Tensor, factor: float) -> torch.Tensor:
    _blend_constant(_planes(view).reshape(-1), float(factor), 0.0)
    return view


def adjust_contrast_(view: torch.Tensor, factor: float) -> torch.Tensor:
    planes = _planes(view)
    _blend_constant(planes.reshape(-1), float(factor), _mean_luma(planes, LUMA))
    return view


def adjust_saturation_(view: torch.Tensor, factor: float) -> torch.Tensor:
    _blend_luma(_planes(view), float(factor), LUMA)
    return view


def adjust_hue_(view: torch.Tensor, shift: float) -> torch.Tensor:
    _rotate_hue(_planes(view), *(hue_offset(6.0 * float(shift) + n) for n in (5.0, 3.0, 1.0)))
    return view


def gaussian_blur_view_(view: torch.Tensor, sigma: float, radius: int) -> torch.Tensor:
    """Blur ``view`` in place by a Gaussian of ``sigma`` > 0 cut to 2 radius + 1 taps that sum to
    1 (``augment.gaussian_kernels`` for one sigma), with reflect padding; radius in
    [0, min(H, W))."""
    if not 0 <= radius < min(view.shape[-2:]):
        raise ValueError(f"radius must be in [0, {min(view.shape[-2:])}), got {radius}")
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    # in Python: gaussian_kernels' tensor operations for one sigma take 36 us, a tenth of the blur
    taps = [math.exp(-(i * i) / (2.0 * sigma * sigma)) for i in range(radius + 1)]
    total = taps[0] + 2.0 * sum(taps[1:])
    weights = np.array([tap / total for tap in taps], dtype=np.float32)
    _blur(_planes(view).reshape(view.shape), weights)
    return view


JITTER_OPS = (adjust_brightness_, adjust_contrast_, adjust_saturation_, adjust_hue_)
