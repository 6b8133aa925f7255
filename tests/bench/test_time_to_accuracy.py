"""The race's comparison at equal time, read from scored checkpoints."""

from __future__ import annotations

import pytest

from bench.time_to_accuracy import at_equal_time, top1_at
from trainer.linear_classifier import ProbeResult


def curve(*points: tuple[float, float]) -> list:
    return [
        (seconds, i, ProbeResult(top1, 0.0, 90, 0, 0)) for i, (seconds, top1) in enumerate(points)
    ]


def test_top1_is_linear_between_checkpoints_and_refuses_to_extrapolate():
    run = curve((100, 40.0), (300, 50.0), (500, 56.0))
    assert top1_at(run, 100) == 40.0 and top1_at(run, 500) == 56.0
    assert top1_at(run, 200) == pytest.approx(45.0)
    assert top1_at(run, 450) == pytest.approx(54.5)
    with pytest.raises(ValueError, match="outside"):
        top1_at(run, 501)
    assert top1_at(run[::-1], 200) == pytest.approx(45.0)  # tables read back in any order


def test_unequal_budgets_are_compared_at_the_shorter_runs_end():
    ours = curve((100, 45.0), (788, 53.7))
    lightly = curve((150, 46.0), (550, 50.0), (995, 59.0))  # ran 207 s longer
    line = at_equal_time(ours, lightly)
    # lightly at 788 s: 50 + 9 * 238 / 445 = 54.81
    assert "788 s" in line and "ours 53.70, lightly 54.81: -1.11 points" in line
    assert "do not overlap" in at_equal_time(
        curve((10, 1.0), (20, 2.0)), curve((30, 3.0), (40, 4.0))
    )
