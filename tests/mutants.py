"""Planted bugs in the core contracts, and whether the tests catch each (not part of ``make test``).

    python -m tests.mutants [--only NAME ...] [--list]

Each mutant is one plausible bug, written as a textual edit of one module: a detached path in
NT-Xent, a missing sum in its distributed backward, a scale where a log-scale belongs in a DDPM
bound, a term dropped from a sum, a LARS rule off by one comparison... For each, the tree is copied
to a scratch directory (the tracked files, as ``git ls-files`` lists them), the edit is applied
there, and the tests named for that module run against the copy (first, once, against the
unmutated copy: they must pass there, or nothing would be learnt). A mutant the tests fail on is
caught; one they pass on survives, and ``docs/testing.md`` gives the reason for each survivor
(equivalent to the original, or below what the tests can resolve). An edit that no longer applies
(the code moved) is reported as stale, never as caught. The table goes to standard output.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    original: str
    mutated: str
    tests: tuple[str, ...]


LOSSES = ("tests/trainer/test_losses.py",)
LARS = ("tests/trainer/test_optim.py",)
GLOBAL_BN = ("tests/trainer/test_global_bn.py",)
CACHE = ("tests/trainer/test_gradient_cache.py",)
GENERATIVE = ("tests/trainer/test_generative_math.py",)
KNN = ("tests/trainer/test_knn.py",)
FINETUNE = ("tests/trainer/test_finetune.py",)
SCHEDULED = ("tests/services/test_scheduled_evaluations.py",)
IDEMPOTENT = ("tests/services/test_api.py", "tests/services/test_store.py")
RUN_LENGTH = ("tests/trainer/test_pretrain.py", "tests/trainer/test_input_pipeline.py")
SQLITE_START = ("tests/services/test_migrations.py",)
PRECISION = ("tests/trainer/test_precision.py",)
GPU_WHEELS = (
    "tests/bench/test_gpu_check.py::"
    "test_the_wheels_script_takes_the_installed_versions_and_refuses_a_missing_one",
)
BF16_CHECK = ("tests/bench/test_gpu_check.py::test_the_bf16_check_fails_a_broken_bf16_forward",)
WITHOUT_LIGHTLY = (
    "tests/bench/test_gpu_check.py::test_without_lightly_a_gpu_run_fails_and_a_cpu_run_notes_it",
)
GENERATIVE_RANKS = (
    "tests/trainer/test_generative_jobs.py::"
    "test_each_kind_trains_data_parallel_on_two_ranks_that_keep_equal_weights",
)

MUTANTS = (
    Mutant("nt_xent: negatives detached", "trainer/losses.py",
           "columns = torch.cat([all_a, all_b])", "columns = torch.cat([all_a, all_b]).detach()",
           LOSSES),
    Mutant("nt_xent: anchors detached", "trainer/losses.py",
           "anchors = torch.cat([z_a, z_b])", "anchors = torch.cat([z_a, z_b]).detach()", LOSSES),
    Mutant("nt_xent: self-similarity not masked", "trainer/losses.py",
           'logits[rows, self_column] = float("-inf")', "pass", LOSSES),
    Mutant("nt_xent: positive is the anchor itself", "trainer/losses.py",
           "positive_column = torch.cat([local + big_n, local])",
           "positive_column = torch.cat([local, local + big_n])", LOSSES),
    Mutant("nt_xent: temperature multiplies", "trainer/losses.py",
           "logits = anchors @ columns.T / temperature",
           "logits = anchors @ columns.T * temperature", LOSSES),
    Mutant("nt_xent: projections not normalised", "trainer/losses.py",
           "z_a = F.normalize(z_a.float(), dim=1)", "z_a = z_a.float()", LOSSES),
    Mutant("SimCLR resume: the random streams not restored", "trainer/simclr_loop.py",
           "restore_rank_rng(state[\"rng\"], rank, world, config.seed, step)", "pass",
           ("tests/trainer/test_pretrain.py",)),
    Mutant("nt_xent: similarities in the caller's autocast dtype", "trainer/losses.py",
           "with torch.autocast(kind, enabled=False) if is_autocast_available(kind) else nullcontext():",
           "if True:", LOSSES),
    Mutant("nt_xent: all-gather backward does not sum over ranks", "trainer/losses.py",
           "op=dist.ReduceOp.SUM)", "op=dist.ReduceOp.AVG)", LOSSES),
    Mutant("LARS: trust ratio inverted", "trainer/optim.py",
           'group["eta"] * w_norms / g_norms', 'group["eta"] * g_norms / w_norms', LARS),
    Mutant("LARS: >= instead of > for a zero norm", "trainer/optim.py",
           "(w_norms > 0) & (g_norms > 0)", "(w_norms >= 0) & (g_norms >= 0)", LARS),
    Mutant("LARS: no weight decay", "trainer/optim.py",
           'grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])',
           "pass", LARS),
    Mutant("LARS: biases and norms not excluded", "trainer/optim.py",
           "(excluded if p.ndim <= 1 else adapted).append(p)", "adapted.append(p)", LARS),
    Mutant("LARS: lr outside the momentum buffer", "trainer/optim.py",
           'steps = torch._foreach_mul(grads, list((trust * group["lr"]).unbind()))',
           "steps = torch._foreach_mul(grads, list(trust.unbind()))", LARS),
    Mutant("global BN: biased running variance", "trainer/global_bn.py",
           "unbiased = var * (count / (count - 1).clamp(min=1))", "unbiased = var", GLOBAL_BN),
    Mutant("global BN: backward misses the mean of dy", "trainer/global_bn.py",
           "(dy - mean_dy.view(shape) - xhat", "(dy - xhat", GLOBAL_BN),
    Mutant("global BN: statistics not all-reduced", "trainer/global_bn.py",
           "        dist.all_reduce(sums)\n", "", GLOBAL_BN),
    Mutant("global BN: eps outside the square root", "trainer/global_bn.py",
           "invstd = torch.rsqrt(var + eps)", "invstd = 1 / (var.sqrt() + eps)", GLOBAL_BN),
    Mutant("global BN: no shift before the sums of squares", "trainer/global_bn.py",
           "shift = self.running_mean if self.track_running_stats else x.new_zeros(x.shape[1])",
           "shift = x.new_zeros(x.shape[1])", GLOBAL_BN),
    Mutant("gradient cache: running statistics not restored", "trainer/gradient_cache.py",
           "        buffer.copy_(saved)", "        pass", CACHE),
    Mutant("gradient cache: random state not replayed", "trainer/gradient_cache.py",
           "        _set_rng_state(rng, device)\n", "", CACHE),
    Mutant("gradient cache: gradients synchronised on every chunk", "trainer/gradient_cache.py",
           "with no_sync() if index < len(chunks) - 1 else nullcontext():",
           "with nullcontext():", CACHE),
    Mutant("DDPM: log-variance passed as the log-scale of L_0", "trainer/generative/diffusion.py",
           "discretized_gaussian_log_likelihood(x0, mean, 0.5 * logvar, levels)",
           "discretized_gaussian_log_likelihood(x0, mean, logvar, levels)", GENERATIVE),
    Mutant("DDPM: L_T left out of the total", "trainer/generative/diffusion.py",
           '"total": prior + kl + decoder', '"total": kl + decoder', GENERATIVE),
    Mutant("DDPM: KL arguments swapped", "trainer/generative/diffusion.py",
           "true_mean, torch.log(true_var.clamp(min=1e-30)).expand_as(x0), mean, logvar",
           "mean, logvar, true_mean, torch.log(true_var.clamp(min=1e-30)).expand_as(x0)",
           GENERATIVE),
    Mutant("DDPM: reverse variance at t = 1 is beta_1", "trainer/generative/diffusion.py",
           "return torch.cat([posterior[1:2], chosen[1:]])",
           "return torch.cat([self.betas.double()[:1], chosen[1:]])", GENERATIVE),
    Mutant("IWAE: mean of weights without log k", "trainer/generative/vae.py",
           "torch.logsumexp(stacked, dim=0) - math.log(k)", "torch.logsumexp(stacked, dim=0)",
           GENERATIVE),
    Mutant("ELBO: KL added", "trainer/generative/vae.py",
           '"elbo": reconstruction - kl', '"elbo": reconstruction + kl', GENERATIVE),
    Mutant("kNN monitor: the encoder left in eval mode", "trainer/knn.py",
           "            encoder.train(training)\n", "            pass\n", KNN),
    Mutant("kNN monitor: drawn from the run's random stream", "trainer/knn.py",
           "generator = torch.Generator().manual_seed(config.seed)",
           "generator = torch.default_generator", KNN),
    Mutant("fine-tuning: momentum not restored on resume", "trainer/finetune.py",
           '        optimizer.load_state_dict(state["optimizer"])\n', "", FINETUNE),
    Mutant("fine-tuning: augmentation draws not reseeded per epoch", "trainer/finetune.py",
           "torch.manual_seed(config.seed + 1 + rank + world * epoch)", "pass", FINETUNE),
    Mutant("fine-tuning: weight decay", "trainer/finetune.py",
           "weight_decay=0.0)", "weight_decay=1e-4)", FINETUNE),
    Mutant("fine-tuning: a class-balanced subset that is not", "trainer/finetune.py",
           "count = max(1, round(fraction * len(members)))",
           "count = max(1, round(fraction * len(labels) / 10))", FINETUNE),
    Mutant("scheduled evaluations: no idempotency key", "services/scheduled.py",
           "max_attempts=max_attempts, idempotency_key=key,", "max_attempts=max_attempts,",
           SCHEDULED),
    Mutant("scheduled evaluations: at-end items for any ended job", "services/scheduled.py",
           'due = checkpoints[-1:] if job.status == "succeeded" else []',
           "due = checkpoints[-1:] if job.status in TERMINAL else []", SCHEDULED),
    Mutant("idempotent submission: a resent job checked again before its key is looked up",
           "services/routes/jobs.py",
           'job, created = earlier_submission(service, body, "/v1/jobs", idempotency_key), False',
           "job, created = None, False", IDEMPOTENT),
    Mutant("idempotent submission: a resent evaluation checked again first",
           "services/routes/evaluations.py",
           'job, created = earlier_submission(service, body, "/v1/evaluations", idempotency_key), False',
           "job, created = None, False", IDEMPOTENT),
    Mutant("idempotent submission: a key's job returned for another request",
           "services/store/store.py", "if found and found[0].request_hash != request_hash:",
           "if False:", IDEMPOTENT),
    Mutant("idempotent submission: a key of the service's own looked up like a client's",
           "services/submission.py", "if idempotency_key.startswith(SCHEDULED_KEY_PREFIX):",
           "if False:", SCHEDULED),
    Mutant("train_steps: the schedule still spans epochs", "trainer/simclr_recipe.py",
           "self.total_steps = config.schedule_steps(steps_per_epoch)",
           "self.total_steps = config.epochs * steps_per_epoch", RUN_LENGTH),
    Mutant("train_steps: the Ray Data stream holds only epochs", "trainer/driver.py",
           "epochs = config.data_epochs(per_epoch)", "epochs = config.epochs", RUN_LENGTH),
    Mutant("SQLite WAL switch: a busy database is not waited for", "services/store/db.py",
           "if not busy or remaining <= 0:", "if True:", SQLITE_START),
    Mutant("SQLite WAL switch: every error is retried", "services/store/db.py",
           "if not busy or remaining <= 0:", "if remaining <= 0:", SQLITE_START),
    Mutant("SQLite WAL switch: a journal mode SQLite kept passes as WAL", "services/store/db.py",
           'if mode != "wal":\n        raise', 'if False:\n        raise', SQLITE_START),
    Mutant("generative data parallelism: gradients not averaged over the ranks",
           "trainer/generative/tasks.py", "average_gradients(module.parameters())", "pass",
           GENERATIVE_RANKS),
    Mutant("generative data parallelism: the GAN generator's batch norm per rank",
           "trainer/generative/tasks.py",
           "generator = convert_to_global_batch_norm(generator)", "generator = generator",
           GENERATIVE_RANKS),
    Mutant("precision auto: the CPU probe's ratio inverted", "trainer/precision.py",
           'return best["fp32"] / best["bf16"]', 'return best["bf16"] / best["fp32"]', PRECISION),
    Mutant("precision auto: bf16 by the flags alone", "trainer/precision.py",
           "if speedup >= BF16_MIN_SPEEDUP:", "if True:", PRECISION),
    Mutant("precision auto: the threshold itself is not enough", "trainer/precision.py",
           "if speedup >= BF16_MIN_SPEEDUP:", "if speedup > BF16_MIN_SPEEDUP:", PRECISION),
    Mutant("precision auto: the ranks do not agree", "trainer/precision.py",
           'if not on_every_rank(resolved.precision == "bf16") and resolved.precision == "bf16":',
           "if False:", PRECISION),
    Mutant("GPU wheels: a package missing here goes on with an empty version",
           "bench/gpu_wheels.sh", "        return 1\n", "        return 0\n", GPU_WHEELS),
    Mutant("GPU check: a GPU run without lightly only notes it", "bench/gpu_check.py",
           'if report.device.type != "cpu":', "if False:", WITHOUT_LIGHTLY),
    Mutant("GPU check: bf16 against fp32 on raw projections", "bench/gpu_check.py",
           "    return z - z.mean(0)", "    return z", BF16_CHECK),
)  # fmt: skip


def copy_tree(destination: Path) -> None:
    """The tracked files of the working tree (with their uncommitted edits) under ``destination``."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def pytest_in(tree: Path, tests: tuple[str, ...]) -> tuple[int, str, float]:
    """pytest's exit code, the tail of its output and its seconds, on ``tests`` of ``tree``."""
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
        cwd=tree, capture_output=True, env={**os.environ, "PYTHONPATH": str(tree)},
    )  # fmt: skip
    return result.returncode, result.stdout.decode()[-2000:], time.perf_counter() - start


