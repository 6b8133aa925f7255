"""``precision: auto``: detected on the worker (CPU flags, CUDA support), forced by fp32 or bf16;
under bf16 autocast the loss, the weights, the batch-norm statistics and the checkpoints stay fp32,
and a run resumes under the other precision."""

from __future__ import annotations

import json

import torch

from tests.trainer.test_pretrain import small_config
from trainer import precision as precision_module
from trainer.checkpoint import latest_checkpoint, load_checkpoint
from trainer.precision import cpu_bf16_flags, resolve_precision
from trainer.pretrain import pretrain
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


def test_auto_takes_bf16_only_where_the_cpu_computes_it(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_bf16_flags", lambda: ())
    assert resolve_precision("auto", CPU) == (
        "fp32", "auto: the CPU has neither AMX nor AVX512-BF16")  # fmt: skip
    assert resolve_precision("fp32", CPU)[0] == "fp32"
    forced, why = resolve_precision("bf16", CPU)
    assert forced == "bf16" and "slower than fp32" in why
    monkeypatch.setattr(precision_module, "cpu_bf16_flags", lambda: ("amx_bf16",))
    assert resolve_precision("auto", CPU) == ("bf16", "auto: the CPU has amx_bf16")
    assert resolve_precision("fp32", CPU)[0] == "fp32"


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
