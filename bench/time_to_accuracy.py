"""SimCLR quality per unit of compute: linear-probe top-1 against wall-clock time, ours vs lightly.

    python -m bench.time_to_accuracy --data cifar10 --backbone small_cnn --budget 900
    python -m bench.time_to_accuracy --data digits --backbone small_cnn --budget 300

Data: the CIFAR-10 JPEGs of ../shared/data (10,000 images, ImageFolder layout): pretraining on
800 per class (8,000), the linear probe fit on the frozen features of those 8,000 and tested on the
other 2,000 (200 per class); or the bundled digits (1,347 / 450). Images are decoded once, before
the clock starts, for every contender alike.

Contenders, one after the other on this machine's cores, each with the same wall-clock budget
(data loading and augmentation included):
- ours: ``trainer.simclr_loop.run_simclr`` (batched augmentation on the uint8 batch, NT-Xent, LARS,
  warm-up + cosine per step);
- lightly: its ``SimCLRTransform`` per image in a torch ``DataLoader`` (``--lightly-workers``
  processes), its ``NTXentLoss`` and ``LARS``, with the SAME backbone and head modules, batch,
  parameter groups and schedule function, so only the pipeline differs;
- the encoder at its random initialisation (the weights both start from), and raw pixels.
The recipe is the paper's CIFAR one (colour strength 0.5, no blur, temperature 0.5) with LARS at
the product's default square-root lr scaling (0.075 x sqrt(256) = 1.2; ``--lr-scaling linear`` for
the paper's main-text 0.3 x B/256).
Each run's length in steps is set from its own step time, measured over a few steps before the
clock starts, so that its cosine schedule ends with the budget (``train_steps``: not rounded to
whole epochs, which at a few epochs per budget cost one contender up to an epoch of its time);
checkpoints every ``ceil(steps / --points)`` steps and at the end are scored afterwards (the
probe's time is not in the budget): fast-mode features of the centre view, the linear classifier
of ``trainer.linear_classifier`` (90 epochs).
Writes a table, a PNG plot (``--plot``), where each pipeline's time goes, when ours first
reached lightly's final top-1 against lightly's time to it, and both runs' top-1 at equal time (the
end of the shorter run: on a VM whose speed drifts, the planned budgets come out unequal).
Ours runs in the product's default precision (``auto``: bf16 autocast on a CPU with AMX or
AVX512-BF16 whose bf16 kernels the probe of ``trainer.precision`` finds faster; resolved once per
process, before the clocks start), lightly in fp32 as it does by default; ``--precision`` forces
ours'. The quality check of bf16 at equal steps runs ours alone for a fixed number of epochs:
``--only ours --epochs 15 --points 1 --precision fp32 --seed 1`` (and ``bf16``, other seeds).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import tarfile
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from bench.common import machine_summary
from trainer.contracts.config import SimCLRConfig
from trainer.data.datasets import ImageFolderImages, InMemoryImages, load_digits_split
from trainer.data.loader import steps_per_epoch
from trainer.linear_classifier import ProbeResult, extract_features, train_linear_probe
from trainer.losses import nt_xent
from trainer.optim import lars_param_groups
from trainer.plots import pyplot
from trainer.precision import autocast_for, resolve_precision
from trainer.session import LocalSession
from trainer.simclr_loop import run_simclr
from trainer.simclr_recipe import (
    LearningRateSchedule,
    build_augment,
    build_model,
    build_optimizer,
    model_layout,
    simclr_loss,
)

ROOT = Path(__file__).resolve().parent.parent
CIFAR_ARCHIVE = ROOT.parent / "shared" / "data" / "cifar10-test-jpg.tar.gz"


def load_cifar_split(archive: Path, scratch: Path) -> tuple[InMemoryImages, InMemoryImages]:
    """800 images per class to pretrain on (the first by file name), the other 200 to test."""
    with tarfile.open(archive) as tar:
        tar.extractall(scratch, filter="data")
    folder = ImageFolderImages(scratch / "test", max_side=32, on_error="raise")
    images = torch.stack([folder[i][0] for i in range(len(folder))])
    labels = folder.labels
    train_index, test_index = [], []
    for label in range(len(folder.classes)):
        members = (labels == label).nonzero().flatten().tolist()
        train_index += members[:800]
        test_index += members[800:]
    pick = lambda index: InMemoryImages(images[index], labels[index], folder.classes)  # noqa: E731
    return pick(torch.tensor(train_index)), pick(torch.tensor(test_index))


def load_split(data: str, scratch: Path) -> tuple[InMemoryImages, InMemoryImages, int]:
    """The pretraining and test images of ``data`` (cifar10: unpacked into ``scratch``; digits)
    and their view size."""
    if data == "digits":
        return load_digits_split("train"), load_digits_split("test"), 16
    if not CIFAR_ARCHIVE.is_file():
        raise SystemExit(f"the CIFAR-10 images are not at {CIFAR_ARCHIVE}")
    return *load_cifar_split(CIFAR_ARCHIVE, scratch), 32


def recipe(args: argparse.Namespace, view_size: int) -> SimCLRConfig:
    return SimCLRConfig.model_validate({
        "dataset": {"name": "synthetic", "image_size": view_size},  # the images come in memory
        "backbone": {"name": args.backbone, "cifar_stem": args.backbone != "small_cnn",
                     "width": args.width},
        "head": {"hidden_dim": args.head_dim, "out_dim": 128},
        "optimizer": {"name": "lars", "base_lr": args.lr, "lr_scaling": args.lr_scaling,
                      "weight_decay": args.weight_decay, "warmup_epochs": args.warmup_epochs},
        "augment": {"strength": 0.5, "blur": False, "compile": args.compile},
        "batch_size": args.batch, "epochs": 1, "temperature": args.temperature,
        "channels_last": args.channels_last, "log_every_steps": 10_000,
        "precision": args.precision, "seed": args.seed,
    })  # fmt: skip


def probe(
    encoder: torch.nn.Module, train: InMemoryImages, test: InMemoryImages, size: int
) -> ProbeResult:
    return train_linear_probe(
        extract_features(encoder, train.images, size), train.labels,
        extract_features(encoder, test.images, size), test.labels,
    )  # fmt: skip


class Timeline:
    """Backbone snapshots with the wall-clock seconds of training behind each."""

    def __init__(self) -> None:
        self.points: list[tuple[float, int, dict]] = []

    def add(self, seconds: float, step: int, backbone: torch.nn.Module) -> None:
        self.points.append((seconds, step, copy.deepcopy(backbone.state_dict())))


# -- ours -----------------------------------------------------------------------------------------


class TimedSession(LocalSession):
    """A ``LocalSession`` that keeps the backbone and training time of the checkpoints at multiples
    of ``every`` steps and at the last (the loop also saves at every epoch's end)."""

    def __init__(self, output_dir: Path, timeline: Timeline, model_of_state, every: int, last: int):
        super().__init__(output_dir, keep=1)
        self.timeline, self.model_of_state = timeline, model_of_state
        self.every, self.last = every, last
        self.start = time.perf_counter()

    def report(self, metrics, state=None) -> None:
        if state is not None and (state["step"] % self.every == 0 or state["step"] == self.last):
            elapsed = time.perf_counter() - self.start
            self.timeline.add(elapsed, state["step"], self.model_of_state(state))


def build_on_cpu(config: SimCLRConfig):
    """The model in the loop's memory layout, its augmentation and optimiser."""
    model = build_model(config)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, build_augment(config), build_optimizer(model, config)


def ours_step_time(config: SimCLRConfig, train: InMemoryImages, steps: int = 8) -> float:
    model, augment, optimizer = build_on_cpu(config)
    images = train.images[: config.batch_size]

    precision = resolve_precision(config.precision, torch.device("cpu")).precision  # as run_simclr

    def step() -> None:
        loss = simclr_loss(model, augment, images, None, config.temperature, precision,
                           channels_last=bool(config.channels_last))  # fmt: skip
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def run_ours(
    config: SimCLRConfig,
    train: InMemoryImages,
    budget: float,
    points: int,
    scratch: Path,
    epochs: int | None = None,
):
    """Ours for ``epochs`` (default: as many steps as ``budget`` seconds hold, ``train_steps``)."""
    step_time = ours_step_time(config, train)
    per_epoch = steps_per_epoch(len(train), config.batch_size)
    steps = epochs * per_epoch if epochs else budget_steps(budget, step_time)
    every = -(-steps // points)  # ceil: the last of ``points`` checkpoints is the run's end
    config = config.model_copy(update={"train_steps": steps, "checkpoint_every_steps": every})
    timeline = Timeline()

    def backbone_of(state):
        net = build_model(config).backbone
        net.load_state_dict(state["backbone"])
        return net

    session = TimedSession(scratch / "ours", timeline, backbone_of, every, steps)
    result = run_simclr(config, session, dataset=train, progress=False)
    return timeline, result.steps, time.perf_counter() - session.start, step_time


def budget_steps(budget: float, step_time: float) -> int:
    """The steps ``budget`` seconds hold at ``step_time`` each: every contender's schedule spans
    exactly its own (``train_steps``), not whole epochs, which at a few epochs per budget would
    leave up to an epoch of one contender's budget unused."""
    return max(1, int(budget / step_time))


def ours_breakdown(
    config: SimCLRConfig, train: InMemoryImages, steps: int = 10
) -> dict[str, float]:
    """Seconds per step in augmentation, forward + loss + backward, and the optimiser."""
    model, augment, optimizer = build_on_cpu(config)
    precision = resolve_precision(config.precision, torch.device("cpu")).precision  # as run_simclr
    totals = {"data + augmentation": 0.0, "forward + backward": 0.0, "optimiser": 0.0}
    for i in range(steps + 1):
        images = train.images[torch.randint(len(train), (config.batch_size,))]
        t0 = time.perf_counter()
        view_a, view_b = augment(images)
        t1 = time.perf_counter()
        views = model_layout(torch.cat([view_a, view_b]), bool(config.channels_last))
        with autocast_for(precision, views.device):
            z_a, z_b = model(views).chunk(2)
        loss = nt_xent(z_a, z_b, config.temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        optimizer.step()
        t3 = time.perf_counter()
        if i:  # the first step warms the allocator
            for key, seconds in zip(totals, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                totals[key] += seconds / steps
    return totals


# -- lightly ----------------------------------------------------------------------------------------


class PilPairs(Dataset):
    """In-memory images as PIL, each returned as lightly's two views."""

    def __init__(self, images: torch.Tensor, transform) -> None:
        from PIL import Image

        rgb = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
        self.images = [Image.fromarray(image.permute(1, 2, 0).numpy()) for image in rgb]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.transform(self.images[index])


def lightly_parts(config: SimCLRConfig, train: InMemoryImages, workers: int):
    from lightly.loss import NTXentLoss
    from lightly.transforms import SimCLRTransform
    from lightly.utils.lars import LARS as LightlyLARS

    torch.manual_seed(config.seed)  # the same initial weights (and memory layout) as ours
    model = build_model(config)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # views in [0, 1] like ours (no ImageNet normalisation), so that the same probe, on the same
    # centre views, scores both encoders on the inputs they were trained on
    transform = SimCLRTransform(input_size=config.dataset.view_size, cj_strength=0.5,
                                gaussian_blur=0.0, normalize=None)  # fmt: skip
    loader = DataLoader(PilPairs(train.images, transform), batch_size=config.batch_size,
                        shuffle=True, drop_last=True, num_workers=workers,
                        persistent_workers=workers > 0)  # fmt: skip
    optimizer = LightlyLARS(lars_param_groups(model, config.optimizer.weight_decay), lr=0.0,
                            momentum=config.optimizer.momentum)  # fmt: skip
    return model, loader, NTXentLoss(temperature=config.temperature), optimizer


def run_lightly(
    config: SimCLRConfig, train: InMemoryImages, budget: float, points: int, workers: int
):
    model, loader, loss_fn, optimizer = lightly_parts(config, train, workers)
    per_epoch = len(loader)
    batches = (views for _ in range(1_000) for views in loader)  # epochs end within the probe
    probe_steps, start = 8, None
    for i in range(probe_steps + 1):  # step time, loader included, before the clock starts
        if i == 1:
            start = time.perf_counter()
        views = next(batches)
        z_a, z_b = model(model_layout(torch.cat(views), bool(config.channels_last))).chunk(2)
        optimizer.zero_grad(set_to_none=True)
        loss_fn(z_a, z_b).backward()
        optimizer.step()
    step_time = (time.perf_counter() - start) / probe_steps
    model, loader, loss_fn, optimizer = lightly_parts(config, train, workers)  # fresh start
    total = budget_steps(budget, step_time)
    schedule = LearningRateSchedule(config.model_copy(update={"train_steps": total}), per_epoch)
    every = -(-total // points)
    timeline = Timeline()
    breakdown = {"data + augmentation": 0.0, "forward + backward": 0.0, "optimiser": 0.0}
    step, start = 0, time.perf_counter()
    while step < total:
        t0 = time.perf_counter()
        for views in loader:
            t1 = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = schedule(step)
            z_a, z_b = model(model_layout(torch.cat(views), bool(config.channels_last))).chunk(2)
            loss = loss_fn(z_a, z_b)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            t2 = time.perf_counter()
            optimizer.step()
            t3 = time.perf_counter()
            for key, seconds in zip(breakdown, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                breakdown[key] += seconds
            step += 1
            if step % every == 0 or step == total:
                timeline.add(time.perf_counter() - start, step, model.backbone)
            if step == total:
                break
            t0 = time.perf_counter()
    wall = time.perf_counter() - start
    return timeline, step, wall, step_time, {k: v / step for k, v in breakdown.items()}


# -- report -----------------------------------------------------------------------------------------


def score(
    timeline: Timeline, config: SimCLRConfig, train, test
) -> list[tuple[float, int, ProbeResult]]:
    size = config.dataset.view_size
    scored = []
    for seconds, step, state in timeline.points:
        encoder = build_model(config).backbone
        encoder.load_state_dict(state)
        scored.append((seconds, step, probe(encoder, train, test, size)))
    return scored


def time_to_reach(ours: list, lightly: list) -> str:
    """When ours' first scored checkpoint reaches lightly's final top-1, against lightly's time
    to its final checkpoint (resolution: the spacing of the scored checkpoints)."""
    goal, lightly_seconds = lightly[-1][2].top1, lightly[-1][0]
    reached = next(((s, step) for s, step, result in ours if result.top1 >= goal), None)
    if reached is None:
        return f"ours never reached lightly's final {goal:.2f} % within its budget"
    seconds, step = reached
    return (f"ours reached lightly's final {goal:.2f} % at {seconds:.0f} s (step {step}): "
            f"{seconds / lightly_seconds:.2f}x lightly's {lightly_seconds:.0f} s")  # fmt: skip


def top1_at(points: list, seconds: float) -> float:
    """A run's top-1 at ``seconds`` of training, linear between its scored checkpoints
    ``[(seconds, step, result)]``, in any order; ``seconds`` must lie within them."""
    points = sorted(points, key=lambda point: point[0])
    times = [s for s, _, _ in points]
    if not times[0] <= seconds <= times[-1]:
        raise ValueError(f"{seconds:.0f} s is outside the scored {times[0]:.0f}-{times[-1]:.0f} s")
    for (s0, _, r0), (s1, _, r1) in itertools.pairwise(points):
        if s0 <= seconds <= s1:
            return (
                r0.top1 if s1 == s0 else r0.top1 + (r1.top1 - r0.top1) * (seconds - s0) / (s1 - s0)
            )
    return points[-1][2].top1


def at_equal_time(ours: list, lightly: list) -> str:
    """Both runs' top-1 at the end of the shorter one: each run's length is planned from a few
    steps timed before its clock starts, so on a machine whose speed drifts the two budgets
    differ, and the final checkpoints compare unequal training times."""
    ends = [max(s for s, _, _ in run) for run in (ours, lightly)]
    starts = [min(s for s, _, _ in run) for run in (ours, lightly)]
    seconds = min(ends)
    if seconds < max(starts):
        return "at equal time: the runs' scored checkpoints do not overlap"
    a, b = top1_at(ours, seconds), top1_at(lightly, seconds)
    return (f"at equal time ({seconds:.0f} s, the shorter run's end; linear between scored "
            f"checkpoints): ours {a:.2f}, lightly {b:.2f}: {a - b:+.2f} points")  # fmt: skip


def plot(path: Path, title: str, curves: dict, floors: dict) -> None:
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for name, points in curves.items():
        axes.plot([s for s, _, _ in points], [r.top1 for _, _, r in points], marker="o", label=name)
    for (name, value), style in zip(floors.items(), ("--", ":"), strict=False):
        axes.axhline(value, linestyle=style, color="grey", label=f"{name} ({value:.1f})")
    axes.set_xlabel("training wall-clock (s), data loading and augmentation included")
    axes.set_ylabel("linear-probe top-1 (%)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def curves_from_logs(paths: list[Path]) -> tuple[dict, dict]:
    """The result tables this benchmark printed, read back: ``{contender: [(s, step, result)]}``
    and the floors; a contender in a later file replaces the same one in an earlier file."""
    curves: dict[str, list] = {}
    floors: dict[str, float] = {}
    for path in paths:
        found: dict[str, list] = {}
        for line in path.read_text().splitlines():
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if len(cells) != 5 or not cells[3].replace(".", "").isdigit():
                continue
            name, seconds, step, top1, top5 = cells
            if name in ("random-init encoder", "raw pixels"):
                floors[name] = float(top1)
                continue
            result = ProbeResult(float(top1), float(top5), 90, 0, 0)
            found.setdefault(name, []).append((float(seconds), int(step), result))
        curves.update(found)
    return curves, floors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--data", choices=["cifar10", "digits"], default="cifar10")
    parser.add_argument("--backbone", choices=["small_cnn", "resnet18"], default="small_cnn")
    parser.add_argument("--width", type=int, default=64, help="small CNN base width")
    parser.add_argument(
        "--budget", type=float, default=900.0, help="seconds of training per contender"
    )
    parser.add_argument("--points", type=int, default=6, help="checkpoints scored per run")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=None, help="base lr; default the product's")
    parser.add_argument("--lr-scaling", choices=["linear", "sqrt"], default="sqrt")
    parser.add_argument("--weight-decay", type=float, default=1e-6)
    parser.add_argument("--warmup-epochs", type=float, default=5)
    parser.add_argument("--temperature", type=float, default=0.5)
    parser.add_argument("--head-dim", type=int, default=512)
    parser.add_argument("--compile", action="store_true", help="fuse our colour kernels")
    parser.add_argument("--channels-last", action="store_true",
                        help="channels-last weights and views, for both pipelines")  # fmt: skip
    parser.add_argument("--lightly-workers", type=int, default=1)
    parser.add_argument("--only", choices=["ours", "lightly"], help="run one contender")
    parser.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="ours' precision (the product's default: auto); lightly runs fp32",
    )
    parser.add_argument("--seed", type=int, default=0, help="initial weights and views")
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="ours for this many epochs instead of the budget (equal-step checks)",
    )
    parser.add_argument("--plot", type=Path, default=None)
    parser.add_argument("--plot-from", type=Path, nargs="+",
                        help="only read back these saved outputs (later ones win): the "
                             "comparison at equal time, and the plot with --plot")  # fmt: skip
    args = parser.parse_args()
    if args.epochs and args.only != "ours":
        parser.error("--epochs sets ours' length alone: give --only ours (lightly runs --budget)")
    if args.plot_from:
        curves, floors = curves_from_logs(args.plot_from)
        title = (
            f"{args.data}, {args.backbone}, batch {args.batch}, {args.budget:.0f} s on 2 threads"
        )
        if {"ours", "lightly"} <= curves.keys():
            print(at_equal_time(curves["ours"], curves["lightly"]))
        else:
            print(
                f"no equal-time comparison: the outputs hold {sorted(curves)}, not ours and lightly"
            )
        if args.plot:
            plot(args.plot, title, curves, floors)
        return
    print(f"# {machine_summary()}", flush=True)
    print(f"# seed {args.seed}", flush=True)
    if args.only != "lightly":  # lightly runs fp32: no probe of the bf16 kernels for it
        precision, why, _ = resolve_precision(args.precision, torch.device("cpu"))
        print(f"# ours' precision: {precision} ({why})", flush=True)
    with tempfile.TemporaryDirectory() as temporary:
        scratch = Path(temporary)
        train, test, size = load_split(args.data, scratch)
        config = recipe(args, size)
        length = f"{args.epochs} epochs" if args.epochs else f"budget {args.budget:.0f} s"
        print(f"# {args.data}: {len(train)} pretraining / probe-train images, {len(test)} test; "
              f"{args.backbone}, batch {args.batch}, {length}", flush=True)  # fmt: skip

        torch.manual_seed(config.seed)
        random_init = probe(build_model(config).backbone, train, test, size)
        raw = train_linear_probe(train.images.flatten(1).float(), train.labels,
                                 test.images.flatten(1).float(), test.labels)  # fmt: skip
        curves, summary = {}, []
        if args.only != "lightly":
            timeline, steps, wall, step_time = run_ours(
                config, train, args.budget, args.points, scratch, args.epochs
            )
            curves["ours"] = score(timeline, config, train, test)
            summary.append(("ours", steps, wall, step_time, ours_breakdown(config, train)))
            print(f"ours: {steps} steps in {wall:.0f} s", flush=True)
        if args.only != "ours":
            timeline, steps, wall, step_time, breakdown = run_lightly(
                config, train, args.budget, args.points, args.lightly_workers
            )
            curves["lightly"] = score(timeline, config, train, test)
            summary.append(("lightly", steps, wall, step_time, breakdown))
            print(f"lightly: {steps} steps in {wall:.0f} s", flush=True)

    print("\n| contender | training s | step | top-1 % | top-5 % |\n|---|---|---|---|---|")
    for name, points in curves.items():
        for seconds, step, result in points:
            print(f"| {name} | {seconds:.0f} | {step} | {result.top1:.2f} | {result.top5:.2f} |")
    print(f"| random-init encoder | 0 | 0 | {random_init.top1:.2f} | {random_init.top5:.2f} |")
    print(f"| raw pixels | - | - | {raw.top1:.2f} | {raw.top5:.2f} |")
    print(
        "\n| pipeline | steps | wall s | pairs/s | s/step: data + augmentation | forward + backward | optimiser |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, steps, wall, _, breakdown in summary:
        parts = " | ".join(
            f"{breakdown[k]:.3f}"
            for k in ("data + augmentation", "forward + backward", "optimiser")
        )
        print(f"| {name} | {steps} | {wall:.0f} | {steps * args.batch / wall:.0f} | {parts} |")
    final = {name: points[-1][2].top1 for name, points in curves.items()}
    print("\nfinal top-1: " + ", ".join(f"{k} {v:.2f}" for k, v in final.items())
          + f"; random init {random_init.top1:.2f}; raw pixels {raw.top1:.2f}")  # fmt: skip
    if len(final) == 2:
        print(f"ours - lightly: {final['ours'] - final['lightly']:+.2f} points; "
              f"ours - random init: {final['ours'] - random_init.top1:+.2f} points")  # fmt: skip
        print(time_to_reach(curves["ours"], curves["lightly"]))
        print(at_equal_time(curves["ours"], curves["lightly"]))
    if args.plot:
        title = f"{args.data}, {args.backbone}, batch {args.batch}, {args.budget:.0f} s on {torch.get_num_threads()} threads"
        plot(
            args.plot,
            title,
            curves,
            {"random-init encoder": random_init.top1, "raw pixels": raw.top1},
        )
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
