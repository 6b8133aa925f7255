"""Generative-kind benchmarks on digits: data-parallel scaling on Ray Train, and the likelihood
each kind reaches within a fixed wall-clock budget beside simple baselines.

Scaling: images/s of every kind with 2 Ray workers x 1 CPU against 1 worker x 1 CPU at the same
per-worker batch (the global batch doubles), at per-worker batches 64 and 256; medians of the logged
windows after the first.
Likelihood: each kind trained for ``--budget`` seconds in this process (its step count fitted to
its measured step time), scored at each quarter of the budget on the 450 held-out digits in bits/dim
of the data's 17 levels: DDPM's full bound (T = 1000), the VAE's IWAE bound (k = 100), the flow's dequantisation
bound, DiffuseVAE's two terms; the GAN by the Frechet distance of its samples in the features of
the in-project classifier. Baselines: uniform over 17 levels, a per-pixel histogram (add-one
smoothing), a full-covariance Gaussian on dequantised pixels; for the GAN, samples of that Gaussian.
Precision (``--only precision``, not in the default run): each kind that may compute in bf16 (all
but the flow), fp32 against bf16 autocast for ``--precision-steps`` steps and ``--seeds`` seeds:
images/s and the held-out metric at the end (100 held-out digits).
Run: ``python -m bench.generative [--budget 120] [--steps 30] [--only precision]``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import machine_summary
from bench.distributed import ray_run, steady_rate
from trainer.contracts.config import DatasetConfig
from trainer.contracts.kinds import KINDS, kinds
from trainer.generative.data import DIGITS_LEVELS, load_images
from trainer.generative.frechet import ClassifierFeatures
from trainer.generative.loop import run_generative
from trainer.session import LocalSession

UNET = {"base_channels": 32, "channel_mults": [1, 2], "blocks_per_resolution": 1,
        "attention_resolutions": [4], "dropout": 0.0}  # fmt: skip
SETTINGS: dict[str, dict[str, Any]] = {
    "ddpm": {"unet": UNET, "warmup_steps": 100, "ema_decay": 0.999},
    "vae": {"latent_dim": 16, "width": 32},
    "gan": {"latent_dim": 32, "width": 32},
    "flow": {"layers": ["sigmoidal", "residual"] * 3},
    "diffusevae": {
        "vae": {"latent_dim": 16, "width": 32},
        "diffusion": {"unet": UNET, "ema_decay": 0.999},
    },
}
LIKELIHOOD = {"ddpm": "bound_bpd", "vae": "iwae_bpd", "flow": "log_likelihood_bpd"}


def config(kind: str, batch: int, steps: int, **extra: Any) -> dict[str, Any]:
    return {"data": {"name": "digits"}, "batch_size": batch, "steps": steps, "log_every_steps": 5,
            "checkpoint_every_steps": 10**6, "eval_examples": 16, "frechet_classifier_steps": 0,
            **SETTINGS[kind], **extra}  # fmt: skip


def scaling(steps: int, per_worker_batch: int, storage: Path) -> None:
    print(f"per-worker batch {per_worker_batch}")
    print("| kind | 1 worker images/s | 2 workers images/s | speed-up |")
    print("|---|---|---|---|")
    for kind in kinds("generate"):
        extra = {"vae_steps": steps // 2} if kind == "diffusevae" else {}
        rates = []
        for workers in (1, 2):
            records, _ = ray_run(f"{kind}-{workers}-b{per_worker_batch}", config(kind, per_worker_batch * workers, steps, **extra),
                                 workers, storage, kind)  # fmt: skip
            rates.append(steady_rate(records))
        print(
            f"| {kind} | {rates[0]:.0f} | {rates[1]:.0f} | {rates[1] / rates[0]:.2f}x |", flush=True
        )


def baselines() -> dict[str, float]:
    """Bits/dim of the held-out digits under the simple models, and the Frechet distance of the
    Gaussian's samples."""
    data = load_images(DatasetConfig(name="digits"), None)
    levels, dims = DIGITS_LEVELS, data.dims
    to_index = lambda x: torch.round((x + 1) * (levels - 1) / 2).long().flatten(1)  # noqa: E731
    train, test = to_index(data.train), to_index(data.test)
    counts = torch.ones(dims, levels)
    counts.scatter_add_(1, train.T, torch.ones_like(train.T, dtype=torch.float))
    log_probs = (counts / counts.sum(1, keepdim=True)).log()
    histogram = -log_probs.gather(1, test.T).sum(0).mean().item() / (dims * math.log(2))
    width = 2 / (levels - 1)
    generator = torch.Generator().manual_seed(0)

    def dequantised(images: torch.Tensor) -> torch.Tensor:
        """Pixels plus noise uniform over their bin (the flow's dequantisation)."""
        pixels = images.flatten(1).double()
        noise = torch.rand(pixels.shape, generator=generator, dtype=torch.float64) - 0.5
        return pixels + noise * width

    train_noisy = dequantised(data.train)
    gaussian = torch.distributions.MultivariateNormal(train_noisy.mean(0), torch.cov(train_noisy.T))
    test_noisy = dequantised(data.test)
    gaussian_bpd = -(gaussian.log_prob(test_noisy).mean().item() + dims * math.log(width)) / (
        dims * math.log(2)
    )
    scorer = ClassifierFeatures(data.train, data.train_labels, 300, torch.device("cpu"))
    scorer.set_reference(data.test)
    torch.manual_seed(0)
    samples = gaussian.sample((len(data.test),)).float().clamp(-1, 1).view_as(data.test)
    return {"uniform": math.log2(levels), "histogram": histogram, "gaussian": gaussian_bpd,
            "gaussian_frechet": scorer.distance(samples), "test_frechet": scorer.distance(data.train[:450])}  # fmt: skip


