"""The per-epoch backup: generations written as one unit, damage survived, leftovers removed."""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_fastres.errors import FastResWarning
from keras_fastres.training.backup import Backup, BackupUnusable

EXPERIMENT = {"depth": 8, "epochs": 10, "seed": 3}


def small_model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
    model.optimizer.build(model.trainable_variables)  # as distribute.Trainer does
    return model


def train_a_step(model, seed):
    rng = np.random.default_rng(seed)
    model.train_on_batch(rng.normal(size=(8, 4)), rng.normal(size=(8, 3)))


def state_of(model):
    """Weights and optimizer variables (momentum, iterations): what a resumed run needs."""
    return [v.numpy().copy() for v in [*model.weights, *model.optimizer.variables]]


def backed_up_epochs(directory, epochs):
    """A Backup of `epochs` epochs (one training step each) and the model's state after each."""
    model = small_model()
    backup = Backup(directory)
    backup.experiment = EXPERIMENT
    backup.set_model(model)
    states = {}
    for epoch in range(epochs):
        train_a_step(model, epoch)
        backup.on_epoch_end(epoch)
        states[epoch + 1] = state_of(model)
    return backup, states


def assert_state(model, expected):
    for actual, wanted in zip(state_of(model), expected, strict=True):
        np.testing.assert_array_equal(actual, wanted)


def test_the_newest_two_generations_are_kept_and_the_newest_restored(tmp_path):
    backup, states = backed_up_epochs(tmp_path / "backup", 3)
    assert sorted(p.name for p in (tmp_path / "backup").iterdir()) == ["epoch-0002",
                                                                       "epoch-0003"]
    fresh = small_model(seed=1)
    restored = Backup(tmp_path / "backup")
    assert restored.stored_experiment() == EXPERIMENT
    assert restored.restore(fresh) == 3
    assert_state(fresh, states[3])  # the optimizer's momentum too


def test_a_generation_an_earlier_release_wrote_is_restored(tmp_path):
    """Up to 0.2.0 a generation held model.weights.h5: a run killed then continues now."""
    backup, states = backed_up_epochs(tmp_path / "backup", 2)
    newest = tmp_path / "backup" / "epoch-0002"
    (newest / "model.keras").unlink()
    model = small_model()
    model.set_weights([*states[2][:len(model.weights)]])
    for variable, value in zip(model.optimizer.variables, states[2][len(model.weights):]):
        variable.assign(value)
    model.save_weights(newest / "model.weights.h5")
    fresh = small_model(seed=1)
    assert Backup(tmp_path / "backup").restore(fresh) == 2
    assert_state(fresh, states[2])


def test_a_disk_that_fills_while_the_backup_is_written_is_one_error(tmp_path):
    """The file size limit of this process (RLIMIT_FSIZE) stands in for a disk filling during
    the write: writing HDF5 straight to disk met it with dozens of ignored exceptions and a
    segmentation fault. Now one OSError naming the generation; the previous one intact."""
    import resource

    backup, states = backed_up_epochs(tmp_path / "backup", 1)
    size = sum(p.stat().st_size for p in (tmp_path / "backup").rglob("*") if p.is_file())
    train_a_step(backup.model, 1)
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size // 3, limits[1]))
    try:
        with pytest.raises(OSError) as error:
            backup.on_epoch_end(1)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
    message = str(error.value)
    assert message.startswith("Could not write the backup of epoch 2 in ") and (
        "File too large" in message) and "\n" not in message
    assert sorted(p.name for p in (tmp_path / "backup").iterdir()) == ["epoch-0001"]
    fresh = small_model(seed=1)
    assert Backup(tmp_path / "backup").restore(fresh) == 1
    assert_state(fresh, states[1])


