"""The GPU readiness check in its reduced CPU form (``--device cpu --smoke``), so that it cannot rot
before a GPU is at hand: every section runs, every correctness check passes, and it leaves its
table and JSON and prints its summary last."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from bench.gpu_check import suite_cuda_cases

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
                              "5. correctness", "6. the suite's CUDA cases"]  # fmt: skip
    rows = sections["2. SimCLR step, ResNet-50"]["rows"]
    assert [(r["variant"], r["images"]) for r in rows] == [
        ("fp32 eager", 2), ("bf16 + channels-last", 2), ("fp32 eager", 4),
        ("bf16 + channels-last", 4)]  # fmt: skip
    assert all(r["images_per_s"] > 0 and r["share_of_matmul_rate"] > 0 for r in rows)
    assert sections["4. batch 4096 on one device"]["cache_seconds_per_step"] > 0
    checks = sections["5. correctness"]["checks"]
    assert len(checks) == 4 and all(checks.values())
    # the suite's CUDA cases are collected ("29 skipped, 74 deselected in ..." on a CPU)
    cases = sections["6. the suite's CUDA cases"]["pytest_cuda"]
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