def likelihoods(budget: float, storage: Path) -> None:
    print(
        "| kind | steps (the budget) | seconds with evaluations | held-out metric at 1/4, 2/4, 3/4 and all of the budget |"
    )
    print("|---|---|---|---|")
    for kind in kinds("generate"):
        probe = config(kind, 128, 30, **({"vae_steps": 15} if kind == "diffusevae" else {}))
        cfg = KINDS[kind].config.model_validate(probe | {"eval_examples": 1, "sample_count": 1})
        rows = run_generative(
            kind, cfg, LocalSession(storage / f"probe-{kind}"), progress=False
        ).history
        # the rate of the logged windows after the first (the evaluation at the end is not in them)
        steps_per_s = statistics.median(row["images_per_s"] for row in rows[1:]) / 128
        steps = max(30, int(budget * steps_per_s))
        # held-out evaluations at each quarter of the budget: 1,347 training digits are few, and
        # the curve shows when a kind starts to overfit; the sample-quality score only for the GAN
        extra = {"eval_examples": 450, "eval_every_steps": max(1, steps // 4),
                 "frechet_classifier_steps": 300 if kind == "gan" else 0}  # fmt: skip
        if kind == "diffusevae":
            extra["vae_steps"] = steps // 3
        cfg = KINDS[kind].config.model_validate(config(kind, 128, steps, **extra))
        start = time.perf_counter()
        run = run_generative(kind, cfg, LocalSession(storage / kind), progress=False)
        seconds = time.perf_counter() - start
        history = [
            row
            for row in run.history
            if any(n.endswith("_bpd") or n.startswith("frechet") for n in row)
        ]
        names = sorted(n for n in history[-1] if n.endswith("_bpd") or n.startswith("frechet"))
        curve = "; ".join(
            f"{name} " + " / ".join(f"{row[name]:.3f}" for row in history) for name in names
        )
        print(f"| {kind} | {steps} | {seconds:.0f} | {curve} |", flush=True)


def likelihood_part(budget: float, storage: Path) -> None:
    floor = baselines()
    print(
        "baselines on the held-out digits (bits/dim, 17 levels): "
        + ", ".join(f"{k} {v:.3f}" for k, v in floor.items())
    )
    torch.set_num_threads(2)
    likelihoods(budget, storage)


def precision_kinds() -> list[str]:
    """The kinds that may compute in bf16: all but the flow (FlowConfig.precision: fp32 only)."""
    return [kind for kind in kinds("generate") if kind != "flow"]


def precision_part(steps: int, seeds: int, storage: Path, only_kinds: list[str]) -> None:
    """Each kind that may compute in bf16 (of ``only_kinds``), fp32 against bf16 autocast at
    equal steps and seeds: images/s and the held-out metric at the end (issue 22)."""
    torch.set_num_threads(2)
    print(f"| kind | precision | seed | steps | images/s | held-out metric after {steps} steps |")
    print("|---|---|---|---|---|---|")
    for kind in only_kinds:
        for seed in range(seeds):
            for precision in ("fp32", "bf16"):
                extra = {"seed": seed, "precision": precision, "eval_examples": 100,
                         "eval_every_steps": steps, "log_every_steps": 10,
                         "frechet_classifier_steps": 300 if kind == "gan" else 0}  # fmt: skip
                if kind == "diffusevae":
                    extra["vae_steps"] = steps // 3
                cfg = KINDS[kind].config.model_validate(config(kind, 128, steps, **extra))
                run = run_generative(kind, cfg, LocalSession(storage / f"{kind}-{precision}-{seed}"),
                                     progress=False)  # fmt: skip
                rate = statistics.median(row["images_per_s"] for row in run.history[1:-1])
                last = run.history[-1]
                names = sorted(n for n in last if n.endswith("_bpd") or n.startswith("frechet"))
                metric = ", ".join(f"{name} {last[name]:.4f}" for name in names)
                print(f"| {kind} | {precision} | {seed} | {steps} | {rate:.0f} | {metric} |",
                      flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budget", type=float, default=120.0, help="training seconds per kind")
    parser.add_argument("--steps", type=int, default=30, help="steps of each scaling run")
    parser.add_argument("--per-worker-batch", type=int, nargs="+", default=[64, 256])
    parser.add_argument(
        "--only", choices=["likelihood", "scaling", "precision"], help="run one part"
    )
    parser.add_argument("--precision-steps", type=int, default=200, help="steps of each run")
    parser.add_argument("--seeds", type=int, default=2, help="seeds of the precision part")
    parser.add_argument("--kinds", nargs="+", choices=precision_kinds(), default=precision_kinds(),
                        help="the kinds of the precision part")  # fmt: skip
    args = parser.parse_args()
    storage = Path(tempfile.mkdtemp(prefix="generative-bench-"))
    print(f"# {machine_summary()}")
    if args.only == "precision":
        precision_part(args.precision_steps, args.seeds, storage, args.kinds)
        return
    if args.only != "scaling":
        likelihood_part(args.budget, storage)
    if args.only != "likelihood":
        import ray

        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        for batch in args.per_worker_batch:
            scaling(args.steps, batch, storage)


if __name__ == "__main__":
    main()