STATES = {  # what a damaged or hand-edited state.json of generation 3 may say
    "epochs beyond the run": {"finished_epochs": 999, "experiment": EXPERIMENT},
    "negative epochs": {"finished_epochs": -1, "experiment": EXPERIMENT},
    "boolean epochs": {"finished_epochs": True, "experiment": EXPERIMENT},
    "another generation's epochs": {"finished_epochs": 2, "experiment": EXPERIMENT},
    "experiment not a dict": {"finished_epochs": 3, "experiment": "garbage"},
    "string seed": {"finished_epochs": 3, "experiment": {**EXPERIMENT, "seed": "11"}},
    "seed beyond numpy's": {"finished_epochs": 3, "experiment": {**EXPERIMENT, "seed": 2 ** 76}},
    "negative seed": {"finished_epochs": 3, "experiment": {**EXPERIMENT, "seed": -5}},
    "not a dict": [3],
}


@pytest.mark.parametrize("damage", ["truncated weights", "empty weights", "empty state",
                                    "state without epoch", "missing weights", *STATES])
def test_a_damaged_newest_generation_falls_back_to_the_previous(tmp_path, damage, capsys):
    _, states = backed_up_epochs(tmp_path / "backup", 3)
    newest = tmp_path / "backup" / "epoch-0003"
    weights, state = newest / "model.keras", newest / "state.json"
    if damage == "truncated weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "empty weights":
        weights.write_bytes(b"")
    elif damage == "empty state":
        state.write_text("")
    elif damage == "state without epoch":
        state.write_text('{"experiment": {}}')
    elif damage in STATES:
        state.write_text(json.dumps(STATES[damage]))
    else:
        weights.unlink()
    fresh = small_model(seed=1)
    with pytest.warns(FastResWarning) as warned:
        assert Backup(tmp_path / "backup").restore(fresh) == 2
    assert_state(fresh, states[2])
    assert capsys.readouterr() == ("", "")  # the library warns; the command prints
    [warning] = [str(w.message) for w in warned]
    assert warning.startswith("damaged backup skipped") and "\n" not in warning
    assert str(weights if "weights" in damage else state) in warning
    assert "continuing from epoch-0002" in warning


def test_the_run_redoing_a_damaged_epoch_replaces_it(tmp_path):
    backup, _ = backed_up_epochs(tmp_path / "backup", 3)
    (tmp_path / "backup" / "epoch-0003" / "state.json").write_text("")
    backup.save(3)
    assert Backup(tmp_path / "backup").restore(small_model()) == 3


def test_no_usable_generation_is_one_message_naming_each_file(tmp_path):
    backed_up_epochs(tmp_path / "backup", 2)
    for generation in ("epoch-0001", "epoch-0002"):
        (tmp_path / "backup" / generation / "model.keras").write_bytes(b"\0" * 100)
    with pytest.raises(BackupUnusable) as error:
        Backup(tmp_path / "backup").restore(small_model())
    message = str(error.value)
    assert "epoch-0001/model.keras" in message and "epoch-0002/model.keras" in message
    assert f"Delete {tmp_path / 'backup'}" in message and "\n" not in message


def test_a_new_run_has_nothing_to_restore(tmp_path):
    backup = Backup(tmp_path / "backup")
    assert backup.stored_experiment() is None and backup.restore(small_model()) == 0


KILLED_WHILE_WRITING = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_backup import backed_up_epochs
backup, _ = backed_up_epochs(Path({directory!r}), 1)
def killed(path, *args, **kwargs):  # the weights of epoch 2 are written, its state is not
    os.kill(os.getpid(), signal.SIGKILL)
Path.write_text = killed
backup.save(2)
"""


def test_sigkill_between_the_writes_of_one_backup_leaves_the_previous_intact(tmp_path):
    directory = tmp_path / "backup"
    script = KILLED_WHILE_WRITING.format(tests=str(Path(__file__).parent),
                                         directory=str(directory))
    process = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=300)
    assert process.returncode == -9, process.stderr
    names = sorted(p.name for p in directory.iterdir())
    assert names[0].startswith(".epoch-0002.incomplete-") and names[1:] == ["epoch-0001"]
    assert (directory / names[0] / "model.keras").exists()  # killed between the two files
    backup = Backup(directory)
    assert backup.restore(small_model()) == 1
    backup.remove_leftovers()  # what the next run does, holding the run's lock
    assert sorted(p.name for p in directory.iterdir()) == ["epoch-0001"]
