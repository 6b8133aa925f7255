import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from trainer.data import augment as augment_module
from trainer.data.augment import (
    SimCLRAugment,
    gaussian_blur,
    interpolated_crops,
    sample_crop_boxes,
    sampled_crops,
)


@pytest.fixture
def view_kernels():
    """The numba kernels; their tests skip where numba is missing (the GPU machine's own
    environment, where ``bench.gpu_check`` runs this file)."""
    pytest.importorskip("numba")
    from trainer.data import view_kernels

    return view_kernels


def colourful(b=8, size=32):
    """Smooth colourful images: no two channels equal anywhere."""
    return (torch.rand(b, 3, size, size) * 0.6 + 0.2).to(torch.float32)


def only(**kwargs):
    """An augmentation with every random operation off except those named."""
    settings = dict(
        flip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur=False, scale=(1.0, 1.0), ratio=(1.0, 1.0)
    )
    settings.update(kwargs)
    return settings


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_dtypes_and_range(dtype, channels, device):
    images = torch.randint(0, 256, (5, channels, 40, 48), dtype=torch.uint8, device=device)
    if dtype == torch.float32:
        images = images.float() / 255
    a, b = SimCLRAugment(24, chunk_size=2)(images)
    for view in (a, b):
        assert (
            view.shape == (5, 3, 24, 24)
            and view.dtype == torch.float32
            and view.device == images.device
        )
        # the blur's taps sum to 1 within rounding, as torchvision's: a white patch may reach 1 + ulp
        assert view.min() >= 0 and view.max() <= 1 + 1e-6


def test_rejects_bad_input():
    augment = SimCLRAugment(16)
    with pytest.raises(ValueError, match="B, 1 or 3"):
        augment(torch.zeros(2, 4, 16, 16))
    with pytest.raises(TypeError, match="uint8 or floating"):
        augment(torch.zeros(2, 3, 16, 16, dtype=torch.int32))
    with pytest.raises(ValueError, match="sizes"):
        augment(torch.zeros(2, 3, 16, 16), sizes=torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="chunk_size"):
        SimCLRAugment(16, chunk_size=0)
    with pytest.raises(ValueError, match="blur_sigma"):  # a zero sigma would blur into NaN
        SimCLRAugment(224, blur_sigma=(0.0, 0.0))


def test_fresh_randomness_per_image_and_per_view():
    image = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8).expand(16, -1, -1, -1)
    a, b = SimCLRAugment(32)(image)
    flat = torch.cat([a, b]).flatten(1)
    distances = torch.cdist(flat, flat)
    off_diagonal = distances[~torch.eye(32, dtype=torch.bool)]
    assert (off_diagonal > 1e-3).all(), "two views of the same image came out identical"


def test_generator_makes_views_reproducible(device):
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, device=device)
    augment = SimCLRAugment(24)
    first = augment(images, generator=torch.Generator(device).manual_seed(7))
    second = augment(images, generator=torch.Generator(device).manual_seed(7))
    torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_identity_when_every_operation_is_off(device):
    images = colourful(4, 20).to(device)
    a, b = SimCLRAugment(20, **only())(images)
    torch.testing.assert_close(a, images, atol=1e-6, rtol=0)
    torch.testing.assert_close(b, images, atol=1e-6, rtol=0)


def fraction(changed: torch.Tensor) -> float:
    return changed.float().mean().item()


def test_operation_frequencies(device):
    images = colourful(1000, 16).to(device)
    a, b = SimCLRAugment(16, **only(flip_p=0.5))(images)
    flipped = (torch.cat([a, b]) - images.flip(-1).repeat(2, 1, 1, 1)).abs().amax(
        dim=(1, 2, 3)
    ) < 1e-6
    assert fraction(flipped) == pytest.approx(0.5, abs=0.05)

    a, b = SimCLRAugment(16, **only(grayscale_p=0.2))(images)
    views = torch.cat([a, b])
    grey = (views[:, 0] - views[:, 1]).abs().amax(dim=(1, 2)) < 1e-6
    assert fraction(grey) == pytest.approx(0.2, abs=0.04)

    a, b = SimCLRAugment(16, **only(jitter_p=0.8))(images)
    jittered = (torch.cat([a, b]) - images.repeat(2, 1, 1, 1)).abs().amax(dim=(1, 2, 3)) > 1e-4
    assert fraction(jittered) == pytest.approx(0.8, abs=0.04)

    # A 16-px view has a one-tap kernel (16 // 20 = 0 radius, as the official 16 // 10 // 2): no blur.
    assert SimCLRAugment(16).blur_radius == 0
    images = colourful(500, 40).to(device)
    a, b = SimCLRAugment(40, **only(blur=True, blur_sigma=(1.0, 2.0)))(images)
    blurred = (torch.cat([a, b]) - images.repeat(2, 1, 1, 1)).abs().amax(dim=(1, 2, 3)) > 1e-4
    assert fraction(blurred) == pytest.approx(0.5, abs=0.05)


