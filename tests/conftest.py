import os

# Quiet TensorFlow's C++ start-up logging; must be set before TensorFlow is imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Decoded image folders go to a cache of this session's (and its child processes'), not the
# user's: every test folder is a new one, so the first load of each decodes.
if "KERAS_FASTRES_CACHE" not in os.environ:
    import tempfile
    os.environ["KERAS_FASTRES_CACHE"] = tempfile.mkdtemp(prefix="keras_fastres-cache-")

import io
import pickle
import socket
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

CPU_REPLICAS = 2


def pytest_collection_modifyitems(items):
    """The tests marked `first` (the few that take minutes) run first: pytest-xdist hands tests
    out in this order, so the long one starts at once on one worker while the other takes the
    rest, and the two end together instead of one waiting at the end."""
    items.sort(key=lambda item: item.get_closest_marker("first") is None)


def pytest_configure(config):
    """The CPU as two logical devices for the whole session, as `--cpu-replicas 2` asks
    (TensorFlow fixes its devices when its runtime starts, and make_strategy keeps a matching
    split): the two-device runs are tested in this process, beside their one-device references.
    Every other strategy places its work on the first device, as in a process of its own. Not
    in pytest-xdist's controller, which runs no test (TensorFlow's start there would only delay
    its workers')."""
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        return
    capture = config.pluginmanager.getplugin("capturemanager")
    capture.resume_global_capture()
    try:
        import tensorflow as tf
        tf.config.set_logical_device_configuration(
            tf.config.list_physical_devices("CPU")[0],
            [tf.config.LogicalDeviceConfiguration()] * CPU_REPLICAS)
    finally:  # TensorFlow's start-up lines (logged before its log level applies) dropped
        capture.suspend_global_capture()
        capture.read_global_capture()


def write_cifar_archive(directory, name, train, test, packed=True):
    """Writes (images, labels) splits in the official python-version layout: pickled dicts with
    b"data" (N, 3072) uint8 rows of 1024 red, green, blue values, and the labels list; as the
    .tar.gz that the CIFAR site serves (packed) or as its extracted folder. Returns the path."""
    from keras_fastres.data import ARCHIVES

    archive, folder, members, label_key = ARCHIVES[name]
    files = {}
    for (images, labels), split in ((train, "train"), (test, "test")):
        parts = np.array_split(np.arange(len(labels)), len(members[split]))
        for member, index in zip(members[split], parts):
            rows = images[index].transpose(0, 3, 1, 2).reshape(len(index), 3072)
            batch = {b"data": rows.astype(np.uint8), label_key: [int(v) for v in labels[index]],
                     b"batch_label": member.encode()}
            files[member] = pickle.dumps(batch, protocol=2)
    directory.mkdir(parents=True, exist_ok=True)
    if not packed:
        (directory / folder).mkdir()
        for member, content in files.items():
            (directory / folder / member).write_bytes(content)
        return directory / folder
    path = directory / archive
    with tarfile.open(path, "w:gz") as tar:
        for member, content in files.items():
            info = tarfile.TarInfo(f"{folder}/{member}")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return path


def free_ports(count):
    """`count` local TCP ports that were free a moment ago."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def serving_bytes_without_keras(saved_model, files):
    """A process, started, where Keras and this package cannot be imported, that sends the bytes
    of `files` to the SavedModel's serving_bytes signature (as TF Serving would) and prints the
    class names it answers on one line (`.communicate()` them). The process is what is tested:
    the export must stand on TensorFlow alone."""
    import subprocess
    import sys
    script = f"""
import sys
for blocked in ("keras", "keras_fastres"):
    sys.modules[blocked] = None
