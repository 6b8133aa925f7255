"""The GPU readiness check in its reduced CPU form (``--device cpu --smoke``), so that it cannot rot
before a GPU is at hand: every section runs, every correctness check passes, and it leaves its
table and JSON and prints its summary last."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import torch

from bench import gpu_check
from bench.gpu_check import EAGER, SMOKE, Report, steps, suite_cuda_cases

ROOT = Path(__file__).resolve().parents[2]


def test_the_reduced_check_runs_every_section_on_the_cpu(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", "--device", "cpu", "--smoke", "--out",
         str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["failures"] == [] and report["smoke"]
    sections = report["sections"]
    assert list(sections) == ["1. augmentation", "2. SimCLR step, ResNet-50",
                              "3. whole step from uint8", "4. batch 4096 on one device",
                              "5. the suite's CUDA cases", "6. correctness"]  # fmt: skip
    rows = sections["2. SimCLR step, ResNet-50"]["rows"]
    assert [(r["variant"], r["images"]) for r in rows] == [
        ("fp32 eager", 2), ("bf16 + channels-last", 2), ("fp32 eager", 4),
        ("bf16 + channels-last", 4)]  # fmt: skip
    assert all(r["images_per_s"] > 0 and r["share_of_matmul_rate"] > 0 for r in rows)
    assert sections["4. batch 4096 on one device"]["cache_seconds_per_step"] > 0
    checks = sections["6. correctness"]["checks"]
    assert len(checks) == 4 and all(checks.values())
    # the suite's CUDA cases are collected ("29 skipped, 74 deselected in ..." on a CPU)
    cases = sections["5. the suite's CUDA cases"]["pytest_cuda"]
    assert re.match(r"[1-9]\d* (passed|skipped), \d+ deselected", cases)
    assert (tmp_path / "gpu_check.md").read_text().startswith("# GPU check: CPU")
    assert result.stdout.strip().splitlines()[-1].startswith("gpu-check CPU")


def test_a_failed_cuda_case_fails_the_check_and_is_named(tmp_path, capsys):
    failing = tmp_path / "test_on_device.py"
    failing.write_text(
        "import pytest\n\n\n@pytest.mark.cuda\ndef test_on_device():\n    assert 1 == 2\n\n\n"
        "def test_elsewhere():\n    pass\n"
    )
    figures: dict = {}
    assert not suite_cuda_cases((str(failing),), figures, must_run=False)
    assert figures["pytest_cuda"].startswith("1 failed, 1 deselected")
    [failed] = figures["pytest_cuda_failed"]
    assert failed.startswith("FAILED ") and failed.endswith("::test_on_device - assert 1 == 2")
    assert "E   assert 1 == 2" in capsys.readouterr().out  # the whole report in the log
    assert not suite_cuda_cases((str(tmp_path / "missing.py"),), {}, must_run=False)  # none


def test_on_a_gpu_cases_that_all_skip_fail_the_check_and_a_hung_run_is_stopped(tmp_path):
    """A child that does not see the GPU skips every case: passed on a CPU, a failure on a GPU."""
    skipping = tmp_path / "test_skips.py"
    skipping.write_text(
        "import time\n\nimport pytest\n\n\n@pytest.mark.cuda\ndef test_skips():\n"
        "    pytest.skip('no GPU')\n\n\n@pytest.mark.cuda\ndef test_hangs():\n"
        "    time.sleep(60)\n"
    )
    only_skip = (f"{skipping}::test_skips",)
    assert suite_cuda_cases(only_skip, {}, must_run=False)
    figures: dict = {}
    assert not suite_cuda_cases(only_skip, figures, must_run=True)
    assert figures["pytest_cuda"].startswith("1 skipped")
    figures = {}
    assert not suite_cuda_cases((str(skipping),), figures, must_run=False, timeout_s=5)
    assert figures["pytest_cuda"] == "stopped after 5 s"


def test_a_step_row_that_fails_is_recorded_and_the_next_rows_still_run(tmp_path, monkeypatch):
    """A crash in one variant is a failure of that row; a batch that does not fit (cuDNN names its
    failed allocation) is a figure; the rows after either are measured."""
    real_step = gpu_check.simclr_step

    def failing_step(model, views, optimizer, bf16, *loss):
        step = real_step(model, views, optimizer, bf16, *loss)
        images = views.shape[0] // 2

        def run() -> None:
            if (images, bf16) == (2, True):
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
            if (images, bf16) == (4, False):
                raise RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED")
            step()

        return run

    monkeypatch.setattr(gpu_check, "simclr_step", failing_step)
    report = Report(torch.device("cpu"), SMOKE, True, tmp_path)
    steps(report, SMOKE, "2. SimCLR step, ResNet-50", EAGER, SMOKE.batches)
    rows = report.data["sections"]["2. SimCLR step, ResNet-50"]["rows"]
    assert [(r["variant"], r["images"], r.get("error")) for r in rows] == [
        ("fp32 eager", 2, None),
        ("bf16 + channels-last", 2, "RuntimeError: CUDA error: an illegal memory access was encountered"),
        ("fp32 eager", 4, "out of memory"),
        ("bf16 + channels-last", 4, None),
    ]  # fmt: skip
    assert rows[0]["images_per_s"] > 0 and rows[3]["images_per_s"] > 0
    [failure] = report.data["failures"]
    assert failure.startswith("2. SimCLR step, ResNet-50, bf16 + channels-last x2: RuntimeError")
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert saved["sections"]["2. SimCLR step, ResNet-50"]["rows"][2]["error"] == "out of memory"