def test_crop_boxes_follow_the_paper_ranges():
    heights, widths = torch.full((20000,), 200), torch.full((20000,), 300)
    boxes = sample_crop_boxes(heights, widths, (0.08, 1.0), (3 / 4, 4 / 3))
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    area = w * h / (200 * 300)
    assert torch.equal(boxes, boxes.round())  # whole pixels, as torchvision's
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= 300).all() and (boxes[:, 3] <= 200).all()
    # each side rounded to a whole pixel: within half a pixel of the drawn area and aspect
    assert area.min() >= 0.08 * 0.97 and area.max() <= 1.0
    aspect = w / h
    assert aspect.min() >= 0.75 * 0.97 and aspect.max() <= 4 / 3 * 1.03
    # every position of a box is drawn, the last one included (torchvision: randint(0, W - w + 1))
    assert ((boxes[:, 2] == 300) & (w < 300)).any() and (boxes[:, 0] == 0).any()
    # the same distribution as torchvision's rule (ten tries, then a centre crop)
    from torchvision.transforms import RandomResizedCrop

    image = torch.zeros(1, 200, 300)
    reference = torch.tensor(
        [
            (lambda p: p[2] * p[3] / 60000)(
                RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3])
            )
            for _ in range(5000)
        ]
    )
    assert area.mean().item() == pytest.approx(reference.mean().item(), abs=0.015)
    widths_theirs = torch.tensor([RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3])[3]
                                  for _ in range(5000)], dtype=torch.float)  # fmt: skip
    assert w.mean().item() == pytest.approx(widths_theirs.mean().item(), rel=0.03)


def test_crop_boxes_fall_back_to_a_centre_crop():
    boxes = sample_crop_boxes(torch.tensor([4]), torch.tensor([100]), (0.9, 1.0), (3 / 4, 4 / 3))
    # torchvision: h = 4, w = round(4 x 4/3) = 5, centred at (100 - 5) // 2
    assert boxes[0].tolist() == [47.0, 0.0, 52.0, 4.0]


def test_crop_matches_torchvision_resized_crop(device):
    images = torch.rand(2, 3, 30, 40, device=device)
    boxes = torch.tensor(
        [
            [[4.0, 2.0, 24.0, 27.0], [10.0, 0.0, 40.0, 30.0]],
            [[0.0, 5.0, 12.0, 17.0], [7.0, 3.0, 19.0, 15.0]],
        ],
        device=device,
    )
    flip = torch.tensor([[False, False], [True, False]], device=device)
    sizes = torch.tensor([[30, 40], [30, 40]], device=device)
    # crop by crop is the CPU's way; one grid_sample serves every device
    for crops in [sampled_crops] + ([interpolated_crops] if device.type == "cpu" else []):
        out = crops(images, sizes, boxes, flip, 16)
        assert out.shape == (2, 2, 3, 16, 16) and out.device == images.device
        for i in range(2):
            for v in range(2):
                x1, y1, x2, y2 = boxes[i, v].int().tolist()
                expected = TF.resized_crop(
                    images[i], y1, x1, y2 - y1, x2 - x1, [16, 16], antialias=False
                )
                if flip[i, v]:
                    expected = expected.flip(-1)
                torch.testing.assert_close(out[i, v], expected, atol=1e-5, rtol=0)


