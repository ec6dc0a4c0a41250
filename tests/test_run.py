"""What a crash, a full disk, a race and a careless user do to a run: each case answers in one
line and loses nothing (training/run.py, training/lock.py, the training command)."""

import json
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from keras_fastres import FastResNet, data
from keras_fastres.callbacks import HistoryCSV, read_history
from keras_fastres.commands.train import main
from keras_fastres.errors import FastResWarning, tensorflow_reason
from keras_fastres.training import distribute
from keras_fastres.training.config import TrainConfig, check_last_batches
from keras_fastres.training.lock import Busy, folder_lock
from keras_fastres.training.run import write_outputs

from conftest import free_ports, write_cifar_archive

ROOT = Path(__file__).resolve().parent.parent
RECIPE = str(ROOT / "recipes" / "cifar10.py")
# As from a user's shell: TensorFlow's log level unset, so the recipes keep it quiet.
ENV = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
SMALL = ["--synthetic", "--synthetic-size", "64", "16", "--depth", "8", "--batch-size", "32",
         "--seed", "0"]


TINY = data.synthetic_cifar("cifar10", 8, 8)  # a run's data, for its evaluation report

def one_line_error(capsys):
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1, error
    return error


@pytest.mark.parametrize("leftover", ["an empty backup folder", "a backup generation"])
def test_a_finished_run_stays_finished_whatever_backup_is_left(tmp_path, leftover, capsys):
    """Finished is marked by metrics.json, written last: a run killed while removing its
    backup, or one where someone created backup/, is not trained again."""
    run = tmp_path / "run"
    (run / "backup").mkdir(parents=True)
    if leftover == "a backup generation":
        (run / "backup" / "epoch-0002").mkdir()
        (run / "backup" / "epoch-0002" / "state.json").write_text("{}")
    (run / "metrics.json").write_text('{"test_error": 0.1}')
    (run / "model.keras").write_bytes(b"the finished model")
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    assert main(TrainConfig(), [*SMALL, "--output-dir", str(run)]) == 1
    assert "already holds a finished run" in one_line_error(capsys)
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before
    assert (run / "model.keras").read_bytes() == b"the finished model"


