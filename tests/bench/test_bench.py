"""Benchmarks refuse settings under which they could not measure anything."""

from __future__ import annotations

import pytest

from bench import input_pipeline


def test_input_pipeline_refuses_fewer_images_than_one_batch(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.argv", ["input_pipeline", "--images", "40"])
    with pytest.raises(SystemExit) as exit_info:
        input_pipeline.main()
    assert exit_info.value.code == 2
    assert "--images 40: at least 70 are needed for one batch of 64" in capsys.readouterr().err