def test_a_uint8_batch_is_cropped_as_its_float_values_within_rounding():
    images = torch.randint(0, 256, (3, 3, 40, 50), dtype=torch.uint8)
    sizes = torch.tensor([[40, 50]] * 3)
    boxes = sample_crop_boxes(
        sizes[:, 0].repeat(2), sizes[:, 1].repeat(2), (0.08, 1), (0.75, 4 / 3)
    )
    flip = torch.rand(3, 2) < 0.5
    ours = interpolated_crops(images, sizes, boxes.view(3, 2, 4), flip, 24)
    exact = sampled_crops(images.float() / 255, sizes, boxes.view(3, 2, 4), flip, 24)
    assert (ours - exact).abs().max() <= 1 / 255 + 1e-6  # fixed-point weights, rounded to a level


@pytest.mark.parametrize("size", [32, 48])  # one grid_sample, then crop by crop
def test_crops_stay_inside_the_valid_region_of_a_padded_canvas(size):
    canvas = torch.zeros(2, 3, 64, 64, dtype=torch.uint8)
    canvas[0, :, :20, :30] = 255
    canvas[1, :, :64, :10] = 255
    sizes = torch.tensor([[20, 30], [64, 10]])
    a, b = SimCLRAugment(size, **only(scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)))(canvas, sizes)
    assert torch.cat([a, b]).min() > 0.999


def test_a_crop_box_outside_the_valid_region_is_clamped_to_it():
    canvas = torch.zeros(1, 1, 40, 40)
    canvas[0, :, :20, :30] = 1.0
    boxes = torch.tensor([[[-3.0, -2.0, 45.0, 50.0], [25.0, 15.0, 60.0, 60.0]]])
    out = interpolated_crops(
        canvas, torch.tensor([[20, 30]]), boxes, torch.tensor([[False, True]]), 8
    )
    assert out.shape == (1, 2, 1, 8, 8) and out.min() == 1.0  # never the padding


COLOUR_OPERATIONS = pytest.mark.parametrize(
    "operation, factor",
    [
        ("brightness", 1.4),
        ("contrast", 0.3),
        ("saturation", 1.7),
        # hue shifts across the wrap of each channel's sextant (red, green, blue: n - 1 + 6 shift
        # a multiple of 6 at 1/3, 2/3 and 0) and at both ends of torchvision's range
        *[("hue", s) for s in (0.17, -0.2, 0.0, 1 / 3, -1 / 3, 0.5, -0.5)],
    ],
)


def images_with_ties(device: torch.device | str = "cpu") -> torch.Tensor:
    """Three images with grey pixels and ties for the largest channel (the hue's branches)."""
    images = torch.rand(3, 3, 17, 19, device=device)
    images[0, :, :4] = 0.5  # grey pixels: zero chroma
    images[1, :2, :4] = 0.8  # red and green tie for the largest channel: red's branch
    images[2, 1:, :4] = 0.7  # green and blue tie: green's branch
    return images


def torchvision_colour(operation: str, images: torch.Tensor, factor: float) -> torch.Tensor:
    return torch.stack([getattr(TF, f"adjust_{operation}")(image, factor) for image in images])


@COLOUR_OPERATIONS
def test_colour_operations_match_torchvision(operation, factor, device):
    images = images_with_ties(device)
    batched = getattr(augment_module, f"adjust_{operation}_")
    out = batched(images.clone(), torch.full((3,), factor, device=device))
    expected = torchvision_colour(operation, images, factor)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=0)


@COLOUR_OPERATIONS
def test_the_view_kernels_colour_operations_match_torchvision(operation, factor, view_kernels):
    """One view at a time, its parameter a Python number: the fused kernels of the CPU's path."""
    images = images_with_ties()
    expected = torchvision_colour(operation, images, factor)
    one_view = getattr(view_kernels, f"adjust_{operation}_")
    for number in (factor, np.float32(factor)) + ((int(factor),) if factor == int(factor) else ()):
        views = images.clone()
        assert all(one_view(view, number) is view for view in views)  # in place
        torch.testing.assert_close(views, expected, atol=2e-5, rtol=0)


