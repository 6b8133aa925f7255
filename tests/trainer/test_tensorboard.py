"""A run's TensorBoard log, read back with TensorBoard's own event reader."""

from __future__ import annotations

import io
import math

import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from trainer.tensorboard import TensorBoardLog


def read(directory) -> EventAccumulator:
    events = EventAccumulator(str(directory), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def test_scalars_images_and_config_come_back_from_the_event_files(tmp_path):
    run = TensorBoardLog(tmp_path, config={"kind": "simclr", "temperature": 0.2})
    rows = [{"step": s, "epoch": 0, "time": 1_700_000_000.0 + s, "loss": 5.0 / s, "lr": 0.1 * s,
             "images_per_s": 100.0 + s, "bf16": True, "note": "text"} for s in (1, 2, 3)]  # fmt: skip
    for row in rows:
        run.scalars(row)
    run.scalars({"step": 4, "epoch": 0, "loss": math.nan})
    picture = io.BytesIO()
    Image.new("RGB", (48, 24), (200, 30, 30)).save(picture, format="PNG")
    run.image("views.png", picture.getvalue(), "image/png")
    run.image("history.json", b"{}", "application/json")  # not a picture: skipped
    run.flush()

    events = read(tmp_path / "tensorboard")
    tags = events.Tags()
    # the index fields, booleans and strings are not scalars
    assert set(tags["scalars"]) == {"loss", "lr", "images_per_s"}
    loss = events.Scalars("loss")
    assert [e.step for e in loss] == [1, 2, 3, 4]
    # TensorBoard keeps float32
    assert [e.value for e in loss[:3]] == pytest.approx([5.0, 2.5, 5.0 / 3], rel=1e-6)
    assert math.isnan(loss[3].value)
    assert [e.wall_time for e in events.Scalars("lr")] == [1_700_000_001.0, 1_700_000_002.0,
                                                          1_700_000_003.0]  # fmt: skip
    [image] = events.Images("views")
    assert (image.step, image.width, image.height) == (4, 48, 24)
    assert tags["images"] == ["views"]
    text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"temperature": 0.2' in text


def test_a_log_that_cannot_be_written_never_stops_the_run(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("a file where the run directory should be")
    run = TensorBoardLog(blocked, config={"kind": "simclr"})
    run.scalars({"step": 1, "loss": 1.0})  # no exception
    run.image("views.png", b"not a png", "image/png")
    run.flush()


def rows(steps, loss):
    return [{"step": s, "epoch": 0, "loss": loss(s)} for s in steps]


def test_a_resumed_attempt_replaces_what_the_earlier_one_logged_after_its_checkpoint(tmp_path):
    first = TensorBoardLog(tmp_path)
    first.restart_after(0)  # a fresh run
    for row in rows(range(1, 8), lambda s: 10.0 + s):  # it dies at step 7; checkpoint at 4
        first.scalars(row)
    first.flush()
    resumed = TensorBoardLog(tmp_path)
    resumed.restart_after(4)
    for row in rows(range(5, 11), lambda s: 20.0 + s):
        resumed.scalars(row)
    resumed.flush()
    logged = [(e.step, e.value) for e in read(tmp_path / "tensorboard").Scalars("loss")]
    assert logged == [(s, 10.0 + s) for s in range(1, 5)] + [(s, 20.0 + s) for s in range(5, 11)]


def test_a_write_that_fails_later_switches_the_log_off_and_never_raises(tmp_path, monkeypatch):
    run = TensorBoardLog(tmp_path)
    run.scalars({"step": 1, "loss": 1.0})

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(run._writer, "add_scalar", full_disk)
    run.scalars({"step": 2, "loss": 0.5})  # logged, not raised
    run.scalars({"step": "three", "loss": 0.25})  # nor a step that is no number
    run.flush()
    assert [e.step for e in read(tmp_path / "tensorboard").Scalars("loss")] == [1]
