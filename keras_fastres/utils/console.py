"""What the command-line tools share: a quiet TensorFlow start-up, argument checks and help.

The commands themselves are in keras_fastres/commands/ (installed as fastres-train,
fastres-export, fastres-predict and fastres-benchmark; the recipes run them too).

This module imports only the standard library: the package imports it before TensorFlow.
"""

import argparse
import contextlib
import importlib.util
import logging
import os
import sys
from pathlib import Path

COMMAND_VARIABLE = "KERAS_FASTRES_COMMAND"  # set by the recipes before they import the package


def started_as_command():
    """True in a process started as one of this package's commands: an installed fastres-*
    command, `python -m keras_fastres.commands.<name>` (while runpy imports the package,
    argv[0] is "-m"), or a recipe (which sets KERAS_FASTRES_COMMAND=1)."""
    script = sys.argv[0] if sys.argv else ""
    return (script == "-m" or Path(script).name.startswith("fastres-")
            or os.environ.get(COMMAND_VARIABLE) == "1")


@contextlib.contextmanager
def quiet_tensorflow_start():
    """In a command, hides what TensorFlow's C++ runtime prints while it loads and starts (the
    oneDNN and CPU-instruction notes, "Could not find cuda drivers", a cuInit error on machines
    without a GPU), none of which a user can act on. Python's own warnings still show. Anyone
    who sets TF_CPP_MIN_LOG_LEVEL (e.g. 0) sees everything TensorFlow prints; so does every
    process that imports the package as a library."""
    if started_as_command():
        require_backend_installed()
    if not started_as_command() or "TF_CPP_MIN_LOG_LEVEL" in os.environ or (
            "tensorflow" in sys.modules):
        yield
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # what TensorFlow logs once it has started
    # What it prints while its libraries load comes before its logging is configured, so only
    # closing the stderr file descriptor for that moment hides it.
    with _native_stderr_hidden():
        yield


@contextlib.contextmanager
def _native_stderr_hidden():
    """File descriptor 2 on /dev/null for the duration, while Python's `sys.stderr` writes to a
    duplicate of the real one (so the package's own lines and Python's still show; a
    `sys.stderr` that is not file descriptor 2, such as pytest's capture, is left as it is)."""
    sys.stderr.flush()
    saved = os.dup(2)
    python_stderr = sys.stderr
    try:
        on_descriptor_2 = sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        on_descriptor_2 = False
    if on_descriptor_2:
        sys.stderr = os.fdopen(os.dup(saved), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        # Left open: logging handlers created meanwhile (absl's, which tf2onnx's logs reach)
        # hold this stream, a duplicate of the real stderr, and must go on writing to it.
        sys.stderr = python_stderr


@contextlib.contextmanager
def quiet_converters():
    """In a command, what the converters and runtimes the exports use say that a user cannot act
    on, hidden for the duration: the LiteRT converter's and runtime's C++ lines on file
    descriptor 2 ("fully_quantize...", the CPU delegate's announcement), absl's warnings,
    TensorFlow 1 deprecation notes from tf2onnx's graph functions, and onnxruntime's quantizer
    warning through the root logger (about the final BN's 1-D scale, which it quantizes per
    tensor); errors still show. The library leaves all of these alone; with
    TF_CPP_MIN_LOG_LEVEL set to another level than 3, nothing is hidden."""
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3") != "3":
        yield
        return
    with quiet_loggers(None, "absl", "tensorflow"), _native_stderr_hidden():
        yield


@contextlib.contextmanager
def quiet_loggers(*names):
    """In a command, the loggers `names` (None: the root logger) show errors only for the
    duration, and are as they were after; with TF_CPP_MIN_LOG_LEVEL set to another level than
    3, nothing is hidden. E.g. fastres-train hides absl's warnings, through which TFDS says
    what its own errors then say (an unprepared version folder has no dataset_info.json)."""
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3") != "3":
        yield
        return
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def require_backend_installed():
    """In a command, one line and exit status 1 when KERAS_BACKEND names a backend whose
    library is not installed, 2 when it names no backend this package runs on (Keras would
    fail with an import traceback either way)."""
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    module = {"jax": "jax", "torch": "torch", "tensorflow": "tensorflow"}.get(backend)
    if module is None:
        print(f"error: KERAS_BACKEND={backend!r} names no Keras backend this package runs on; "
              f"use tensorflow (the default), jax or torch.", file=sys.stderr)
        raise SystemExit(2)
    if importlib.util.find_spec(module) is None:
        extra = f" (pip install 'keras-fastres[{backend}]')" if backend != "tensorflow" else ""
        raise SystemExit(f"error: KERAS_BACKEND={backend} selects Keras's {backend} backend, "
                         f"and {module} is not installed{extra}. Install it, or unset "
                         f"KERAS_BACKEND to run on TensorFlow.")


def program(module):
    """The name a command's --help and errors give it: fastres-* as installed, else
    `python -m <module>`."""
    name = Path(sys.argv[0]).name if sys.argv else ""
    return name if name.startswith("fastres-") else f"python -m {module}"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help with each option's default; options whose default is None or off say in their
    help what happens without them."""

    def _get_help_string(self, action):
        default = action.default
        if default is None or default is False or default == [] or action.help is None:
            return action.help
        return super()._get_help_string(action)


def writable_file(text):
    """argparse type: a file that can be written (its folder exists), checked before the work
    that produces its content."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file name")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"the folder {path.parent} does not exist; create it "
                                         f"first")
    if not os.access(path.parent, os.W_OK):
        raise argparse.ArgumentTypeError(f"no permission to write in {path.parent}")
    return text


def check_positive_integers(**values):
    """A ValueError naming the first of `values` that is not a positive integer."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def positive_integer(text):
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def non_negative_integer(text):
    """argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value