def test_a_finished_run_whose_metrics_were_deleted_is_not_trained_again(tmp_path, capsys):
    """A model.keras with no backup to continue from is a finished run that lost its
    metrics.json: the same command (without --seed: a new seed) replaced its model."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.keras").write_bytes(b"the finished model")
    assert main(TrainConfig(), [*SMALL, "--output-dir", str(run)]) == 1
    error = one_line_error(capsys)
    assert f"{run} holds a trained model.keras but no metrics.json and no backup" in error
    assert sorted(p.name for p in run.iterdir()) == ["model.keras"]
    assert (run / "model.keras").read_bytes() == b"the finished model"


def test_sigterm_as_the_run_finishes_says_so_and_leaves_no_part_of_its_backup(
        tmp_path, monkeypatch, capsys):
    """SIGTERM arrives after metrics.json is written, halfway through removing the backup: the
    run is finished (exit 143 for the signal, saying so), and no part of the backup is left."""
    from keras_fastres.training import run as run_module
    remove, stopped = shutil.rmtree, []

    def stopped_halfway(path, *args, **kwargs):
        if ".backup.incomplete-" in str(path) and Path(path).exists() and not stopped:
            stopped.append(path)
            next(Path(path).rglob("model.keras")).unlink()  # a part removed, then SIGTERM
            signal.raise_signal(signal.SIGTERM)
        return remove(path, *args, **kwargs)
    monkeypatch.setattr(run_module.shutil, "rmtree", stopped_halfway)
    run = tmp_path / "run"
    assert main(TrainConfig(), [*SMALL, "--epochs", "1", "--output-dir", str(run)]) == 143
    assert stopped, "the backup was not removed through the patched rmtree"
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"Terminated (SIGTERM). The run had finished; its results are in {run}.")
    assert sorted(p.name for p in run.iterdir()) == [  # no backup/, no hidden part of one
        ".lock", "error_curve.png", "evaluation", "history.csv", "metrics.json", "model.keras",
        "tensorboard"]
    monkeypatch.undo()
    assert main(TrainConfig(), [*SMALL, "--epochs", "1", "--output-dir", str(run)]) == 1
    assert "already holds a finished run" in one_line_error(capsys)


def test_outputs_written_again_after_a_kill_reuse_the_runs_export(tmp_path):
    """A run killed after its export appeared, before metrics.json, writes its outputs again
    when rerun: the export it made (from the same final weights) is kept, not made twice."""
    config = TrainConfig(depth=8, export=True, output_dir=str(tmp_path / "run"))
    (tmp_path / "run").mkdir()
    history = [{"epoch": "1", "test_error": "0.5", "accuracy": "0.5"}]
    write_outputs(FastResNet(8), config, {}, history, TINY)
    (tmp_path / "run" / "metrics.json").unlink()  # killed before this was written
    metrics = {}
    write_outputs(FastResNet(8), config, metrics, history, TINY)
    assert metrics["export_dir"] == str(tmp_path / "run" / "export" / "1")
    assert sorted(p.name for p in (tmp_path / "run" / "export").iterdir()) == ["1"]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["export_dir"].endswith(
        "export/1")


def test_files_written_into_a_run_never_follow_a_planted_link(tmp_path):
    """Links planted at the names a run writes (its plot) or writes through (the temporaries
    renamed into place, named after this process) are replaced, and what they point to is
    left as it was."""
    run = tmp_path / "run"
    run.mkdir()
    victims = []
    for name in ("error_curve.png", *(f".{name}.incomplete-{os.getpid()}" for name in (
            "error_curve.png", "metrics.json", "history.csv"))):
        victims.append(tmp_path / f"victim-{len(victims)}")
        victims[-1].write_text("precious")
        (run / name).symlink_to(victims[-1])
    HistoryCSV(run / "history.csv").on_epoch_end(0, {"loss": 1.0, "accuracy": 0.5,
                                                     "test_error": 0.5})
    write_outputs(FastResNet(8), TrainConfig(depth=8, output_dir=str(run)), {},
                  read_history(run / "history.csv"), TINY)
    assert [victim.read_text() for victim in victims] == ["precious"] * len(victims)
    assert sorted(p.name for p in run.iterdir()) == [
        "error_curve.png", "evaluation", "history.csv", "metrics.json", "model.keras"]
    assert not any(p.is_symlink() for p in run.iterdir())
    assert (run / "error_curve.png").read_bytes().startswith(b"\x89PNG")


def test_a_full_disk_names_the_file_and_leaves_no_empty_model(tmp_path, monkeypatch, capsys):
    import keras

    save = keras.Model.save

    def no_space(self, path, *args, **kwargs):
        if "backup" in Path(path).parent.parent.name:  # the epoch's backup still has room
            return save(self, path, *args, **kwargs)
        Path(path).write_bytes(b"")  # what a full disk leaves
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(keras.Model, "save", no_space)
    run = tmp_path / "run"
    assert main(TrainConfig(), [*SMALL, "--epochs", "1", "--output-dir", str(run)]) == 1
    error = one_line_error(capsys)
    assert f"Could not write {run / 'model.keras'}: No space left on device." in error
    assert "run the same command again" in error
    assert not (run / "model.keras").exists() and not (run / "metrics.json").exists()
    assert list((run / "backup").glob("epoch-0001")), "the finished epoch is kept"


def test_a_backup_without_room_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    from keras_fastres.training import backup
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(backup.shutil, "disk_usage",
                        lambda path: usage._replace(free=100_000))  # 0.1 MB free
    run = tmp_path / "run"
    assert main(TrainConfig(), [*SMALL, "--epochs", "1", "--output-dir", str(run)]) == 1
    error = one_line_error(capsys)
    assert f"No room for the backup of epoch 1 in {run / 'backup'}: it needs about" in error
    assert not list((run / "backup").glob("*epoch-0001*"))


def test_weights_that_overflow_stop_the_run_before_anything_is_sealed(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(TrainConfig(), [*SMALL, "--epochs", "3", "--learning-rate", "1e6",
                                "--output-dir", str(run)]) == 1
    error = one_line_error(capsys)
    match = re.search(r"Training stopped in epoch (\d) of 3: (the loss|a weight) became NaN or "
                      r"infinite", error)
    assert match, error
    assert not (run / "model.keras").exists() and not (run / "metrics.json").exists()
    backed_up = [int(p.name[len("epoch-"):]) for p in (run / "backup").glob("epoch-*")]
    assert all(epoch < int(match.group(1)) for epoch in backed_up)  # not the bad epoch


def test_history_rows_lost_during_a_run_are_written_again_with_a_warning(tmp_path, capsys):
    path = tmp_path / "history.csv"
    history = HistoryCSV(path)
    for epoch in range(3):
        history.on_epoch_end(epoch, {"loss": 1.0, "test_error": 0.5})
    path.unlink()  # deleted by someone while the run goes on
    with pytest.warns(FastResWarning, match=f"{path} lost the rows of epochs 1-3"):
        history.on_epoch_end(3, {"loss": 0.5, "test_error": 0.25})
    assert [int(r["epoch"]) for r in read_history(path)] == [1, 2, 3, 4]
    assert capsys.readouterr() == ("", "")  # the library warns; the command prints


@pytest.mark.parametrize("link", ["backup", "run"])
def test_links_that_would_misplace_a_run_are_refused(tmp_path, link, capsys):
    run = tmp_path / "run"
    if link == "backup":
        run.mkdir()
        (tmp_path / "elsewhere").mkdir()
        (run / "backup").symlink_to(tmp_path / "elsewhere")
        message = f"{run / 'backup'} is a symbolic link"
    else:
        run.symlink_to(tmp_path / "missing")
        message = f"The output directory {run} is a symbolic link to nothing"
    assert main(TrainConfig(), [*SMALL, "--output-dir", str(run)]) == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "missing").exists()
    run.unlink() if link == "run" else None
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    assert main(TrainConfig(), [*SMALL, "--output-dir", str(tmp_path / "loop")]) == 2
    assert "is a symbolic link to nothing" in one_line_error(capsys)


def _hold(folder, barrier, log, hold_seconds):
    barrier.wait()
    try:
        with folder_lock(folder, "busy {pid}"):
            log.put(("in", os.getpid(), time.monotonic()))
            time.sleep(hold_seconds)
            log.put(("out", os.getpid(), time.monotonic()))
    except Busy:
        log.put(("refused", os.getpid(), time.monotonic()))
    finally:
        log.put(("done", os.getpid(), time.monotonic()))  # its last event: every one is read


def test_the_lock_admits_one_process_however_they_race(tmp_path):
    """Processes released together by a barrier, on a new folder each round (which the holder
    removes when it ends): never two holders at once, and refused ones touch nothing."""
    context = multiprocessing.get_context("fork")
    for round_index in range(12):
        folder, log = tmp_path / f"run{round_index}", context.Queue()
        barrier = context.Barrier(6)
        workers = [context.Process(target=_hold, args=(folder, barrier, log, 0.05 * (i % 2)))
                   for i in range(6)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
        events, done = [], 0
        while done < len(workers):  # (Queue.empty() may answer True before a put arrives)
            event = log.get(timeout=60)
            done += event[0] == "done"
            events += [event] if event[0] != "done" else []
        events.sort(key=lambda e: e[2])
        assert len(events) == sum(2 if kind == "in" else kind == "refused"
                                  for kind, _, _ in events)
        holders = 0
        for kind, _, _ in events:
            holders += {"in": 1, "out": -1, "refused": 0}[kind]
            assert holders <= 1, events
        assert any(kind == "in" for kind, _, _ in events)
        assert not folder.exists(), sorted(p.name for p in folder.iterdir())  # the last holder removed it


@pytest.mark.first
def test_sigterm_at_thirty_moments_of_a_runs_life_stops_it_and_the_run_continues(tmp_path):
    """SIGTERM at 30 points spread over a 3-epoch run's whole life, counted in Python calls
    (tests/stop_anywhere.py, in a process of its own): every stop says the README's line and
    exits with 143, no traceback, and the run continued from what it left ends with an
    uninterrupted run's weights, bit for bit. It found two windows: a stop inside TensorFlow's
    graph building replaced by its assertion error, and one in a weakref callback, lost."""
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "stop_anywhere.py"),
                           str(tmp_path), "30"], capture_output=True, text=True, timeout=600,
                          env={**ENV, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr[-3000:]
    moments = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(moments) == 30 and moments[-1]["call"] > 0.95 * moments[-1]["of"]
    for moment in moments:
        assert moment["status"] == 143 and "Traceback" not in moment["stderr"], moment
        assert moment["stderr"].strip().startswith("Terminated (SIGTERM). "), moment
        assert moment["continued"] == 0 and moment["same_weights"], moment


def has_watchdog(pid):
    """Whether `pid` has started its cluster watchdog (a child running distribute.WATCHDOG; not
    any child: `platform.processor()` runs `uname -p` for a moment while TensorFlow imports)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            command = (stat.parent / "cmdline").read_bytes()
            if int(fields[1]) == pid and distribute.WATCHDOG.encode() in command:
                return True
        except OSError:  # ended meanwhile
            continue
    return False


