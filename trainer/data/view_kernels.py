"""One view's colour operations and blur on a CPU, each fused into one or two passes by numba
(LLVM, no C++ compiler: the wheels carry it).

``SimCLRAugment`` processes views of 128 px or more one by one on a CPU (``augment.py``). Written
with tensor operations, each operation makes several passes over the view, the hue rotation about
25 (0.5-0.7 ms a 224-px view on one thread of this project's VMs), the blur one per tap. These
kernels make one pass (two for the contrast, whose mean is a reduction, and for the blur, one per
direction) and compute what the tensor operations compute, within float rounding (tested against
torchvision). Each is compiled on first use and cached on disk (``_jit``).

Every function works in place on one float32 view (3, H, W), or (1, 3, H, W), contiguous on the
CPU, and takes its parameter as a Python number (one view, one draw) or one numpy scalar.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numba
import numpy as np
import torch

from trainer.data.augment import LUMA, gaussian_taps, hue_offsets

log = logging.getLogger(__name__)


def _jit(function: Callable) -> Callable:
    """``numba.njit``, cached on disk where numba finds a writable directory for it (beside this
    file, else ``NUMBA_CACHE_DIR`` or the user's cache); where none is (a read-only install and
    no home), compiled in every process instead of failing."""
    options = {"nogil": True, "fastmath": True, "error_model": "numpy"}
    try:
        return numba.njit(cache=True, **options)(function)
    except RuntimeError as error:
        if "cannot cache" not in str(error):
            raise
        log.warning("no writable cache directory for numba: %s compiles in every process",
                    function.__name__)  # fmt: skip
        return numba.njit(**options)(function)


_ZERO, _ONE, _TWO, _THREE, _FOUR = (np.float32(v) for v in (0.0, 1.0, 2.0, 3.0, 4.0))
_LUMA_R, _LUMA_G, _LUMA_B = (np.float32(v) for v in LUMA)
_TINY = np.float32(1e-12)


@_jit
def _blend_constant(x, factor, constant):
    """x = clamp(f x + (1 - f) constant, 0, 1): brightness (constant 0), contrast (the mean)."""
    f = np.float32(factor)
    rest = np.float32(constant) * (_ONE - f)
    for i in range(x.shape[0]):
        x[i] = min(max(f * x[i] + rest, _ZERO), _ONE)


@_jit
def _blend_luma(x, factor):
    """x = clamp(f x + (1 - f) luma, 0, 1), the luma of each pixel (saturation)."""
    f = np.float32(factor)
    rest = _ONE - f
    r, g, b = x[0], x[1], x[2]
    for i in range(r.shape[0]):
        grey = (_LUMA_R * r[i] + _LUMA_G * g[i] + _LUMA_B * b[i]) * rest
        r[i] = min(max(f * r[i] + grey, _ZERO), _ONE)
        g[i] = min(max(f * g[i] + grey, _ZERO), _ONE)
        b[i] = min(max(f * b[i] + grey, _ZERO), _ONE)


@_jit
def _mean_luma(x):
    total = 0.0
    r, g, b = x[0], x[1], x[2]
    for i in range(r.shape[0]):
        total += _LUMA_R * r[i] + _LUMA_G * g[i] + _LUMA_B * b[i]
    return total / r.shape[0]


@_jit
def _rotate_hue(x, offset_r, offset_g, offset_b):
    r, g, b = x[0], x[1], x[2]
    o_r, o_g, o_b = np.float32(offset_r), np.float32(offset_g), np.float32(offset_b)
    for i in range(r.shape[0]):
        red, green, blue = r[i], g[i], b[i]
        value = max(max(red, green), blue)
        chroma = value - min(min(red, green), blue)
        inverse = _ONE / max(chroma, _TINY)
        red_max = np.float32(value == red)
        green_max = np.float32(value == green) * (_ONE - red_max)
        blue_max = _ONE - red_max - green_max
        hue = red_max * (green - blue) + green_max * (blue - red) + blue_max * (red - green)
        hue = hue * inverse + _TWO * green_max + _FOUR * blue_max
        base = value - _TWO * chroma
        r[i] = base + chroma * min(max(abs(abs(hue + o_r) - _THREE), _ONE), _TWO)
        g[i] = base + chroma * min(max(abs(abs(hue + o_g) - _THREE), _ONE), _TWO)
        b[i] = base + chroma * min(max(abs(abs(hue + o_b) - _THREE), _ONE), _TWO)


@_jit
def _reflect(i, n):
    return -i if i < 0 else (2 * (n - 1) - i if i >= n else i)


@_jit
def _blur(x, weights):
    """Separable blur of each channel of x (C, H, W) with taps ``weights`` (centre out), reflect
    padding; rows then columns, each output written in one pass."""
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
                for j in range(min(k, width)):  # the edges, reflected
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
    """(1, 3, H, W) or (3, H, W) contiguous float32 -> its (3, H * W) array, shared."""
    if view.dtype != torch.float32 or not view.is_contiguous() or view.device.type != "cpu":
        raise ValueError("view kernels take a contiguous float32 CPU view")
    return view.view(3, -1).numpy()


def adjust_brightness_(view: torch.Tensor, factor: float) -> torch.Tensor:
    _blend_constant(_planes(view).reshape(-1), float(factor), 0.0)
    return view


def adjust_contrast_(view: torch.Tensor, factor: float) -> torch.Tensor:
    planes = _planes(view)
    _blend_constant(planes.reshape(-1), float(factor), _mean_luma(planes))
    return view


def adjust_saturation_(view: torch.Tensor, factor: float) -> torch.Tensor:
    _blend_luma(_planes(view), float(factor))
    return view


def adjust_hue_(view: torch.Tensor, shift: float) -> torch.Tensor:
    _rotate_hue(_planes(view), *hue_offsets(float(shift)))
    return view


def gaussian_blur_view_(view: torch.Tensor, sigma: float, radius: int) -> torch.Tensor:
    """``augment.gaussian_blur_view_``, in two passes."""
    if not 0 <= radius < min(view.shape[-2:]):
        raise ValueError(f"radius must be in [0, {min(view.shape[-2:])}), got {radius}")
    weights = np.array(gaussian_taps(sigma, radius), dtype=np.float32)
    _blur(_planes(view).reshape(view.shape[-3:]), weights)
    return view


JITTER_OPS = (adjust_brightness_, adjust_contrast_, adjust_saturation_, adjust_hue_)
