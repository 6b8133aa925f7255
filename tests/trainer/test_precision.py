"""``precision: auto``: detected on the worker (CPU flags and a probe of its bf16 kernels, CUDA
support), forced by fp32 or bf16; under bf16 autocast the loss, the weights, the batch-norm
statistics and the checkpoints stay fp32, and a run resumes under the other precision: SimCLR and
every generative kind."""

from __future__ import annotations

import contextlib
import functools
import json
from types import SimpleNamespace

import pytest
import torch
from pydantic import ValidationError

from tests.distributed import run_on_ranks
from tests.trainer.test_finetune import finetune_spec
from tests.trainer.test_generative_jobs import DIGITS, config_of, parameters
from tests.trainer.test_pretrain import small_config
from trainer import precision as precision_module
from trainer.checkpoint import latest_checkpoint, load_checkpoint
from trainer.contracts.kinds import kinds
from trainer.finetune import Classifier, finetune_worker
from trainer.generative.data import load_generative_data
from trainer.generative.loop import run_generative
from trainer.generative.tasks import task_of
from trainer.precision import (
    Resolution,
    autocast_for,
    cpu_bf16_flags,
    resolve_precision,
    without_tf32,
)
from trainer.pretrain import pretrain
from trainer.session import LocalSession
from trainer.simclr_recipe import build_augment, build_model, simclr_loss

CPU = torch.device("cpu")


def test_the_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 amx_tile amx_bf16\n"
                       "model name\t: Intel Xeon\n")  # fmt: skip
    assert cpu_bf16_flags(cpuinfo) == ("amx_bf16", "avx512_bf16")
    cpuinfo.write_text("flags\t\t: fpu sse avx2 avx512f\n")  # an AVX-512 CPU without bf16
    assert cpu_bf16_flags(cpuinfo) == ()
    assert cpu_bf16_flags(tmp_path / "missing") == ()


def test_auto_takes_bf16_only_where_the_cpu_computes_it_faster(monkeypatch):
    def no_probe(threads):
        raise AssertionError("no probe here")

    monkeypatch.setattr(precision_module, "cpu_bf16_speedup", no_probe)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    on_gpu = resolve_precision("auto", torch.device("cuda"))
    assert on_gpu == Resolution("bf16", "auto: the GPU computes bf16")
    assert on_gpu.metrics() == {"bf16": 1.0}
    monkeypatch.setattr(precision_module, "cpu_bf16_flags", lambda: ())
    assert resolve_precision("auto", CPU) == Resolution(
        "fp32", "auto: the CPU has neither AMX nor AVX512-BF16")  # fmt: skip
    assert resolve_precision("fp32", CPU).precision == "fp32"
    forced, why, _ = resolve_precision("bf16", CPU)
    assert forced == "bf16" and "slower than fp32" in why
    monkeypatch.setattr(precision_module, "cpu_bf16_flags", lambda: ("amx_bf16",))
    assert resolve_precision("fp32", CPU) == Resolution("fp32", "asked for")
    assert resolve_precision("bf16", CPU) == Resolution("bf16", "asked for")
    # the flags let the probe decide: AMX, AMD's AVX512-BF16 (2x and more) ...
    monkeypatch.setattr(precision_module, "cpu_bf16_speedup", lambda threads: 2.1)
    assert resolve_precision("auto", CPU) == Resolution("bf16", (
        "auto: the CPU has amx_bf16, and its bf16 convolutions and matmul ran 2.10x as fast as "
        "fp32"), 2.1)  # fmt: skip
    # ... and an Intel Xeon's AVX512-BF16 without AMX (0.6x); parity is no gain
    for speedup, chosen in ((1.25, "bf16"), (1.24, "fp32"), (1.1, "fp32"), (0.56, "fp32")):
        monkeypatch.setattr(precision_module, "cpu_bf16_speedup", lambda threads, s=speedup: s)
        assert resolve_precision("auto", CPU).precision == chosen
    slower = resolve_precision("auto", CPU)
    assert slower.why == ("auto: the CPU has amx_bf16, and its bf16 convolutions and matmul ran "
                          "0.56x as fast as fp32 (bf16 needs 1.25x)")  # fmt: skip
    assert slower.metrics() == {"bf16": 0.0, "bf16_speedup": 0.56}  # reported, shown by simclr get