def test_a_worker_whose_cluster_never_assembles_stops_after_the_timeout_or_on_sigterm(tmp_path):
    """Two workers of clusters that never assemble, side by side: one stops after its
    --cluster-timeout; the other, in a process group of its own, is sent SIGTERM as a batch
    scheduler or `timeout` sends it (to the group: the watchdog gets it too) and stops at once."""
    addresses = [f"localhost:{port}" for port in free_ports(4)]

    def worker(timeout, name, ports):
        config = {"cluster": {"worker": ports}, "task": {"type": "worker", "index": 0}}
        return subprocess.Popen([sys.executable, RECIPE, *SMALL, "--strategy", "multi-worker",
                                 "--cluster-timeout", str(timeout), "--output-dir",
                                 str(tmp_path / name)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True,
                                env={**ENV, "TF_CONFIG": json.dumps(config)})
    start = time.monotonic()
    timed = worker(3, "timed", addresses[:2])
    signalled = worker(600, "signalled", ports := addresses[2:])
    try:
        while not has_watchdog(signalled.pid) and time.monotonic() - start < 60:
            time.sleep(0.05)
        assert has_watchdog(signalled.pid), "the worker never started its watchdog"
        os.killpg(signalled.pid, signal.SIGTERM)
        _, stderr = signalled.communicate(timeout=30)
        assert signalled.returncode == -signal.SIGKILL
        assert stderr.strip() == (
            f"error: Stopped by SIGTERM while waiting for the cluster (TF_CONFIG: {ports[0]}, "
            f"{ports[1]}) to assemble; nothing was trained.")
        _, stderr = timed.communicate(timeout=120)
    finally:  # nothing left waiting when this fails
        for process in (timed, signalled):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    assert time.monotonic() - start < 60
    assert timed.returncode == -signal.SIGKILL
    assert stderr.strip() == (
        f"error: The cluster did not assemble within 3 s: not every worker of TF_CONFIG "
        f"({addresses[0]}, {addresses[1]}) started. Start the same command on each of them (or "
        f"raise --cluster-timeout).")
    assert not (tmp_path / "timed").exists() and not (tmp_path / "signalled").exists()


@pytest.mark.parametrize("value, message", [
    ('{"cluster": "x"}', 'TF_CONFIG needs "cluster"'),
    ("{not json", "TF_CONFIG is not JSON"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}',
     'TF_CONFIG needs "task": a type among [\'worker\']'),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}',
     'TF_CONFIG needs "task"'),
])
def test_a_bad_tf_config_is_named(value, message):
    with pytest.raises(ValueError, match="TF_CONFIG") as error:
        distribute.check_tf_config(value)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_last_batch_smaller_than_the_replicas_is_refused():
    with pytest.raises(ValueError) as refused:
        check_last_batches({"training": 65, "test": 16}, batch_size=32, replicas=2)
    assert str(refused.value) == (
        "The last training batch holds 1 of the 65 images, fewer than the 2 replicas, and "
        "each replica needs one; choose a --batch-size that leaves no remainder, or a "
        "remainder of at least 2.")
    with pytest.raises(ValueError, match="last test batch holds 2 of the 34 images"):
        check_last_batches({"training": 64, "test": 34}, batch_size=32, replicas=3)
    check_last_batches({"training": 65, "test": 16}, batch_size=32, replicas=1)
    with pytest.raises(ValueError) as refused:  # every batch, not only the last
        check_last_batches({"training": 64, "test": 16}, batch_size=1, replicas=2)
    assert str(refused.value) == (
        "--batch-size 1 is smaller than the 2 replicas, and each replica needs an image of "
        "every batch; choose a --batch-size of at least 2 (a multiple of 2 shares it evenly).")
    check_last_batches({"training": 66, "test": 64}, batch_size=32, replicas=2)


