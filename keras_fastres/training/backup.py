"""The per-epoch backup that lets a killed run continue, and that survives damage.

    backup/
        epoch-0007/   model.keras (model and optimizer state), state.json (epoch, experiment)
        epoch-0006/   the previous generation, kept until a newer one is complete

Each generation is written into a hidden temporary folder and renamed into place only when
both of its files are complete, so a kill at any moment leaves complete generations only (and
a hidden leftover, removed by the next run). Restoring takes the newest generation that loads;
a damaged one (truncated by a full disk, emptied by a crash of the file system) is skipped with
a warning, and when none loads the error names each file and what to do.

The state is a .keras file, which Keras builds in memory and writes with plain file writes: a
disk that fills while it is written is one OSError. (HDF5 writing straight to a full disk meets
it with a cascade of ignored exceptions and may crash the process; generations that earlier
releases wrote as model.weights.h5 are still read.)
"""

import json
import math
import os
import re
import shutil
import warnings
from pathlib import Path

import keras

from keras_fastres.errors import DamagedFile, FastResWarning, summary
from keras_fastres.models import MODEL_FILE
from keras_fastres.utils import files

GENERATION = re.compile(r"epoch-(\d+)")
KEEP = 2  # the newest generation and the one before it
WEIGHTS, STATE = MODEL_FILE, "state.json"  # the model as a finished run saves it
EARLIER_WEIGHTS = "model.weights.h5"  # what releases up to 0.2.0 wrote


class BackupUnusable(DamagedFile):
    """A backup exists but no generation of it can be loaded."""


class Backup(keras.callbacks.Callback):
    """Model and optimizer state after every finished epoch, with the run's experiment (its
    settings and seed), written by the chief only (so workers never race on one file) and read
    by every worker when a run starts again.

    `stored_experiment()` is the experiment of the run being continued (None for a new run);
    `restore(model)` loads the newest usable generation and returns its number of finished
    epochs (0 for a new run).
    """

    def __init__(self, directory, write=True):
        super().__init__()
        self.directory = Path(directory)
        self.write = write
        self.experiment = None  # set by the run before training (training.experiment)
        self._usable = None

    def generations(self):
        """The complete generations, newest first: [(finished epochs, folder), ...]."""
        if not self.directory.is_dir():
            return []
        found = [(int(match.group(1)), path) for path in self.directory.iterdir()
                 if (match := GENERATION.fullmatch(path.name))]
        return sorted(found, reverse=True)

    def remove_leftovers(self):
        """Removes generations a killed process left half-written (call with the run's lock)."""
        files.remove_leftovers(self.directory)

    def _read_states(self):
        """[(folder, state), ...] newest first, for the generations whose state file reads;
        the others are reported once and skipped."""
        if self._usable is None:
            self._usable, self._damaged = [], []
            for number, folder in self.generations():
                try:
                    state = json.loads((folder / STATE).read_text())
                    check_state(state, number)
                    self._usable.append((folder, state))
                except (OSError, ValueError, KeyError, TypeError) as error:
                    self._damaged.append(f"{folder / STATE}: {summary(error)}")
        return self._usable

    def stored_experiment(self):
        usable = self._read_states()
        return usable[0][1]["experiment"] if usable else None

    def restore(self, model):
        usable = self._read_states()
        damaged = list(self._damaged)
        for folder, state in usable:
            weights = folder / WEIGHTS
            if not weights.exists() and (folder / EARLIER_WEIGHTS).exists():
                weights = folder / EARLIER_WEIGHTS
            try:
                model.load_weights(weights)
            except Exception as error:  # zipfile's BadZipFile, h5py's OSError, Keras's ...
                damaged.append(f"{weights}: {summary(error)}")
                continue
            if damaged:
                warnings.warn(f"damaged backup skipped ({'; '.join(damaged)}); continuing "
                              f"from {folder.name} instead.", FastResWarning, stacklevel=2)
            return state["finished_epochs"]
        if damaged:
            raise BackupUnusable(
                f"No backup in {self.directory} can be loaded ({'; '.join(damaged)}). Delete "
                f"{self.directory} to train this run again from its first epoch, or pass "
                f"another --output-dir.")
        return 0

    def on_epoch_end(self, epoch, logs=None):
        if not self.write or self.model.stop_training:
            return
        self.save(epoch + 1)

    def save(self, finished_epochs):
        """Writes generation `finished_epochs` as one unit, then drops all but the newest
        `KEEP` generations."""
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self.directory / f"epoch-{finished_epochs:04d}"
        temporary = files.temporary_sibling(target)
        shutil.rmtree(temporary, ignore_errors=True)
        # Room first, so that a full disk is said before the work: weights and optimizer state
        # at 8 bytes an element (twice float32's, as slack), and 1 MB for the files' structure.
        needed = 8 * sum(math.prod(v.shape) for v in [*self.model.weights,
                                                      *self.model.optimizer.variables]) + 2 ** 20
        free = shutil.disk_usage(self.directory).free
        if free < needed:
            raise OSError(f"No room for the backup of epoch {finished_epochs} in "
                          f"{self.directory}: it needs about {_megabytes(needed)} and "
                          f"{_megabytes(free)} are free. Make room and run the same "
                          f"command again: the run continues from its last backup.")
        try:
            temporary.mkdir()
            self.model.save(temporary / WEIGHTS)
            (temporary / STATE).write_text(json.dumps(
                {"finished_epochs": finished_epochs, "experiment": self.experiment}))
            for path in (temporary / WEIGHTS, temporary / STATE, temporary):
                sync(path)  # on disk before the rename makes the generation visible
        except OSError as error:
            shutil.rmtree(temporary, ignore_errors=True)
            raise OSError(f"Could not write the backup of epoch {finished_epochs} in "
                          f"{temporary}: {summary(error)}. Make room (or "
                          f"fix the folder) and run the same command again: the run "
                          f"continues from its last backup.") from None
        shutil.rmtree(target, ignore_errors=True)  # a damaged one this run is redoing
        os.rename(temporary, target)
        for _, old in self.generations()[KEEP:]:
            shutil.rmtree(old, ignore_errors=True)
        self._usable = None


def _is_integer(value):
    return isinstance(value, int) and not isinstance(value, bool)


def check_state(state, generation):
    """A ValueError unless `state` is what `Backup.save` writes for generation `generation`:
    finished_epochs that number, and an experiment with an integer seed and at least that many
    epochs."""
    if not isinstance(state, dict) or not isinstance(state.get("experiment"), dict):
        raise ValueError("no experiment settings in it")
    finished, experiment = state.get("finished_epochs"), state["experiment"]
    if not _is_integer(finished) or finished != generation:
        raise ValueError(f"finished_epochs is {finished!r}, not {generation} as the folder says")
    if not _is_integer(experiment.get("seed")) or not 0 <= experiment["seed"] < 2 ** 32:
        raise ValueError(f"the seed is {experiment.get('seed')!r}, not an integer from 0 to "
                         f"2**32 - 1")
    epochs = experiment.get("epochs")
    if not _is_integer(epochs) or not 1 <= finished <= epochs:
        raise ValueError(f"{finished} finished epochs of {epochs!r}")


def sync(path):
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _megabytes(count):
    """Bytes in MB with the decimals that keep two different counts apart ("2.4 MB", not
    "2 MB" for both of 2.4 and 1.6)."""
    return f"{count / 2 ** 20:.0f} MB" if count >= 100 * 2 ** 20 else f"{count / 2 ** 20:.2f} MB"
