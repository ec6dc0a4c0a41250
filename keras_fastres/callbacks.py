"""The paper's learning-rate schedule, an epoch timer and a resumable history file."""

import csv
import math
import os
import time
from pathlib import Path

import keras

from keras_fastres import files

# The paper (after He et al. 2015): 0.1, divided by 10 at 50% and at 75% of training.
MILESTONES = (0.5, 0.75)


def paper_learning_rate(epoch, epochs=160, base_learning_rate=0.1):
    """Learning rate for a 0-based epoch: 0.1 for epochs 0-79, 0.01 for 80-119, 0.001 for
    120-159 at 160 epochs; the milestones stay at 50% and 75% of `epochs`, rounded up, so that
    even a one-epoch run starts at the base rate."""
    decays = sum(epoch >= math.ceil(fraction * epochs) for fraction in MILESTONES)
    return base_learning_rate * 0.1 ** decays


def paper_schedule(epochs=160, base_learning_rate=0.1):
    """`paper_learning_rate` as a `keras.callbacks.LearningRateScheduler`."""
    return keras.callbacks.LearningRateScheduler(
        lambda epoch: paper_learning_rate(epoch, epochs, base_learning_rate))


def timed_epochs(epoch_seconds):
    """The epochs a mean time per epoch is taken over: all but the first (which also builds the
    training graph), unless only one ran."""
    return epoch_seconds[1:] or epoch_seconds


class EpochTimer(keras.callbacks.Callback):
    """Wall-clock seconds of each epoch's training steps (evaluation excluded) and images/s.

    Adds `epoch_seconds` and `images_per_second` to the epoch logs, so later callbacks (the
    history file, TensorBoard) record them. `mean_epoch_seconds` leaves out the first epoch of
    this `fit()`, which also builds and compiles the training graph: the paper's "seconds per
    epoch".
    """

    def __init__(self, images_per_epoch):
        super().__init__()
        self.images_per_epoch = images_per_epoch
        self.epoch_seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = self._last_step_end = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self._last_step_end = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = self._last_step_end - self._start
        self.epoch_seconds.append(seconds)
        if logs is not None:
            logs["epoch_seconds"] = seconds
            logs["images_per_second"] = self.images_per_epoch / seconds

    @property
    def timed_epochs(self):
        return timed_epochs(self.epoch_seconds)

    @property
    def mean_epoch_seconds(self):
        timed = self.timed_epochs
        return sum(timed) / len(timed) if timed else float("nan")

    @property
    def images_per_second(self):
        return self.images_per_epoch / self.mean_epoch_seconds


class HistoryCSV(keras.callbacks.Callback):
    """One CSV row per epoch: epoch (1-based), loss (mean training cross-entropy), accuracy,
    test_loss, test_error, learning_rate, epoch_seconds, images_per_second. The test columns
    come from the logs of `distribute.Trainer` (test_loss, test_error), or from Keras fit()'s
    val_loss and val_accuracy.

    The file is rewritten atomically at each epoch end, replacing any row of the same or a later
    epoch, so a run that is killed and resumed ends with exactly one row per epoch.
    """

    COLUMNS = ("epoch", "loss", "accuracy", "test_loss", "test_error", "learning_rate",
               "epoch_seconds", "images_per_second")

    def __init__(self, path):
        super().__init__()
        self.path = Path(path)

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        if "test_error" not in logs and "val_accuracy" in logs:  # under Keras's fit()
            logs.update(test_loss=logs.get("val_loss"), test_error=1.0 - logs["val_accuracy"])
        row = {key: logs.get(key) for key in self.COLUMNS}
        row["epoch"] = epoch + 1
        rows = [r for r in read_history(self.path) if int(r["epoch"]) <= epoch] + [row]
        _write_history(self.path, rows)


def _write_history(path, rows):
    """Replaces the history file with `rows`, atomically."""
    temporary = files.temporary_sibling(path)
    with open(temporary, "w", newline="") as file:
        writer = csv.DictWriter(file, HistoryCSV.COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(temporary, path)


def truncate_history(path, epochs):
    """Drops the rows of epochs after `epochs` (1-based) from a history file, if any."""
    path = Path(path)
    rows = read_history(path)
    if any(int(row["epoch"]) > epochs for row in rows):
        _write_history(path, [row for row in rows if int(row["epoch"]) <= epochs])


def read_history(path):
    """The rows of a history file as dicts of strings; [] when there is none yet."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="") as file:
        return list(csv.DictReader(file))