def test_the_run_checks_its_last_batches_before_training(tmp_path, capsys):
    assert main(TrainConfig(), ["--synthetic", "--synthetic-size", "65", "16", "--depth", "8",
                                "--batch-size", "32", "--strategy", "mirrored",
                                "--cpu-replicas", "2", "--output-dir",
                                str(tmp_path / "run")]) == 2
    assert "The last training batch holds 1 of the 65 images" in one_line_error(capsys)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("labels", [[12], [-1]])
def test_labels_outside_the_classes_are_named_before_training(tmp_path, labels):
    images = np.zeros((20, 32, 32, 3), np.uint8)
    train_labels = np.array([0] * 19 + labels)
    archive = write_cifar_archive(tmp_path, "cifar10", (images, train_labels),
                                  (images[:4], np.zeros(4, int)))
    expected = rf"train split of cifar10 .* labels outside 0..9 \(e.g. {labels[0]}\)"
    with pytest.raises(data.DataUnavailableError, match=expected):
        data.load_cifar("cifar10", "archive", str(archive))


def test_tensorflow_errors_are_reduced_to_their_reason():
    graph_error = ("Graph execution error:\n\nDetected at node Pad defined at (most recent call "
                   "last):\n<stack traces unavailable>\nThe first dimension of paddings must be "
                   "the rank of inputs[4,2] [32,32,3]\n\t [[{{node Pad}}]] [Op:__inference_f_7]")
    assert tensorflow_reason(graph_error) == (
        "The first dimension of paddings must be the rank of inputs[4,2] [32,32,3]")
    assert tensorflow_reason("collective aborted\nstack ...") == "collective aborted"
    assert tensorflow_reason("Graph execution error:\n") == "no detail"
    several = ("Graph execution error:\n\nDetected at node x defined at (most recent call last):"
               "\n<stack traces unavailable>\n2 root error(s) found.\n  (0) INVALID_ARGUMENT:  "
               "Input to reshape is a tensor with 0 values\n\t [[{{node x}}]]\n  (1) "
               "INVALID_ARGUMENT: the same\n0 successful operations.")
    assert tensorflow_reason(several) == "Input to reshape is a tensor with 0 values"
    # A full disk under tf.saved_model.save, as TensorFlow 2.21 words it (on a 600 KB tmpfs).
    save_error = ("{{function_node __wrapped__SaveV2_dtypes_96_device_/job:localhost/replica:0/"
                  "task:0/device:CPU:0}} /tmp/small/exp/.export-1.incomplete-2/variables/"
                  "variables_temp/part-00000-of-00001.data-00000-of-00001.tempstate1; No space "
                  "left on device [Op:SaveV2] name: ")
    assert tensorflow_reason(save_error) == "No space left on device"