def test_blur_matches_torchvision(device):
    images = torch.rand(2, 3, 40, 40, device=device)
    sigma = torch.tensor([0.7, 1.9], device=device)
    out = gaussian_blur(images, sigma, radius=5)
    for i in range(2):
        expected = TF.gaussian_blur(images[i], [11, 11], [sigma[i].item()] * 2)
        torch.testing.assert_close(out[i], expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "sigma, radius, height, width",
    [(0.1, 1, 21, 26), (0.7, 3, 21, 26), (1.9, 8, 21, 26), (2.0, 2, 21, 26), (1.5, 6, 21, 9),
     (1.5, 6, 9, 21)],
)  # fmt: skip
def test_the_blur_of_one_view_matches_torchvision(sigma, radius, height, width, view_kernels):
    """The fused kernel; where a side is 9 a radius of 6 reflects taps at both ends of a row or a
    column."""
    view = torch.rand(3, height, width)
    expected = TF.gaussian_blur(view, [2 * radius + 1] * 2, [sigma] * 2)
    assert view_kernels.gaussian_blur_view_(view, sigma, radius) is view  # in place
    torch.testing.assert_close(view, expected, atol=1e-5, rtol=0)


def test_the_view_kernels_refuse_what_they_cannot_work_on(view_kernels):
    with pytest.raises(ValueError, match="radius"):
        view_kernels.gaussian_blur_view_(torch.rand(3, 21, 9), 1.0, 9)  # reflection cannot pad
    with pytest.raises(ValueError, match="sigma"):
        view_kernels.gaussian_blur_view_(torch.rand(3, 21, 9), 0.0, 2)
    for bad in (torch.rand(2, 3, 8, 8), torch.rand(1, 3, 8, 8), torch.rand(1, 6, 4)):
        with pytest.raises(ValueError, match=r"\(3, H, W\)"):  # a batch would mix its views
            view_kernels.adjust_contrast_(bad, 1.2)
    for bad in (torch.rand(3, 8, 8, dtype=torch.float64), torch.rand(3, 8, 16)[:, :, ::2]):
        with pytest.raises(ValueError, match="float32 and contiguous"):
            view_kernels.adjust_hue_(bad, 0.1)


@pytest.mark.parametrize("operation", ["brightness", "contrast", "saturation", "hue"])
def test_a_nan_pixel_spreads_in_the_kernels_as_in_torchvision(operation, view_kernels):
    """The kernels do not assume finite values (no fast-math nnan): where torchvision's result is NaN,
    theirs is, and nowhere else (one pixel, or the whole view through the contrast's mean)."""
    image = torch.rand(3, 8, 8)
    image[1, 2, 3] = float("nan")
    factor = 0.1 if operation == "hue" else 1.2
    expected = getattr(TF, f"adjust_{operation}")(image, factor)
    out = getattr(view_kernels, f"adjust_{operation}_")(image.clone(), factor)
    assert expected.isnan().any() and torch.equal(out.isnan(), expected.isnan())


NO_NUMBA_CACHE = """
import numba.core.caching, torch
numba.core.caching.CacheImpl._locator_classes = []  # no directory numba may write to
from trainer.data import view_kernels
view = torch.full((3, 8, 8), 0.5)
print(view_kernels.adjust_brightness_(view, 1.5).max().item())
"""