@pytest.mark.parametrize("slow", ["fp32", "bf16"])
def test_the_cpu_probe_measures_bf16_against_fp32(slow, monkeypatch):
    """The probe's ratio is fp32's best time over bf16's, the warm-up left out: on a clock where the
    slow precision's calls take 50, 4, 2, 3 s and the other's 50, 1.5, 1, 1.2 s it is exactly 1/2 or
    2, whatever this CPU's kernels do. Each precision is timed as itself, with gradients, even where
    the caller runs under inference mode and bf16 autocast; the run's random stream is untouched."""
    fast = "bf16" if slow == "fp32" else "fp32"
    costs = {slow: [50, 4, 2, 3], fast: [50, 1.5, 1, 1.2]}
    now, autocast_on = [0.0], {"fp32": set(), "bf16": set()}
    real_autocast = precision_module.autocast_for

    @contextlib.contextmanager
    def charged(precision, device):
        now[0] += costs[precision].pop(0)
        with real_autocast(precision, device):
            autocast_on[precision].add(torch.is_autocast_enabled("cpu"))
            yield

    monkeypatch.setattr(precision_module, "autocast_for", charged)
    monkeypatch.setattr(precision_module, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        speedup = precision_module.cpu_bf16_speedup.__wrapped__(1, rounds=3)
    assert speedup == (0.5 if slow == "bf16" else 2.0)
    assert costs == {slow: [], fast: []}  # a warm-up and 3 rounds each
    assert autocast_on == {"fp32": {False}, "bf16": {True}}
    assert torch.equal(torch.rand(4), expected)


def _auto_on_rank(speedups: tuple[float, ...], rank: int, world: int) -> Resolution:
    precision_module.cpu_bf16_flags = lambda: ("avx512_bf16",)
    precision_module.cpu_bf16_speedup = lambda threads: speedups[rank]
    return resolve_precision("auto", CPU)


def test_the_ranks_of_a_run_agree_on_one_precision():
    """bf16 only where every rank's probe found it faster: one precision for the whole run."""
    split = run_on_ranks(functools.partial(_auto_on_rank, (2.0, 0.6)))
    assert [resolved.precision for resolved in split] == ["fp32", "fp32"]
    assert split[0].why.endswith("ran 2.00x as fast as fp32; not so on every worker, and the "
                                "workers agree: fp32")  # fmt: skip
    assert split[1].why.endswith("(bf16 needs 1.25x)")
    assert [resolved.bf16_speedup for resolved in split] == [2.0, 0.6]
    agreed = run_on_ranks(functools.partial(_auto_on_rank, (2.0, 1.5)))
    assert [resolved.precision for resolved in agreed] == ["bf16", "bf16"]


def test_under_bf16_only_the_forward_pass_is_bf16():
    config = small_config()
    model, augment = build_model(config), build_augment(config)
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    outputs = []
    model.register_forward_hook(lambda module, args, out: outputs.append(out.dtype))
    loss = simclr_loss(model, augment, images, None, 0.5, "bf16")
    loss.backward()
    assert outputs == [torch.bfloat16] and loss.dtype == torch.float32
    trained = [p for p in model.parameters() if p.grad is not None]
    assert len(trained) > 10 and all(p.dtype == p.grad.dtype == torch.float32 for p in trained)
    assert all(b.dtype in (torch.float32, torch.int64) for b in model.buffers())


def test_a_bf16_run_checkpoints_fp32_reports_its_precision_and_resumes_in_fp32(tmp_path):
    bf16 = small_config(precision="bf16", checkpoint_every_steps=2)
    first = pretrain(bf16, tmp_path, stop_after=4, progress=False)
    state = load_checkpoint(latest_checkpoint(tmp_path / "checkpoints"))
    assert first.steps == 4 and state["step"] == 4
    assert all(
        t.dtype == torch.float32 for t in state["backbone"].values() if t.is_floating_point()
    )
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    assert {r["bf16"] for r in records} == {1.0}
    resumed = pretrain(small_config(precision="fp32", checkpoint_every_steps=2), tmp_path,
                       progress=False)  # fmt: skip
    assert resumed.steps == 9 and torch.isfinite(torch.tensor(resumed.final_loss))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    assert [r["bf16"] for r in records if r["step"] > 4] == [0.0] * 5


@pytest.mark.parametrize("kind", [kind for kind in kinds("generate") if kind != "flow"])
def test_a_generative_step_under_bf16_computes_in_bf16_and_keeps_losses_and_weights_fp32(kind):
    config = config_of(kind, DIGITS, precision="bf16")
    data = load_generative_data(config.data, config.image_size, None)
    torch.manual_seed(0)
    task = task_of(kind)(config, data, CPU)
    products = []  # the dtype of every convolution's and linear layer's output
    for network in task.networks.values():
        for module in network.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear)):
                module.register_forward_hook(lambda m, a, out: products.append(out.dtype))
    trained = {name: network for name, network in task.networks.items() if name != "ema"}
    before = {name: [p.detach().clone() for p in net.parameters()] for name, net in trained.items()}
    with autocast_for("bf16", CPU):
        metrics = task.train_step(data.train[:16], step=0)
    assert products and set(products) == {torch.bfloat16}
    assert {name: value.dtype for name, value in metrics.items()} == dict.fromkeys(
        metrics, torch.float32
    )
    for network in task.networks.values():
        assert all(p.dtype == torch.float32 for p in network.parameters())
        assert all(p.grad is None or p.grad.dtype == torch.float32 for p in network.parameters())
    stepped = [name for name, network in trained.items()
               if not all(map(torch.equal, before[name], network.parameters()))]  # fmt: skip
    assert stepped  # (diffusevae trains its VAE first, its DDPM after)