def test_a_missing_backend_library_is_one_line(monkeypatch):
    import importlib.util

    from keras_fastres.utils import console
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "jax" else find_spec(name, *a))
    with pytest.raises(SystemExit) as stop:
        console.require_backend_installed()
    assert str(stop.value) == (
        "error: KERAS_BACKEND=jax selects Keras's jax backend, and jax is not installed (pip "
        "install 'keras-fastres[jax]'). Install it, or unset KERAS_BACKEND to run on "
        "TensorFlow.")


@pytest.mark.parametrize("batch, reason", [
    ([1, 2, 3], "a list, not the dict of a CIFAR batch"),
    ({b"data": np.zeros((4, 3072), np.uint8), b"labels": [1.5, 0.0, 2.0, 3.0]},
     "labels of type float64, not integers"),
    ({b"data": np.zeros((4, 3072), np.uint8), b"labels": [2 ** 70, 0, 1, 2]},
     "labels of type object, not integers"),
])
def test_a_damaged_archive_batch_is_named_not_truncated(batch, reason, tmp_path):
    """A float label was truncated into a class (1.5 -> 1), a list batch or a label beyond
    int64 was a traceback: each is the named file's damage."""
    import pickle
    images = np.zeros((20, 32, 32, 3), np.uint8)
    folder = write_cifar_archive(tmp_path, "cifar10", (images, np.arange(20) % 10),
                                 (images[:4], np.zeros(4, int)), packed=False)
    (folder / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(data.DataUnavailableError, match=f"incomplete or corrupt .*data_batch_1: "
                                                        f"{reason}"):
        data.load_cifar("cifar10", "archive", str(folder))


def test_a_lock_file_that_is_a_link_is_refused_and_its_target_untouched(tmp_path, capsys):
    """`ln -s ../victim.txt RUN/.lock` made a run truncate victim.txt to its PID."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").symlink_to(victim)
    assert main(TrainConfig(), [*SMALL, "--output-dir", str(run)]) == 1
    error = one_line_error(capsys)
    assert f"{run / '.lock'} is a symbolic link (to {victim})" in error
    assert victim.read_text() == "precious\n"
    assert sorted(p.name for p in run.iterdir()) == [".lock"]


def test_a_folder_a_killed_holder_was_removing_is_removed_by_the_next_lock(tmp_path):
    """The last holder renames a folder the contest created away, then deletes it: killed in
    between, it leaves a hidden sibling that the next lock in that parent removes."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    leftover = tmp_path / f".run.incomplete-{dead}"
    leftover.mkdir()
    (leftover / ".lock").write_text(f"{dead}\n")
    with folder_lock(tmp_path / "run", "busy {pid}"):
        assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert list(tmp_path.iterdir()) == []  # and the new folder, left holding only the lock
