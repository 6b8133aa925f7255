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
                              "5. correctness"]  # fmt: skip
    rows = sections["2. SimCLR step, ResNet-50"]["rows"]
    assert [(r["variant"], r["images"]) for r in rows] == [
        ("fp32 eager", 2), ("bf16 + channels-last", 2), ("fp32 eager", 4),
        ("bf16 + channels-last", 4)]  # fmt: skip
    assert all(r["images_per_s"] > 0 and r["share_of_matmul_rate"] > 0 for r in rows)
    assert sections["4. batch 4096 on one device"]["cache_seconds_per_step"] > 0
    checks = sections["5. correctness"]["checks"]
    assert len(checks) == 5 and all(checks.values())
    # the suite's CUDA cases are collected (a CPU skips each): "29 skipped, 74 deselected in ..."
    assert re.match(r"[1-9]\d* skipped, \d+ deselected", sections["5. correctness"]["pytest_cuda"])
    assert (tmp_path / "gpu_check.md").read_text().startswith("# GPU check: CPU")
    assert result.stdout.strip().splitlines()[-1].startswith("gpu-check CPU")


def test_a_failed_cuda_case_fails_the_check_and_is_named(tmp_path, capsys):
    failing = tmp_path / "test_on_device.py"
    failing.write_text(
        "import pytest\n\n\n@pytest.mark.cuda\ndef test_on_device():\n    assert 1 == 2\n\n\n"
        "def test_elsewhere():\n    pass\n"
    )
    figures: dict = {}
    assert not suite_cuda_cases((str(failing),), figures)
    assert figures["pytest_cuda"].startswith("1 failed, 1 deselected")
    [failed] = figures["pytest_cuda_failed"]
    assert failed.startswith("FAILED ") and failed.endswith("::test_on_device - assert 1 == 2")
    assert "E   assert 1 == 2" in capsys.readouterr().out  # the whole report in the log
    assert not suite_cuda_cases((str(tmp_path / "missing.py"),), {})  # nothing collected
