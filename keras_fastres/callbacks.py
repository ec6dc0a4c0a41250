"""The paper's learning-rate schedule, an epoch timer and a resumable history file."""

import csv
import math
import time
import warnings
from pathlib import Path

import keras

from keras_fastres.errors import FastResWarning, summary
from keras_fastres.utils import files

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
    epoch, so a run that is killed and resumed ends with exactly one row per epoch. The rows
    are kept in memory too: when the file loses rows during the run (deleted or edited), they
    are written again, with a warning.
    """

    COLUMNS = ("epoch", "loss", "accuracy", "test_loss", "test_error", "learning_rate",
               "epoch_seconds", "images_per_second")

    def __init__(self, path):
        super().__init__()
        self.path = Path(path)
        self.rows = None  # read from the file at the first epoch end

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        if "test_error" not in logs and "val_accuracy" in logs:  # under Keras's fit()
            logs.update(test_loss=logs.get("val_loss"), test_error=1.0 - logs["val_accuracy"])
        row = {key: logs.get(key) for key in self.COLUMNS}
        row["epoch"] = epoch + 1
        on_disk = [r for r in read_history(self.path) if int(r["epoch"]) <= epoch]
        if self.rows is None:
            self.rows = on_disk
        kept = [r for r in self.rows if int(r["epoch"]) <= epoch]
        lost = sorted({int(r["epoch"]) for r in kept} - {int(r["epoch"]) for r in on_disk})
        if lost:
            warnings.warn(f"{self.path} lost the rows of epochs {lost[0]}-{lost[-1]} during "
                          f"the run (deleted or edited); writing them again.", FastResWarning,
                          stacklevel=2)
        self.rows = kept + [row]
        _write_history(self.path, self.rows)


class StopOnNonFinite(keras.callbacks.Callback):
    """Stops training when the loss of a step, or at the end of an epoch any weight (BN
    statistics included), is NaN or infinite; `reason` says which. A learning rate far too
    large can leave the loss finite (saturated probabilities) while the weights overflow.
    Place it before the backup, so that the epoch that went wrong is not backed up."""

    def __init__(self):
        super().__init__()
        self.reason = None

    def _stop(self, reason):
        self.reason = reason
        self.model.stop_training = True

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            self._stop("the loss became NaN or infinite")

    def on_epoch_end(self, epoch, logs=None):
        if self.reason is None and not all(
                bool(keras.ops.all(keras.ops.isfinite(w))) for w in self.model.weights):
            self._stop("a weight became NaN or infinite")


def _write_history(path, rows):
    """Replaces the history file with `rows`, atomically."""
    try:
        with files.replacing(path, "w", newline="") as file:
            writer = csv.DictWriter(file, HistoryCSV.COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    except OSError as error:  # a full disk says "[Errno 28]" and no file: name it
        raise OSError(f"Could not write {path}: {summary(error)}. Make room and run the same "
                      f"command again: the run continues from its last backup.") from None


def truncate_history(path, epochs):
    """Drops the rows of epochs after `epochs` (1-based) from a history file, if any."""
    path = Path(path)
    rows = read_history(path)
    if any(int(row["epoch"]) > epochs for row in rows):
        _write_history(path, [row for row in rows if int(row["epoch"]) <= epochs])


def read_history(path):
    """The rows of a history file as dicts of strings; [] when there is none yet; a ValueError
    naming the file when it is not one this package wrote."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        with open(path, newline="") as file:
            rows = list(csv.DictReader(file))
        for row in rows:
            int(row["epoch"])
    except (OSError, UnicodeDecodeError, csv.Error, KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path} is not a history file of a run ({type(error).__name__}: "
                         f"{error}); move it away to start the history anew.") from None
    return rows
