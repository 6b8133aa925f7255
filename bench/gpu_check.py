"""GPU readiness: one prepared command that proves the GPU path and records its figures.

    python -m bench.gpu_check --out "$OUT"          # on a machine with a CUDA GPU (make gpu-check)
    python -m bench.gpu_check --device cpu --smoke  # the reduced form make test runs (tiny sizes)

It imports the trainer's and the models' code only (no service, no Ray), and nothing newer than
torch 2.11 on its path: the lent H200 machine has its own Python 3.12 with torch 2.11 and no
network (``make gpu-wheels`` fetches the few wheels it lacks; docs/benchmarks.md has the exact
command). Every figure is a ratio in the same run:

1. augmentation: ``SimCLRAugment`` on the device, 224-px views from 256-px uint8 batches, views/s,
   against lightly's ``SimCLRTransform`` in a ``DataLoader`` with ``--lightly-workers`` processes,
   and the share of a ResNet-50 step it costs;
2. the SimCLR step: ResNet-50 at 224 px, 256 and 512 images per GPU, NT-Xent + LARS: eager fp32
   (torch's defaults: TF32 convolutions on CUDA, recorded) and bf16 autocast + channels-last;
   images/s and the share of the chip's bf16 matmul rate measured here; against lightly's
   ``NTXentLoss`` + ``LARS`` on the same model and settings (7 adds ``torch.compile``);
3. the whole step from a uint8 batch on the device (augment, forward, loss, backward, LARS);
4. a batch of 4,096 on one device through the gradient cache, against the largest unchunked batch
   that fits (and the memory 4,096 would need by extrapolation);
5. the CUDA cases of the test suite's device tests (``pytest -m cuda``: augmentation against
   torchvision, NT-Xent against Eq. (1) and its gradient, the gradient cache and its dropout
   replay, and the SimCLR loop itself on the device: its checkpoint, an interrupted run resumed to
   the uninterrupted one's weights, the gradient cache in the loop); on a GPU a skipped case fails
   it, on a CPU each is skipped and the run only proves that they are collected;
6. correctness on the device: bf16 against fp32 (centred projections and their loss, which
   untrained raw projections cannot tell apart); the gradient cache against the whole batch;
   NT-Xent's gather and its reduce-scatter backward, and global batch norm, run by the device's
   backend (NCCL on CUDA) on a one-rank group with the collective path forced, against
   one-process values, in a child process (NCCL's watchdog ends the process of a collective that
   fails; one rank proves the backend runs these paths, the two-rank gloo tests their sums);
7. the step of 2 (bf16 + channels-last, the smaller batch) through ``torch.compile``: last, as a
   cold compilation takes minutes.

A section that fails is recorded with its error and the others still run; so does a row of 2 or 7
(a batch that does not fit is a figure, "out of memory", not a failure; on a GPU, lightly missing
is a failure, as the run is for that comparison). It rewrites
``gpu_check.json`` and ``gpu_check.md`` under ``--out`` (default ``$OUT``, else ``gpu-check/``)
after every section and prints a one-line summary last. Budget: about 8 minutes on an H200 from a
cold start, ``torch.compile`` of ResNet-50 included (``--no-compile`` drops it); a run stopped
before its end says so (``finished`` false, "UNFINISHED" in the table).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path
from unittest import mock

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from models import ProjectionHead, SimCLRNet, build_backbone
from trainer.data.augment import SimCLRAugment
from trainer.global_bn import convert_to_global_batch_norm
from trainer.gradient_cache import gradient_cache_backward
from trainer.losses import nt_xent
from trainer.optim import LARS, lars_param_groups
from trainer.precision import autocast_for, without_tf32

TEMPERATURE = 0.1
CUDA_CASES = 33  # what CUDA_TESTS hold (pytest -m cuda); on a GPU fewer passing fails section 5
CUDA_TESTS = ("tests/trainer/test_augment.py", "tests/trainer/test_losses.py",
              "tests/trainer/test_gradient_cache.py", "tests/trainer/test_pretrain.py")  # fmt: skip
ROOT = Path(__file__).resolve().parent.parent
# the sections whose figures another section or the summary reads
AUGMENTATION = "1. augmentation"
STEP = "2. SimCLR step, ResNet-50"
BIG_BATCH = "4. batch 4096 on one device"
COMPILED_STEP = "7. SimCLR step compiled"


@dataclass(frozen=True)
class Sizes:
    view: int = 224
    source: int = 256
    batches: tuple[int, ...] = (256, 512)  # images per GPU
    big_batch: int = 4096
    chunk: int = 512  # views per chunk of the gradient cache
    unchunked: tuple[int, ...] = (512, 1024, 2048, 4096)  # images tried without the cache
    augment_batch: int = 256
    lightly_images: int = 4096
    lightly_batch: int = 64  # 64 batches an epoch: every one of 16 workers busy
    lightly_workers: int = 16
    steps: int = 10
    warmup: int = 3
    matmul: int = 8192


SMOKE = Sizes(view=32, source=40, batches=(2, 4), big_batch=8, chunk=4, unchunked=(2, 4),
              augment_batch=8, lightly_images=16, lightly_batch=8, lightly_workers=0, steps=1, warmup=1,
              matmul=256)  # fmt: skip


class Report:
    """Sections' figures and failures, timed, printed as they come, and saved under ``out`` after
    each section (a run stopped at its time limit keeps what it measured)."""

    def __init__(self, device: torch.device, sizes: Sizes, smoke: bool, out: Path):
        self.start = time.perf_counter()
        self.device = device
        self.out = out
        out.mkdir(parents=True, exist_ok=True)  # an unusable --out fails now, not after minutes
        self.data: dict = {"device": device_name(device), "torch": torch.__version__,
                           "smoke": smoke, "sizes": asdict(sizes), "sections": {}, "failures": [],
                           "finished": False}  # fmt: skip
        if device.type == "cuda":  # what "fp32" means here (torch's defaults: TF32 convolutions)
            self.data["tf32"] = {"matmul": torch.backends.cuda.matmul.allow_tf32,
                                 "cudnn": torch.backends.cudnn.allow_tf32}  # fmt: skip
            self.data["nvidia_smi"] = nvidia_smi()

    @contextmanager
    def section(self, name: str):
        self.data["sections"][name] = figures = {}
        began = time.perf_counter()
        print(f"[{began - self.start:6.1f} s] {name}", flush=True)
        try:
            yield figures
        except Exception as error:  # one section's failure must not hide the others' figures
            figures["error"] = f"{type(error).__name__}: {error}"
            self.data["failures"].append(f"{name}: {figures['error']}")
            traceback.print_exc()
        finally:
            figures["seconds"] = round(time.perf_counter() - began, 1)
            try:
                empty_cache(self.device)
            except Exception as error:  # a sticky CUDA error: recorded, and the figures saved
                figures.setdefault("error", f"{type(error).__name__}: {error}")
            self.keep()

    def keep(self) -> None:
        """``save``, and on an error a line on stderr: the run goes on (main's last save raises)."""
        try:
            self.save()
        except OSError as error:
            print(f"could not save under {self.out}: {error!r}", file=sys.stderr, flush=True)

    def save(self) -> None:
        """``gpu_check.json`` and ``gpu_check.md`` under ``out``, each written whole, then renamed."""
        self.data["seconds"] = time.perf_counter() - self.start
        for name, text in (("gpu_check.json", json.dumps(self.data, indent=2, default=str)),
                           ("gpu_check.md", markdown(self.data))):  # fmt: skip
            partial = self.out / f".{name}.partial"
            partial.write_text(text)
            partial.replace(self.out / name)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU, {torch.get_num_threads()} threads"


def nvidia_smi() -> str:
    """The GPU as the driver reports it: name, driver, compute mode (an exclusive one would fail
    section 5's child process), power limit and clocks."""
    fields = "name,driver_version,compute_mode,power.limit,clocks.max.sm,clocks.max.memory"
    try:
        return subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError) as error:
        return f"not read: {type(error).__name__}"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def seconds_per_call(work: Callable[[], object], device: torch.device, steps: int,
                     warmup: int) -> float:  # fmt: skip
    for _ in range(warmup):
        work()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        work()
    synchronize(device)
    return (time.perf_counter() - start) / steps