import tensorflow as tf
serve = tf.saved_model.load({str(saved_model)!r}).signatures["serving_bytes"]
files = {[str(path) for path in files]!r}
out = serve(image_bytes=tf.constant([open(path, "rb").read() for path in files]))
print(" ".join(name.decode() for name in out["class_name"].numpy()))
"""
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin"})


def wait_for_backup(run_dir, process, generations=1, timeout=300):
    """Waits until the run in `run_dir` has backed up `generations` finished epochs (at most the
    two it keeps), or `process` ended."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        # A generation is complete once visible (it is renamed into place).
        if len(list((run_dir / "backup").glob("epoch-*"))) >= generations:
            return
        time.sleep(0.02)


class WeightRecorder:
    """Records, in this process, what tests/record_weights.py records in a child: the weights
    at the start and at the end of each `Trainer.fit` and the seed each run chose."""

    def __init__(self, monkeypatch):
        from keras_fastres.training import distribute, run
        self.initial, self.final, self.seeds = [], [], []
        fit, choose_seed = distribute.Trainer.fit, run.run_seed

        def record_fit(trainer, *args, **kwargs):
            self.initial.append(trainer.model.get_weights())
            logs = fit(trainer, *args, **kwargs)
            self.final.append(trainer.model.get_weights())
            return logs

        def record_seed(*args, **kwargs):
            self.seeds.append(choose_seed(*args, **kwargs))
            return self.seeds[-1]
        monkeypatch.setattr(distribute.Trainer, "fit", record_fit)
        monkeypatch.setattr(run, "run_seed", record_seed)


RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def run_recipe(name, args, monkeypatch):
    """The exit status of recipes/NAME.py run as its command line runs it, in this process
    (its output goes to the test's captured stdout and stderr)."""
    import runpy
    import sys

    monkeypatch.setenv("KERAS_FASTRES_COMMAND", "1")  # as the recipe sets it; undone after
    monkeypatch.setattr(sys, "argv", [str(RECIPES / f"{name}.py"), *map(str, args)])
    try:
        runpy.run_path(str(RECIPES / f"{name}.py"), run_name="__main__")
    except SystemExit as exit:
        return exit.code
    raise AssertionError(f"recipes/{name}.py returned without an exit status")


class FakeClock:
    """A `time` stand-in for a benchmark module: its perf_counter moves only when a test says
    a timed call took so long, so what the report says can be derived from what the calls
    took (an oracle independent of the report's own arithmetic)."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """scikit-learn's digits as a folder of images (test_own_images.digits_folder), with a
    text file, a damaged PNG and a decompression bomb's header among the training images, and
    a FastResNet-8 trained on them for 10 epochs through fastres-train, with its SavedModel
    export: (the folder, the run directory), shared by the tests that need a model that learned
    something, which only read them. What the command printed is beside the run, in train.out
    and train.err. Trained once per session: the first pytest-xdist worker to need it trains it
    under a lock, in the directory the workers share, and the other finds it there."""
    import fcntl

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    work = shared / "digits-run"
    with open(shared / "digits-run.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (work / "trained").exists():
            train_digits(work)
            (work / "trained").touch()
    return work / "digits", work / "run"


def train_digits(work):
    """digits_run's folder and run, made in `work` (anew, after a worker that failed)."""
    import contextlib
    import shutil
    import warnings

    from test_own_images import digits_folder, png_header

    from keras_fastres.commands.train import command

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    root = digits_folder(work / "digits")
    (root / "train" / "one" / "notes.txt").write_text("not an image: ignored")
    (root / "train" / "two" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but then nothing")
    (root / "train" / "six" / "bomb.png").write_bytes(png_header(10_000, 10_000))
    run = work / "run"
    out, err = io.StringIO(), io.StringIO()
    # The command prints its warnings; recorded here, not in the session's warning summary.
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
            warnings.catch_warnings(record=True):
        code = command(["--data", str(root), "--no-flip", "--image-size", "16", "--depth", "8",
                        "--epochs", "10", "--batch-size", "64", "--seed", "0", "--output-dir",
                        str(run), "--export"])
    (work / "train.out").write_text(out.getvalue())
    (work / "train.err").write_text(err.getvalue())
    assert code == 0, err.getvalue()
