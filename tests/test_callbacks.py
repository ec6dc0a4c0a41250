"""The paper's schedule, the epoch timer and the history file."""

import keras
import numpy as np
import pytest

from keras_fastres import FastResNet
from keras_fastres.callbacks import (
    EpochTimer,
    HistoryCSV,
    paper_learning_rate,
    paper_schedule,
    read_history,
    truncate_history,
)


@pytest.mark.parametrize("epoch, rate", [(0, 0.1), (79, 0.1), (80, 0.01), (119, 0.01),
                                         (120, 0.001), (159, 0.001)])
def test_paper_schedule_at_160_epochs(epoch, rate):
    assert paper_learning_rate(epoch) == pytest.approx(rate)
    assert paper_schedule().schedule(epoch) == pytest.approx(rate)


@pytest.mark.parametrize("epoch, rate", [(0, 0.05), (19, 0.05), (20, 0.005), (29, 0.005),
                                         (30, 0.0005), (39, 0.0005)])
def test_schedule_milestones_scale_with_epochs_and_base_rate(epoch, rate):
    assert paper_schedule(epochs=40, base_learning_rate=0.05).schedule(epoch) == pytest.approx(rate)


def test_short_runs_start_at_the_base_rate():
    assert paper_learning_rate(0, epochs=1) == pytest.approx(0.1)
    assert [paper_learning_rate(e, epochs=3) for e in range(3)] == pytest.approx(
        [0.1, 0.1, 0.01])  # milestones at ceil(1.5) = 2 and ceil(2.25) = 3


def tiny_fit(epochs, callbacks, images=64):
    model = FastResNet(8, weight_decay=0)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    x = np.random.default_rng(0).uniform(0, 255, (images, 32, 32, 3)).astype("float32")
    y = np.arange(images) % 10
    return model.fit(x, y, batch_size=16, epochs=epochs, validation_data=(x[:16], y[:16]),
                     callbacks=callbacks, verbose=0)


def test_epoch_timer_counts_the_steps_not_the_evaluation(monkeypatch):
    """Epochs whose steps take 5, 2 and 3 seconds, each followed by a 7-second evaluation: the
    timer says 5, 2, 3, leaves the first (graph building) out of its mean, and logs each."""
    import keras_fastres.callbacks as callbacks

    from conftest import FakeClock

    clock = FakeClock()
    monkeypatch.setattr(callbacks, "time", clock)
    timer, logged = EpochTimer(images_per_epoch=64), []
    for epoch, steps in enumerate(([2, 3], [1, 1], [0.5, 2.5])):
        timer.on_epoch_begin(epoch)
        for batch, seconds in enumerate(steps):
            clock.advance(seconds)
            timer.on_train_batch_end(batch)
        clock.advance(7)  # evaluation on the test set, after the last step
        logs = {}
        timer.on_epoch_end(epoch, logs)
        logged.append(logs)
    assert timer.epoch_seconds == [5, 2, 3]
    assert timer.mean_epoch_seconds == 2.5 and timer.images_per_second == 64 / 2.5
    assert logged == [{"epoch_seconds": 5, "images_per_second": 12.8},
                      {"epoch_seconds": 2, "images_per_second": 32.0},
                      {"epoch_seconds": 3, "images_per_second": 64 / 3}]


def test_history_has_one_row_per_epoch_with_the_papers_columns(tmp_path):
    path = tmp_path / "history.csv"
    tiny_fit(4, [paper_schedule(epochs=4), EpochTimer(64), HistoryCSV(path)])
    rows = read_history(path)
    assert list(rows[0]) == list(HistoryCSV.COLUMNS)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    np.testing.assert_allclose([float(r["learning_rate"]) for r in rows], [0.1, 0.1, 0.01, 0.001])
    for row in rows:
        assert 0 <= float(row["test_error"]) <= 1 and float(row["epoch_seconds"]) > 0


def test_history_replaces_rows_of_epochs_run_again(tmp_path):
    path = tmp_path / "history.csv"
    writer = HistoryCSV(path)
    for epoch in (0, 1, 2, 1, 2, 3):  # a run killed after epoch 3 whose backup held epoch 1
        writer.on_epoch_end(epoch, {"loss": float(epoch), "accuracy": 0.5, "test_error": 0.25})
    rows = read_history(path)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert float(rows[0]["test_error"]) == 0.25


def test_truncating_drops_only_rows_past_the_backup(tmp_path):
    history = HistoryCSV(tmp_path / "history.csv")
    for epoch in range(3):
        history.on_epoch_end(epoch, {"loss": 1.0 / (epoch + 1), "test_error": 0.5})
    truncate_history(tmp_path / "history.csv", 3)
    assert [int(r["epoch"]) for r in read_history(tmp_path / "history.csv")] == [1, 2, 3]
    truncate_history(tmp_path / "history.csv", 2)
    rows = read_history(tmp_path / "history.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2] and float(rows[1]["loss"]) == 0.5
    truncate_history(tmp_path / "missing.csv", 1)  # no history yet: nothing to do
    assert not (tmp_path / "missing.csv").exists()