def run(mutant: Mutant) -> tuple[str, float]:
    """``caught``, ``survived`` or ``stale``, and the seconds the tests took."""
    with tempfile.TemporaryDirectory(prefix="mutant-") as scratch:
        tree = Path(scratch)
        copy_tree(tree)
        module = tree / mutant.path
        text = module.read_text()
        if text.count(mutant.original) != 1:
            return "stale", 0.0
        module.write_text(text.replace(mutant.original, mutant.mutated))
        code, output, seconds = pytest_in(tree, mutant.tests)
    # pytest's exit 1: a test failed (caught); 0: all passed (survived); other codes: broken run
    if code not in (0, 1):
        raise RuntimeError(f"{mutant.name}: pytest exited {code}:\n{output}")
    return ("caught" if code == 1 else "survived"), seconds


def check_baseline(mutants: list[Mutant]) -> None:
    """Each test set passes on the unmutated copy first: a failure there (a broken or flaky
    test, a timeout) would otherwise count as every mutant caught."""
    with tempfile.TemporaryDirectory(prefix="baseline-") as scratch:
        copy_tree(Path(scratch))
        for tests in dict.fromkeys(m.tests for m in mutants):
            code, output, _ = pytest_in(Path(scratch), tests)
            if code != 0:
                raise SystemExit(f"{', '.join(tests)} fail without any mutant:\n{output}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", nargs="*", help="run the mutants whose name contains any of these"
    )
    parser.add_argument("--list", action="store_true", help="list the mutants and stop")
    args = parser.parse_args()
    chosen = [m for m in MUTANTS if not args.only or any(o in m.name for o in args.only)]
    if args.list:
        print("\n".join(f"{m.name}  ({m.path})" for m in chosen))
        return
    check_baseline(chosen)
    print("| mutant | module | tests | result | s |\n|---|---|---|---|---|", flush=True)
    for mutant in chosen:
        outcome, seconds = run(mutant)
        tests = ", ".join(Path(t).name for t in mutant.tests)
        print(f"| {mutant.name} | `{mutant.path}` | {tests} | {outcome} | {seconds:.0f} |",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