def test_the_kernels_compile_where_numba_has_nowhere_to_cache_them(view_kernels):
    """A read-only install without a home: numba.njit(cache=True) raises at import; the kernels
    are then compiled in the process instead."""
    run = subprocess.run([sys.executable, "-c", NO_NUMBA_CACHE], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["0.75"]
    assert run.stderr.count("no writable cache directory") == 1  # said once, not per kernel


def test_without_numba_the_views_are_made_batched_alike(monkeypatch, caplog, view_kernels):
    """Where numba is not installed (the GPU machine's own environment), the CPU takes the batched
    tensor path, says so once, and gives the views the kernels give."""
    images = torch.randint(0, 256, (4, 3, 150, 150), dtype=torch.uint8)
    augment = SimCLRAugment(128)
    fused = augment(images, generator=torch.Generator().manual_seed(2))
    augment_module._view_kernels.cache_clear()
    monkeypatch.delitem(sys.modules, "trainer.data.view_kernels")
    monkeypatch.delattr("trainer.data.view_kernels")  # the package's attribute: imported afresh
    monkeypatch.setitem(sys.modules, "numba", None)  # import numba -> ModuleNotFoundError
    try:
        assert augment_module._view_kernels() is None
        assert not augment._view_by_view(fused[0])
        batched = augment(images, generator=torch.Generator().manual_seed(2))
    finally:
        augment_module._view_kernels.cache_clear()
    assert "numba cannot be imported" in caplog.text
    torch.testing.assert_close(batched, fused, atol=1e-4, rtol=0)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_crops_do_not_depend_on_the_batch_layout_and_flip_exactly(layout):
    images = torch.randint(0, 256, (3, 3, 40, 50), dtype=torch.uint8)
    sizes = torch.tensor([[40, 50], [31, 50], [40, 22]])
    boxes = torch.tensor([[[0.0, 0.0, 50.0, 40.0], [7.0, 3.0, 30.0, 25.0]]] * 3)
    flip = torch.tensor([[False, True], [True, False], [True, True]])
    out = interpolated_crops(images.contiguous(memory_format=layout), sizes, boxes, flip, 24)
    assert torch.equal(out[0, 0], TF.resize(images[0], [24, 24], antialias=False).float() / 255)
    unflipped = interpolated_crops(images, sizes, boxes, torch.zeros_like(flip), 24)
    expected = torch.where(flip[..., None, None, None], unflipped.flip(-1), unflipped)
    assert torch.equal(out, expected)  # a uint8 crop flipped, then resized: the same values


def test_compiled_equals_eager():
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    eager = SimCLRAugment(24)(images, generator=torch.Generator().manual_seed(3))
    compiled = SimCLRAugment(24, compile=True)(images, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", [48, 128])  # crop by crop; and colours view by view
@pytest.mark.parametrize("channels", [1, 3])
def test_the_cpu_paths_equal_the_batched_ones_other_devices_take(size, channels, monkeypatch):
    images = torch.rand(
        6, channels, 56, 56
    )  # (uint8 crops round: test_a_uint8_batch_is_cropped...)
    sizes = torch.tensor([[56, 56], [30, 50], [56, 20]] * 2)  # images of three sizes on one canvas
    augment = SimCLRAugment(size, blur=True)
    cpu = augment(images, sizes, generator=torch.Generator().manual_seed(5))
    monkeypatch.setattr(SimCLRAugment, "_view_by_view", lambda self, views: False)
    monkeypatch.setattr(augment_module, "_CROP_BY_CROP_MIN_SIZE", 10**9)
    batched = augment(images, sizes, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(cpu, batched, atol=1e-4, rtol=0)  # float rounding, hue amplifies it


HUGE_PAGES_OF_VIEWS = """
import re, sys
import torch
from trainer.data.augment import empty_views

def huge_pages_kb(tensor):
    # kB of transparent huge pages in the mappings that overlap the tensor's memory (madvise
    # splits a mapping at the range it is given)
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    total, overlaps = 0, False
    for line in open("/proc/self/smaps").read().splitlines():
        bounds = re.match(r"([0-9a-f]+)-([0-9a-f]+) ", line)
        if bounds:
            overlaps = int(bounds[1], 16) < end and start < int(bounds[2], 16)
        elif overlaps and line.startswith("AnonHugePages:"):
            total += int(line.split()[1])
    return total

shape = (int(sys.argv[1]), 2, 3, 224, 224)
views = empty_views(shape, torch.device("cpu")).fill_(0.5)  # the first touch picks the pages
plain = torch.empty(shape).fill_(0.5)
print(huge_pages_kb(views), huge_pages_kb(plain))
"""

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


@pytest.mark.skipif(
    sys.platform != "linux" or not THP.exists() or "[madvise]" not in THP.read_text(),
    reason="needs Linux with transparent huge pages on request (madvise), as on these machines",
)
def test_a_large_batch_of_views_gets_huge_pages_and_a_small_one_none():
    """In a fresh interpreter (what the allocator serves depends on what it freed before): 36
    views of 224 px (41 MiB, a mapping of its own) are backed by huge pages and a plain tensor
    of the same size is not; 8 views (9 MiB, perhaps heap already touched) are not advised."""

    def kb(images: int) -> list[int]:
        out = subprocess.run([sys.executable, "-c", HUGE_PAGES_OF_VIEWS, str(images)],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
        return [int(word) for word in out.split()]

    views, plain = kb(36)
    assert views >= 36 * 1024 and plain == 0  # most of its 41 MiB, in 2-MiB pages
    assert kb(8) == [0, 0]