def uint8_images(n: int, side: int, device: torch.device) -> torch.Tensor:
    """Smooth random images (not white noise), as an image batch from a decoder would be."""
    small = torch.randint(0, 256, (n, 3, max(2, side // 8), max(2, side // 8)), dtype=torch.uint8)
    images = nn.functional.interpolate(small.float(), size=side, mode="bilinear")
    return images.round().clamp(0, 255).to(torch.uint8).to(device)


def resnet50(device: torch.device, channels_last: bool) -> SimCLRNet:
    torch.manual_seed(0)
    backbone = build_backbone("resnet50", cifar_stem=False)
    model = SimCLRNet(backbone, ProjectionHead(backbone.feature_dim)).to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def matmul_rate(device: torch.device, n: int) -> float:
    """FLOP/s of an n x n matmul in bf16 (fp32 on a CPU): the chip's matrix rate, measured."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = (
        torch.randn(n, n, device=device, dtype=dtype),
        torch.randn(n, n, device=device, dtype=dtype),
    )
    return 2 * n**3 / seconds_per_call(lambda: a @ b, device, 10, 3)


def simclr_step(model: nn.Module, views: torch.Tensor, optimizer, bf16: bool,
                loss_fn: Callable = lambda a, b: nt_xent(a, b, TEMPERATURE)) -> Callable[[], None]:  # fmt: skip
    def step() -> None:
        with autocast_for("bf16" if bf16 else "fp32", views.device):
            z = model(views)
        loss = loss_fn(*z.float().chunk(2))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def ours_lars(model: nn.Module):
    return LARS(lars_param_groups(model, 1e-6), lr=0.1, momentum=0.9)


def float_views(images: int, side: int, device: torch.device, channels_last: bool) -> torch.Tensor:
    views = torch.rand(2 * images, 3, side, side, device=device)
    return views.contiguous(memory_format=torch.channels_last) if channels_last else views


def step_flops_per_image(device: torch.device, side: int) -> float:
    """FLOPs of one image's forward + backward (its two views), counted by torch."""
    model = resnet50(device, False)
    views = float_views(2, side, device, False)
    with FlopCounterMode(display=False) as counter:
        z = model(views)
        nt_xent(*z.chunk(2), TEMPERATURE).backward()
    return counter.get_total_flops() / 2


def augmentation(report: Report, sizes: Sizes, workers: int) -> None:
    device = report.device
    with report.section(AUGMENTATION) as figures:
        images = uint8_images(sizes.augment_batch, sizes.source, device)
        augment = SimCLRAugment(sizes.view)
        seconds = seconds_per_call(lambda: augment(images), device, sizes.steps, sizes.warmup)
        figures["ours_views_per_s"] = 2 * sizes.augment_batch / seconds
        figures["ours_seconds_per_batch"] = seconds
        try:
            from lightly.transforms import SimCLRTransform
        except ImportError as error:
            without_lightly(report, figures, AUGMENTATION, error)
            return
        from PIL import Image

        pictures = [Image.fromarray(image.permute(1, 2, 0).cpu().numpy())
                    for image in uint8_images(sizes.lightly_images, sizes.source, torch.device("cpu"))]  # fmt: skip
        transform = SimCLRTransform(input_size=sizes.view, normalize=None)
        # collated into one tensor a view, as lightly's users run it (a list of 512 tensors would
        # cost a shared-memory handle each); a worker that dies fails the section, not the run
        loader = torch.utils.data.DataLoader(
            _Transformed(pictures, transform), batch_size=sizes.lightly_batch,
            num_workers=workers, persistent_workers=workers > 0, timeout=120 if workers else 0,
        )  # fmt: skip
        for _ in loader:  # the workers start and warm up
            pass
        start = time.perf_counter()
        for _ in loader:
            pass
        rate = 2 * len(pictures) / (time.perf_counter() - start)
        figures["lightly_views_per_s"] = rate
        figures["lightly_workers"] = workers
        if Path("/dev/shm").is_dir():  # where the workers' batches wait (16 x 2 of 77 MB)
            figures["dev_shm_gib"] = shutil.disk_usage("/dev/shm").total / 2**30
        figures["ratio_to_lightly"] = figures["ours_views_per_s"] / rate


def without_lightly(report: Report, figures: dict, section: str, error: ImportError) -> None:
    """lightly, the peer of sections 1 and 2, is not importable (``error`` says which module is
    missing: lightly, or one of its own imports): a note on a CPU (``make test`` installs no bench
    extras), a failure on a GPU, whose run is for that comparison (``make gpu-wheels`` brings
    lightly there). Our own figures are measured either way."""
    figures["lightly"] = f"skipped: lightly is not importable ({error})"
    if report.device.type != "cpu":
        report.data["failures"].append(f"{section}: {figures['lightly']} (make gpu-wheels)")


class _Transformed(torch.utils.data.Dataset):
    def __init__(self, pictures, transform):
        self.pictures, self.transform = pictures, transform

    def __len__(self) -> int:
        return len(self.pictures)

    def __getitem__(self, index: int):
        return self.transform(self.pictures[index])


COMPARED = "bf16 + channels-last"  # the variant measured against lightly on the same settings
EAGER = (("fp32 eager", False, False, False), (COMPARED, True, True, False))
COMPILED = (("bf16 + channels-last + compile", True, True, True),)


def steps(report: Report, sizes: Sizes, section: str, variants, batches: tuple[int, ...]) -> None:
    """Section 2 (``EAGER`` variants) and the last one (``COMPILED``): a row per batch size and
    variant, each measured on its own (a row that fails is recorded, and the next one runs)."""
    device = report.device
    with report.section(section) as figures:
        measured = report.data["sections"].get(STEP, {})
        if "matmul_tflops" in measured:  # 7 shares 2's rate and FLOPs: one denominator
            rate = measured["matmul_tflops"] * 1e12
            flops = measured["step_gflop_per_image"] * 1e9
        else:
            rate = matmul_rate(device, sizes.matmul)
            flops = step_flops_per_image(device, sizes.view)
        figures["matmul_tflops"] = rate / 1e12
        figures["step_gflop_per_image"] = flops / 1e9
        lightly = None
        if any(name == COMPARED for name, *_ in variants):
            try:
                from lightly.loss import NTXentLoss
                from lightly.utils.lars import LARS as LightlyLARS

                lightly = (NTXentLoss, LightlyLARS)
            except ImportError as error:
                without_lightly(report, figures, section, error)
        rows = figures["rows"] = []
        for batch in batches:
            for name, bf16, channels_last, compiled in variants:
                row = {"variant": name, "images": batch}
                rows.append(row)
                try:
                    step_row(device, sizes, row, bf16, channels_last, compiled, flops, rate,
                             lightly if name == COMPARED else None)  # fmt: skip
                except Exception as error:
                    row["error"] = f"{type(error).__name__}: {error}"
                    report.data["failures"].append(f"{section}, {name} x{batch}: {row['error']}")
                    traceback.print_exc()
                    synchronize(device)  # a sticky CUDA error ends the section: no row could run
                report.keep()  # the next row begins by emptying the cache, the section ends so


def step_row(
    device: torch.device, sizes: Sizes, row: dict, bf16: bool, channels_last: bool,
    compiled: bool, flops: float, rate: float, lightly: tuple | None,
) -> None:  # fmt: skip
    """One variant of the step at ``row["images"]`` images, into ``row``: its rate, share of the
    matmul rate, peak memory, and (``lightly``: its loss and LARS classes) lightly's rate on the
    same settings; "out of memory" where the batch does not fit."""
    batch = row["images"]
    empty_cache(device)
    model = resnet50(device, channels_last)
    forward = torch.compile(model) if compiled else model
    views = float_views(batch, sizes.view, device, channels_last)
    step = simclr_step(forward, views, ours_lars(model), bf16)

    def first_then_timed() -> float:
        began = time.perf_counter()
        step()
        synchronize(device)
        row["first_step_s"] = time.perf_counter() - began
        return seconds_per_call(step, device, sizes.steps, sizes.warmup)

    seconds = fits(first_then_timed)
    if seconds is None:
        row["error"] = "out of memory"
        return
    row["images_per_s"] = batch / seconds
    row["share_of_matmul_rate"] = flops * batch / seconds / rate
    row["peak_gib"] = peak_gib(device)
    if lightly is not None:
        loss_class, lars_class = lightly
        del step, forward, model
        empty_cache(device)
        theirs = resnet50(device, channels_last)
        optimizer = lars_class(lars_param_groups(theirs, 1e-6), lr=0.1, momentum=0.9)
        their_step = simclr_step(
            theirs, views, optimizer, bf16, loss_class(temperature=TEMPERATURE)
        )
        their_seconds = fits(
            lambda: seconds_per_call(their_step, device, sizes.steps, sizes.warmup)
        )
        if their_seconds is None:
            row["lightly_error"] = "out of memory"
            return
        row["lightly_images_per_s"] = batch / their_seconds
        row["ratio_to_lightly"] = their_seconds / seconds


# cuBLAS: CUBLAS_STATUS_ALLOC_FAILED; cuDNN 9: CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED
OUT_OF_MEMORY = re.compile(r"out of memory|ALLOC(ATION)?_FAILED")


def fits(measure: Callable[[], float]) -> float | None:
    """``measure()``, or None where the device ran out of memory (the error, and the tensors its
    traceback holds, released on return)."""
    try:
        return measure()
    except RuntimeError as error:
        if not out_of_memory(error):
            raise
        return None


def out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` says the device ran out of memory: the caching allocator raises
    ``torch.cuda.OutOfMemoryError``, cuDNN and cuBLAS a RuntimeError naming a failed allocation."""
    return isinstance(error, torch.cuda.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and OUT_OF_MEMORY.search(str(error)) is not None
    )


def whole_step(report: Report, sizes: Sizes) -> None:
    device = report.device
    with report.section("3. whole step from uint8") as figures:
        batch = sizes.batches[0]
        model = resnet50(device, True)
        optimizer = ours_lars(model)
        augment = SimCLRAugment(sizes.view)
        images = uint8_images(batch, sizes.source, device)

        def step() -> None:
            view_a, view_b = augment(images)
            views = torch.cat([view_a, view_b]).contiguous(memory_format=torch.channels_last)
            simclr_step(model, views, optimizer, True)()

        seconds = seconds_per_call(step, device, sizes.steps, sizes.warmup)
        figures["images"] = batch
        figures["images_per_s"] = batch / seconds
        figures["peak_gib"] = peak_gib(device)
        augment_s = report.data["sections"].get(AUGMENTATION, {}).get("ours_seconds_per_batch")
        if augment_s is not None:  # measured on augment_batch images
            figures["augmentation_share"] = augment_s * batch / sizes.augment_batch / seconds


def big_batch(report: Report, sizes: Sizes) -> None:
    device = report.device
    with report.section(BIG_BATCH) as figures:
        figures["images"] = sizes.big_batch
        model = resnet50(device, True)
        optimizer = ours_lars(model)
        figures["chunk_views"] = sizes.chunk
        figures["cache_seconds_per_step"] = cached_step_seconds(model, optimizer, sizes, device)
        figures["cache_peak_gib"] = peak_gib(device)
        fitted = figures["unchunked"] = []
        for images in sizes.unchunked:
            empty_cache(device)
            step = simclr_step(
                model, float_views(images, sizes.view, device, True), optimizer, True
            )
            seconds = fits(partial(seconds_per_call, step, device, 1, 1))
            del step  # and its views
            if seconds is None:
                fitted.append({"images": images, "error": "out of memory"})
                break
            fitted.append({"images": images, "seconds_per_step": seconds,
                           "peak_gib": peak_gib(device)})  # fmt: skip
        largest = [row for row in fitted if "error" not in row]
        if largest and largest[-1]["peak_gib"] is not None:
            per_image = largest[-1]["peak_gib"] / largest[-1]["images"]
            figures["unchunked_gib_at_big_batch"] = per_image * sizes.big_batch


def cached_step_seconds(model: nn.Module, optimizer, sizes: Sizes, device: torch.device) -> float:
    """Seconds of a gradient-cache step over ``sizes.big_batch`` images in chunks of
    ``sizes.chunk`` views, bf16 autocast, channels-last."""
    view_a, view_b = float_views(sizes.big_batch, sizes.view, device, True).chunk(2)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        gradient_cache_backward(model, view_a, view_b, TEMPERATURE, sizes.chunk,
                                lambda: autocast_for("bf16", device))  # fmt: skip
        optimizer.step()

    return seconds_per_call(step, device, 2, 1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def correctness(report: Report) -> None:
    device = report.device
    with report.section("6. correctness") as figures:
        checks = figures["checks"] = {}
        checks.update(bf16_against_fp32(device, figures))

        with without_tf32():  # exact arithmetic, no batch-dependent layer: chunked = whole
            whole, chunked = (_group_norm_net(device) for _ in range(2))
            view_a, view_b = torch.randn(2, 16, 3, 12, 12, device=device)
            nt_xent(*whole(torch.cat([view_a, view_b])).chunk(2), TEMPERATURE).backward()
            gradient_cache_backward(chunked, view_a, view_b, TEMPERATURE, 5)
            checks["gradient cache = whole batch"] = all(
                torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-6)
                for a, b in zip(whole.parameters(), chunked.parameters(), strict=True)
            )
        checks.update(collectives_in_child(device))
        failed = [name for name, ok in checks.items() if not ok]
        if failed:
            raise AssertionError(f"failed: {'; '.join(failed)}")


def bf16_against_fp32(device: torch.device, figures: dict) -> dict[str, bool]:
    """The network under bf16 autocast and the loss in fp32, as trained, against full fp32 (TF32
    off). At initialisation every projection points almost the same way, so the loss of raw
    projections is log(2n - 1) whatever the network computes (a check on it cannot fail): the
    projections are centred over the batch first, and the views are positive pairs (an image and
    a slightly noisy copy), which a wrong pairing would cost dearly. Passes when bf16's loss is
    within 5 % of that cost of fp32's, and every centred projection within cosine 0.9 of fp32's."""
    torch.manual_seed(0)
    model = resnet50(device, True).eval()
    images = uint8_images(8, 64, device).float() / 255
    views = torch.cat([images, images + 0.05 * torch.randn_like(images)])
    views = views.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        with without_tf32():
            fp32 = centred(model(views))
        with autocast_for("bf16", device):
            bf16 = centred(model(views).float())
    loss, loss_bf16 = (nt_xent(*z.chunk(2), TEMPERATURE).item() for z in (fp32, bf16))
    first, second = fp32.chunk(2)
    wrong_pairs = nt_xent(first, second.roll(1, 0), TEMPERATURE).item()
    figures.update(fp32_loss=loss, bf16_loss=loss_bf16, wrongly_paired_loss=wrong_pairs)
    figures["bf16_error_share_of_a_wrong_pairing"] = abs(loss_bf16 - loss) / abs(wrong_pairs - loss)
    figures["bf16_projection_cosine_min"] = nn.functional.cosine_similarity(fp32, bf16).min().item()
    return {
        "bf16 loss = fp32 (error under 5 % of a wrong pairing's)":
            figures["bf16_error_share_of_a_wrong_pairing"] < 0.05,
        "bf16 projections = fp32 (centred, cosine over 0.9)":
            figures["bf16_projection_cosine_min"] > 0.9,
    }  # fmt: skip


def centred(z: torch.Tensor) -> torch.Tensor:
    return z - z.mean(0)


def collectives_in_child(device: torch.device, timeout_s: float = 120) -> dict[str, bool]:
    """``collectives`` in a child process: on an error or a hang NCCL's watchdog tears its process
    down (``TORCH_NCCL_ASYNC_ERROR_HANDLING``'s default), which must not end this run."""
    code = ("import json, sys, torch; from bench.gpu_check import collectives; "
            "print(json.dumps(collectives(torch.device(sys.argv[1]))))")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code, str(device)], cwd=ROOT,
                            capture_output=True, text=True, timeout=timeout_s)  # fmt: skip
    if result.returncode != 0:
        print(result.stdout, result.stderr, sep="\n", flush=True)
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the collectives' process exited with {result.returncode}: {last}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def collectives(device: torch.device) -> dict[str, bool]:
    """NT-Xent's gather and its reduce-scatter backward, and global batch norm's all-reduces, run
    on the device's tensors by its backend (NCCL on CUDA), on a one-rank process group with the
    collective paths forced, against the values of one process without them. One rank proves that
    the backend runs these paths on the device, not that they sum over ranks (each collective is
    an identity there; NCCL takes one GPU per rank): the two-rank gloo tests prove the sums, and
    take the same code, reduce-scatter included."""
    torch.manual_seed(0)
    z_a = torch.randn(16, 32, device=device, requires_grad=True)
    z_b = torch.randn(16, 32, device=device, requires_grad=True)
    plain = nt_xent(z_a, z_b, TEMPERATURE)
    plain_grads = torch.autograd.grad(plain, (z_a, z_b))
    bn = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)).to(device)
    global_bn = convert_to_global_batch_norm(
        nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)).to(device)
    )
    global_bn.load_state_dict(bn.state_dict())
    x = torch.randn(12, 3, 9, 9, device=device)
    weights = torch.randn(12, 8, 7, 7, device=device)  # a loss that depends on the input
    expected = bn(x)
    (expected * weights).sum().backward()

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    backend = "nccl" if device.type == "cuda" else "gloo"
    # NCCL bound to its device at once; a collective that hangs ends the process after a minute
    bound = None
    if device.type == "cuda":
        bound = torch.device(
            "cuda", torch.cuda.current_device() if device.index is None else device.index
        )
    dist.init_process_group(backend, rank=0, world_size=1, timeout=timedelta(seconds=60),
                            device_id=bound)  # fmt: skip
    try:
        with mock.patch("trainer.losses.is_distributed", return_value=True), \
             mock.patch("trainer.global_bn.is_distributed", return_value=True):  # fmt: skip
            gathered = nt_xent(z_a, z_b, TEMPERATURE)
            grads = torch.autograd.grad(gathered, (z_a, z_b))
            out = global_bn(x)
            (out * weights).sum().backward()
    finally:
        dist.destroy_process_group()
    loss_ok = torch.allclose(gathered, plain, rtol=1e-5) and all(
        torch.allclose(g, p, rtol=1e-4, atol=1e-6) for g, p in zip(grads, plain_grads, strict=True)
    )
    pairs = [(out, expected), (global_bn[0].weight.grad, bn[0].weight.grad),
             (global_bn[1].weight.grad, bn[1].weight.grad), (global_bn[1].bias.grad, bn[1].bias.grad),
             (global_bn[1].running_mean, bn[1].running_mean),
             (global_bn[1].running_var, bn[1].running_var)]  # fmt: skip
    bn_ok = all(torch.allclose(ours, theirs, rtol=1e-3, atol=1e-4) for ours, theirs in pairs)
    return {
        f"nt_xent gather + reduce-scatter backward on {backend}, one rank": bool(loss_ok),
        f"global batch norm on {backend}, one rank = batch norm": bool(bn_ok),
    }


def suite_cases(report: Report) -> None:
    with report.section("5. the suite's CUDA cases") as figures:
        on_gpu = report.device.type == "cuda"
        if not suite_cuda_cases(CUDA_TESTS, figures, must_run=CUDA_CASES if on_gpu else 0):
            raise AssertionError(f"pytest -m cuda: {figures['pytest_cuda']}")


def suite_cuda_cases(
    tests: tuple[str, ...], figures: dict, must_run: int, timeout_s: float = 150
) -> bool:
    """Run the CUDA cases of ``tests`` (``pytest -m cuda``; each skips without a GPU) in a
    subprocess: the summary line, and each failed or erroring case, into ``figures``; the whole
    output to the log unless it passed. True if pytest passed (it fails where none is collected)
    and, if ``must_run``, at least that many cases passed and none was skipped: a child that does
    not see the GPU skips every case, and a test that stops taking the device fixture is one
    case fewer."""
    command = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-rfE", "--tb=short",
               "-p", "no:cacheprovider", "-W", "ignore", *tests]  # fmt: skip
    # room for each failed case's message; output as it comes, so a stopped run shows how far
    environment = {**os.environ, "COLUMNS": "240", "PYTHONUNBUFFERED": "1"}
    try:
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                                timeout=timeout_s, env=environment)  # fmt: skip
    except subprocess.TimeoutExpired as expired:
        for partial in (expired.stdout, expired.stderr):  # bytes (or None) even with text=True
            if partial:
                print(partial.decode(errors="replace") if isinstance(partial, bytes) else partial)
        figures["pytest_cuda"] = f"stopped after {timeout_s:.0f} s"
        return False
    lines = result.stdout.strip().splitlines() or [result.stderr.strip()[-300:]]
    figures["pytest_cuda"] = summary_line = lines[-1]
    # "33 passed, 84 deselected in 9.1s"
    counted = {word: int(number) for number, word in re.findall(r"(\d+) (\w+)", summary_line)}
    ran_all = counted.get("passed", 0) >= must_run and not (
        counted.get("skipped") or counted.get("xfailed")
    )
    passed = result.returncode == 0 and (not must_run or ran_all)
    if not passed:
        print(result.stdout, result.stderr, sep="\n", flush=True)
        figures["pytest_cuda_failed"] = [
            line for line in lines if line.startswith(("FAILED", "ERROR"))
        ]
    return passed


def _group_norm_net(device: torch.device) -> nn.Module:
    torch.manual_seed(5)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(8, 16),
    ).to(device)  # fmt: skip


def markdown(data: dict) -> str:
    lines = [f"# GPU check: {data['device']}, torch {data['torch']}"
             + (" (smoke: reduced sizes)" if data["smoke"] else ""), ""]  # fmt: skip
    if "nvidia_smi" in data:
        lines += [f"nvidia-smi (name, driver, compute mode, power limit, max clocks): "
                  f"{data['nvidia_smi']}; TF32 allowed: {data['tf32']}", ""]  # fmt: skip
    for name, figures in data["sections"].items():
        lines += [f"## {name} ({figures.get('seconds')} s)", "", "| figure | value |", "|---|---|"]
        for key, value in figures.items():
            if key == "rows" or key == "unchunked":
                continue
            shown = f"{value:.4g}" if isinstance(value, float) else str(value).replace("\n", " ")
            lines.append(f"| {key} | {shown} |")
        for row in figures.get("rows", []) + figures.get("unchunked", []):
            lines.append("| " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                          for k, v in row.items()) + " | |")  # fmt: skip
        lines.append("")
    lines.append("failures: " + ("; ".join(data["failures"]) or "none"))
    if not data["finished"]:  # its missing sections never ran: neither passed nor failed
        last = next(reversed(data["sections"]), "none")
        lines.append(f"UNFINISHED: the run stopped before its end; the last section saved: {last}")
    return "\n".join(lines) + "\n"


def summary(data: dict) -> str:
    sections = data["sections"]
    parts = [f"gpu-check {data['device']} ({data['seconds']:.0f} s)"]
    rows = [row for name in (STEP, COMPILED_STEP) for row in sections.get(name, {}).get("rows", [])]
    best = max(
        (r for r in rows if "images_per_s" in r), key=lambda r: r["images_per_s"], default=None
    )
    if best:
        parts.append(f"best step {best['variant']} x{best['images']}: {best['images_per_s']:.0f} img/s, "
                     f"{100 * best['share_of_matmul_rate']:.0f} % of the matmul rate")  # fmt: skip
    ratios = [r["ratio_to_lightly"] for r in rows if "ratio_to_lightly" in r]
    if ratios:
        parts.append(f"vs lightly {min(ratios):.2f}-{max(ratios):.2f}x")
    augment = sections.get(AUGMENTATION, {})
    if "ours_views_per_s" in augment:
        parts.append(f"augment {augment['ours_views_per_s']:.0f} views/s"
                     + (f" ({augment['ratio_to_lightly']:.1f}x lightly)" if "ratio_to_lightly" in augment else ""))  # fmt: skip
    big = sections.get(BIG_BATCH, {})
    if "cache_seconds_per_step" in big:
        parts.append(f"batch {big['images']} cached: {big['cache_seconds_per_step']:.2f} s/step")
    parts.append(f"failures: {len(data['failures'])}")
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: the code paths only")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu-check"))
    parser.add_argument("--lightly-workers", type=int, default=None,
                        help="DataLoader workers of lightly's pipeline (default 16; smoke 0)")  # fmt: skip
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --device cpu --smoke for the reduced form")
    sizes = SMOKE if args.smoke else Sizes()
    report = Report(device, sizes, args.smoke, args.out)
    workers = args.lightly_workers if args.lightly_workers is not None else sizes.lightly_workers
    # the compilation last: minutes cold, it cannot take the other sections' time
    augmentation(report, sizes, workers)
    steps(report, sizes, STEP, EAGER, sizes.batches)
    whole_step(report, sizes)
    big_batch(report, sizes)
    suite_cases(report)
    correctness(report)
    if not (args.no_compile or args.smoke):  # one compilation, budgeted once
        steps(report, sizes, COMPILED_STEP, COMPILED, sizes.batches[:1])
    report.data["finished"] = True  # a run stopped at its time limit says so in what it saved
    report.save()
    print(markdown(report.data))
    print(summary(report.data), flush=True)
    return 1 if report.data["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
