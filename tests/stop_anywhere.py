"""Run by test_run.py in a process of its own (a SIGTERM is what is tested): a 3-epoch run on a
small image folder, stopped by SIGTERM at MOMENTS points spread evenly over its whole life, then
continued to its end. Prints one JSON line per moment: the exit status and stderr of the stopped
run, the status of the continued one, and whether its weights equal an uninterrupted run's.

The moments are counted in Python function calls (the run's own, Keras' and TensorFlow's), not
in seconds, so that they fall at the same places on a loaded machine: start, decoding into the
cache, pipeline construction, tracing, steps, epoch ends, backups, the evaluation, the outputs.
At its moment, the signal comes from another thread, as a signal from outside does.

    python tests/stop_anywhere.py WORK_DIR MOMENTS
"""

import _thread
import contextlib
import io
import json
import os
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from keras_fastres.commands.train import command
from keras_fastres.models import load_model


def folder(work):
    """Three classes of 20 images each, 20x20 pixels."""
    rng = np.random.default_rng(0)
    for label in range(3):
        (work / "photos" / f"c{label}").mkdir(parents=True)
        for index in range(20):
            pixels = rng.integers(0, 60, (20, 20, 3)) + 80 * label
            Image.fromarray(pixels.astype(np.uint8)).save(
                work / "photos" / f"c{label}" / f"{index}.png")
    return work / "photos"


def train(work, run, stop_at=None):
    """(exit status, stderr, Python calls made) of fastres-train on the folder; SIGTERM after
    `stop_at` calls."""
    calls = 0

    def count(frame, event, arg):
        nonlocal calls
        if event == "call":
            calls += 1
            if calls == stop_at:
                sys.setprofile(None)
                _thread.start_new_thread(os.kill, (os.getpid(), signal.SIGTERM))
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        sys.setprofile(count)
        try:
            status = command(["--data", str(work / "photos"), "--image-size", "16", "--depth",
                              "8", "--epochs", "3", "--batch-size", "16", "--seed", "0",
                              "--output-dir", str(run), "--cache-dir", str(work / "cache")])
        finally:
            sys.setprofile(None)
    return status, err.getvalue(), calls


def main(work, moments):
    folder(work)
    status, err, _ = train(work, work / "uninterrupted")  # the first also sets up the process
    assert status == 0, err
    expected = load_model(work / "uninterrupted").get_weights()
    shutil.rmtree(work / "cache")
    status, err, calls = train(work, work / "counted")  # as long as each run after it
    assert status == 0, err
    for moment in range(moments):
        shutil.rmtree(work / "cache")  # each stopped run fills it: that phase is met too
        run = work / f"run-{moment}"
        stop_at = int(calls * (moment + 0.5) / moments)
        status, err, _ = train(work, run, stop_at)
        continued, _, _ = train(work, run)
        same = continued == 0 and all(
            np.array_equal(a, b) for a, b in zip(expected, load_model(run).get_weights()))
        print(json.dumps({"call": stop_at, "of": calls, "status": status, "stderr": err,
                          "continued": continued, "same_weights": same}), flush=True)
        shutil.rmtree(run)


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
