"""The GPU readiness check in its reduced CPU form (``--device cpu --smoke``), so that it cannot rot
before a GPU is at hand: every section runs, every correctness check passes, and it leaves its
table and JSON and prints its summary last."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from bench import gpu_check
from bench.gpu_check import (
    EAGER,
    SMOKE,
    Report,
    bf16_against_fp32,
    big_batch,
    collectives_in_child,
    out_of_memory,
    steps,
    suite_cuda_cases,
    summary,
    without_lightly,
)

ROOT = Path(__file__).resolve().parents[2]


def test_the_reduced_check_runs_every_section_on_the_cpu(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", "--device", "cpu", "--smoke", "--out",
         str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["failures"] == [] and report["smoke"] and report["finished"]
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
    assert len(checks) == 5 and all(checks.values())
    # the suite's CUDA cases are collected ("33 skipped, 84 deselected in ..." on a CPU)
    cases = sections["5. the suite's CUDA cases"]["pytest_cuda"]
    assert re.match(
        rf"{gpu_check.CUDA_CASES} skipped, \d+ deselected", cases
    )  # what a GPU must pass
    assert (tmp_path / "gpu_check.md").read_text().startswith("# GPU check: CPU")
    assert result.stdout.strip().splitlines()[-1].startswith("gpu-check CPU")


def test_a_failed_cuda_case_fails_the_check_and_is_named(tmp_path, capsys):
    failing = tmp_path / "test_on_device.py"
    failing.write_text(
        "import pytest\n\n\n@pytest.mark.cuda\ndef test_on_device():\n    assert 1 == 2\n\n\n"
        "def test_elsewhere():\n    pass\n"
    )
    figures: dict = {}
    assert not suite_cuda_cases((str(failing),), figures, must_run=0)
    assert figures["pytest_cuda"].startswith("1 failed, 1 deselected")
    [failed] = figures["pytest_cuda_failed"]
    assert failed.startswith("FAILED ") and failed.endswith("::test_on_device - assert 1 == 2")
    assert "E   assert 1 == 2" in capsys.readouterr().out  # the whole report in the log
    assert not suite_cuda_cases((str(tmp_path / "missing.py"),), {}, must_run=0)  # none


def test_on_a_gpu_cases_that_all_skip_fail_the_check_and_a_hung_run_is_stopped(tmp_path):
    """A child that does not see the GPU skips every case: passed on a CPU, a failure on a GPU;
    so are fewer passing cases than the GPU must run."""
    skipping = tmp_path / "test_skips.py"
    skipping.write_text(
        "import time\n\nimport pytest\n\n\n@pytest.mark.cuda\ndef test_skips():\n"
        "    pytest.skip('no GPU')\n\n\n@pytest.mark.cuda\ndef test_hangs():\n"
        "    time.sleep(60)\n\n\n@pytest.mark.cuda\ndef test_passes():\n    pass\n"
    )
    assert suite_cuda_cases((f"{skipping}::test_passes",), {}, must_run=1)
    assert not suite_cuda_cases((f"{skipping}::test_passes",), {}, must_run=2)  # one case lost
    only_skip = (f"{skipping}::test_skips",)
    assert suite_cuda_cases(only_skip, {}, must_run=0)
    figures: dict = {}
    assert not suite_cuda_cases(only_skip, figures, must_run=1)
    assert figures["pytest_cuda"].startswith("1 skipped")
    figures = {}
    assert not suite_cuda_cases((str(skipping),), figures, must_run=0, timeout_s=5)
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
                raise RuntimeError(
                    "cuDNN error: CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED"
                )
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
    # what a run stopped at its time limit leaves says so: its missing sections never ran
    assert not saved["finished"]
    assert (
        (tmp_path / "gpu_check.md")
        .read_text()
        .endswith(
            "UNFINISHED: the run stopped before its end; the last section saved: "
            "2. SimCLR step, ResNet-50\n"
        )
    )


@pytest.mark.parametrize(
    "message, expected",
    [
        ("CUDA out of memory. Tried to allocate 2.00 GiB", True),
        ("CUDA error: out of memory", True),
        ("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED", True),  # cuDNN 9
        ("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`", True),
        ("CUDA error: an illegal memory access was encountered", False),
        ("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED", False),
    ],
)
def test_out_of_memory_is_told_from_other_errors(message, expected):
    assert out_of_memory(RuntimeError(message)) is expected
    assert not out_of_memory(ValueError("out of memory"))  # only the runtime's errors


def test_a_collectives_process_that_dies_is_an_error_of_its_section_not_the_end_of_the_run():
    """NCCL's watchdog ends its process on a hang or an error: here the child fails at once (a
    device that no machine has), and this process gets an exception that names what happened."""
    with pytest.raises(RuntimeError, match=r"the collectives' process exited with 1: \w+"):
        collectives_in_child(torch.device("cuda", 999))


def test_the_summary_takes_the_best_step_from_the_eager_and_the_compiled_rows():
    row = {"variant": "bf16 + channels-last", "images": 256, "images_per_s": 900.0,
           "share_of_matmul_rate": 0.3, "ratio_to_lightly": 1.4}  # fmt: skip
    compiled = {"variant": "bf16 + channels-last + compile", "images": 256,
                "images_per_s": 1200.0, "share_of_matmul_rate": 0.4}  # fmt: skip
    data = {"device": "NVIDIA H200", "seconds": 400.0, "failures": [], "sections": {
        "2. SimCLR step, ResNet-50": {"rows": [row, {"variant": "fp32 eager", "images": 512,
                                                     "error": "out of memory"}]},
        "7. SimCLR step compiled": {"rows": [compiled]},
    }}  # fmt: skip
    assert summary(data) == (
        "gpu-check NVIDIA H200 (400 s); best step bf16 + channels-last + compile x256: 1200 img/s, "
        "40 % of the matmul rate; vs lightly 1.40-1.40x; failures: 0"
    )


def test_the_largest_unchunked_batch_is_the_last_that_fit(tmp_path, monkeypatch):
    real_step = gpu_check.simclr_step

    def does_not_fit() -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")

    def step_that_fits_two_images(model, views, optimizer, bf16):
        return real_step(model, views, optimizer, bf16) if len(views) <= 4 else does_not_fit

    monkeypatch.setattr(gpu_check, "simclr_step", step_that_fits_two_images)
    report = Report(torch.device("cpu"), SMOKE, True, tmp_path)
    big_batch(report, SMOKE)
    figures = report.data["sections"]["4. batch 4096 on one device"]
    assert "error" not in figures and report.data["failures"] == []
    assert figures["cache_seconds_per_step"] > 0
    [fitted, too_big] = figures["unchunked"]
    assert fitted["images"] == 2 and fitted["seconds_per_step"] > 0
    assert too_big == {"images": 4, "error": "out of memory"}


def test_without_lightly_a_gpu_run_fails_and_a_cpu_run_notes_it(tmp_path):
    """The GPU run is for the comparison with lightly: losing the peer there must show in its
    failures and summary, not as a quiet note (a CPU ``make test`` has no bench extras)."""
    report = Report(torch.device("cpu"), SMOKE, True, tmp_path)
    on_cpu: dict = {}
    error = ModuleNotFoundError("No module named 'lightly'")
    without_lightly(report, on_cpu, "1. augmentation", error)
    assert on_cpu == {"lightly": "skipped: lightly is not importable (No module named 'lightly')"}
    assert report.data["failures"] == []
    report.device = torch.device("cuda")  # only its type is read
    on_gpu: dict = {}
    without_lightly(report, on_gpu, "1. augmentation", error)
    assert on_gpu == on_cpu
    assert report.data["failures"] == [
        "1. augmentation: skipped: lightly is not importable (No module named 'lightly') "
        "(make gpu-wheels)"
    ]


def fake_python(tmp_path: Path, installed: dict[str, str]) -> Path:
    """A stand-in for the interpreter gpu_wheels.sh asks: it knows the versions of ``installed``,
    and records a ``pip download`` instead of running it."""
    script = tmp_path / "python"
    versions = "\n".join(f"  {name}) echo {version} ;;" for name, version in installed.items())
    script.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = -m ]; then echo "$@" > pip-download.args; mkdir -p gpu-wheels; exit 0; fi\n'
        f'case "$3" in\n{versions}\n  *) echo "No package metadata for $3" >&2; exit 1 ;;\nesac\n'
    )
    script.chmod(0o755)
    return script


@pytest.mark.parametrize("missing", [None, "lightly", "pydantic-core"])
def test_the_wheels_script_takes_the_installed_versions_and_refuses_a_missing_one(
    tmp_path, missing
):
    """A package missing here once made the script ask pip for "lightly==", which fetched lightly
    0.0.0, an empty placeholder: the GPU run would have lost its peer. It must stop, naming it,
    before it touches gpu-wheels/."""
    tree = tmp_path / "tree"  # the script works beside its own folder: a copy, not this tree
    (tree / "bench").mkdir(parents=True)
    (tree / "bench" / "gpu_wheels.sh").write_text((ROOT / "bench" / "gpu_wheels.sh").read_text())
    (tree / "gpu-wheels").mkdir()
    (tree / "gpu-wheels" / "kept.whl").write_text("")
    versions = {"pydantic": "2.14.4", "pydantic-core": "2.50.5", "lightly": "1.6.0"}
    versions.pop(missing, None)
    result = subprocess.run(
        ["bash", str(tree / "bench" / "gpu_wheels.sh")], capture_output=True, text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHON": str(fake_python(tmp_path, versions))}, timeout=60,
    )  # fmt: skip
    if missing:
        assert result.returncode != 0
        assert f"{missing} is not installed" in result.stderr
        assert (tree / "gpu-wheels" / "kept.whl").exists()  # the last good download stays
        assert not (tree / "pip-download.args").exists()
        return
    assert result.returncode == 0, result.stderr
    asked = (tree / "pip-download.args").read_text().split()
    assert asked[:3] == ["-m", "pip", "download"]
    assert {"pydantic==2.14.4", "pydantic-core==2.50.5", "lightly==1.6.0"} <= set(asked)
    assert not (tree / "gpu-wheels" / "kept.whl").exists()  # a fresh folder


class _WrongUnderAutocast(nn.Module):
    """A network whose bf16 forward is broken the way ``corrupt`` says, its fp32 forward sound."""

    def __init__(self, network: nn.Module, corrupt):
        super().__init__()
        self.network, self.corrupt = network, corrupt

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.network(x)
        return self.corrupt(z) if torch.is_autocast_enabled(x.device.type) else z


@pytest.mark.parametrize(
    "corrupt",
    [lambda z: torch.cat([z[: len(z) // 2], z[len(z) // 2 :].roll(1, 0)]),
     lambda z: z + 3 * z.std() * torch.randn_like(z)],
    ids=["second views of other images", "noise"],
)  # fmt: skip
def test_the_bf16_check_fails_a_broken_bf16_forward(monkeypatch, corrupt):
    """At initialisation the loss of raw projections is log(2n - 1) whatever the network does:
    the check must still fail a bf16 path that returns another image's rows, or noise."""
    real = gpu_check.resnet50
    monkeypatch.setattr(gpu_check, "resnet50",
                        lambda *args: _WrongUnderAutocast(real(*args), corrupt))  # fmt: skip
    figures: dict = {}
    checks = bf16_against_fp32(torch.device("cpu"), figures)
    assert not any(checks.values()), figures