@pytest.mark.parametrize("kind", ["ddpm", "gan"])
def test_a_generative_bf16_run_checkpoints_fp32_reports_it_and_resumes_in_fp32(kind, tmp_path):
    bf16 = config_of(kind, DIGITS, precision="bf16", eval_every_steps=100)
    first = run_generative(kind, bf16, LocalSession(tmp_path), stop_after=2, progress=False)
    assert first.steps == 2
    assert all(value.dtype == torch.float32 for value in parameters(tmp_path).values()
               if value.is_floating_point())  # fmt: skip
    fp32 = config_of(kind, DIGITS, precision="fp32", eval_every_steps=100)
    resumed = run_generative(kind, fp32, LocalSession(tmp_path), progress=False)
    assert resumed.steps == 4
    assert [(row["step"], row["bf16"]) for row in resumed.history] == [
        (1, 1.0), (2, 1.0), (3, 0.0), (4, 0.0)]  # fmt: skip


def test_a_flow_refuses_bf16_and_runs_fp32_under_auto(tmp_path, monkeypatch):
    with pytest.raises(ValidationError, match="precision"):
        config_of("flow", DIGITS, precision="bf16")
    monkeypatch.setattr(precision_module, "cpu_bf16_flags", lambda: ("amx_bf16",))
    monkeypatch.setattr(precision_module, "cpu_bf16_speedup", lambda threads: 2.0)
    run = run_generative("flow", config_of("flow", DIGITS), LocalSession(tmp_path), progress=False)
    assert {row["bf16"] for row in run.history} == {0.0}


def test_a_bf16_fine_tuning_computes_logits_in_bf16_and_reports_it(tmp_path):
    spec = finetune_spec(tmp_path, label_fraction=0.05, epochs=1, batch_size=32, precision="bf16")
    logits = []
    original = Classifier.forward

    def recorded(self, views):
        out = original(self, views)
        logits.append(out.dtype)
        return out

    Classifier.forward = recorded
    try:
        finetune_worker(spec, LocalSession(tmp_path / "out"))
    finally:
        Classifier.forward = original
    records = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").open()]
    assert [r["bf16"] for r in records] == [1.0]
    steps = records[0]["step"]  # training in bf16, then the test passes in fp32
    assert steps >= 2 and logits[:steps] == [torch.bfloat16] * steps
    assert len(logits) > steps and set(logits[steps:]) == {torch.float32}
    state = load_checkpoint(latest_checkpoint(tmp_path / "out" / "checkpoints"))
    assert all(v.dtype == torch.float32 for v in state["model"].values() if v.is_floating_point())


def test_a_bf16_gan_step_scores_the_generator_with_the_critic_just_updated():
    """Autocast keeps bf16 copies of the weights until its outermost context ends: without
    dropping them after the critic's update, the generator's loss would see the old critic."""
    config = config_of("gan", DIGITS, precision="bf16")
    data = load_generative_data(config.data, config.image_size, None)
    torch.manual_seed(0)
    task = task_of("gan")(config, data, CPU)
    critic, x = task.networks["critic"], data.train[:16]
    with autocast_for("bf16", CPU):
        before = critic(x)
        task.update("critic", -critic(x).mean(), lr=0.1)  # a large step: the critic changes
        after = critic(x)
    with autocast_for("bf16", CPU):
        fresh = critic(x)  # a new context: bf16 copies of the updated weights
    assert not torch.equal(before, fresh)
    assert torch.equal(after, fresh)


def test_without_tf32_turns_it_off_inside_and_restores_the_settings_even_on_an_error():
    backends = torch.backends
    saved = backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32
    try:
        backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32 = True, False
        with pytest.raises(KeyError), without_tf32():
            assert not backends.cuda.matmul.allow_tf32 and not backends.cudnn.allow_tf32
            raise KeyError("inside")
        assert (backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32) == (True, False)
    finally:
        backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32 = saved
