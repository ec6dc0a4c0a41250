"""How the commands speak and end (commands/output.py): the library's log lines and warnings,
the one error line, and one exit status per kind of error."""

import logging
import re
import signal
import time
import warnings

import pytest

from keras_fastres.commands.output import exit_status, progress_bar, run_command, speaking
from keras_fastres.data import DataUnavailableError
from keras_fastres.errors import DamagedFile, FastResWarning, Terminated, summary
from keras_fastres.training.backup import BackupUnusable
from keras_fastres.training.lock import Busy


@pytest.mark.parametrize("error, status", [
    (ValueError("depth must be 6n + 2"), 2),
    (BackupUnusable("no backup loads"), 1),
    (DamagedFile("truncated"), 1),
    (DataUnavailableError("no network"), 1),
    (Busy("another process"), 1),
    (OSError(28, "No space left on device"), 1),
    (ImportError("no tf2onnx"), 1),
    (KeyboardInterrupt(), 130),
    (Terminated(), 143),
])
def test_one_exit_status_per_kind_of_error(error, status, capsys):
    def fail():
        raise error
    assert exit_status(error) == status
    assert run_command(fail) == status
    err = capsys.readouterr().err
    assert err.count("\n") == (1 if status < 100 else 2)  # the stop messages start a new line


def test_the_error_line_is_the_summary_and_tensorflow_errors_say_so(capsys):
    import tensorflow as tf

    def graph_error():
        raise tf.errors.InvalidArgumentError(
            None, None, "Graph execution error:\n\nDetected at node x\nthe reason [[{{node x}}]]")
    assert run_command(graph_error, advice=lambda error: "what to do") == 1
    assert capsys.readouterr().err == "error: TensorFlow: the reason\nwhat to do\n"

    def full_disk():
        raise OSError(28, "No space left on device", "/runs/model.keras")
    assert run_command(full_disk) == 1
    assert capsys.readouterr().err == "error: No space left on device: /runs/model.keras\n"
    assert summary(ValueError("")) == "ValueError"
    assert summary(ValueError("first line\nsecond")) == "first line"


def test_a_bug_keeps_its_traceback():
    def bug():
        raise KeyError("a bug")
    with pytest.raises(KeyError):
        run_command(bug)


def test_sigterm_raises_terminated_inside_a_command_and_names_the_hint(capsys):
    import os
    import time

    def terminated():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises Terminated first
    previous = signal.getsignal(signal.SIGTERM)
    assert run_command(terminated, stopped_hint="Run it again.") == 143
    assert capsys.readouterr().err == "\nTerminated (SIGTERM). Run it again.\n"
    assert signal.getsignal(signal.SIGTERM) is previous  # put back


def test_log_lines_go_to_stdout_and_warnings_to_stderr_only_while_speaking(capsys):
    log = logging.getLogger("keras_fastres.data.folder")

    def speak():
        log.info("Decoding x: 3 files ...")
        warnings.warn("skipped 1 of 3 image files", FastResWarning, stacklevel=1)
        warnings.warn("skipped 1 of 3 image files", FastResWarning, stacklevel=1)  # again
    assert run_command(speak) == 0
    out, err = capsys.readouterr()
    assert out == "Decoding x: 3 files ...\n"
    assert err == "warning: skipped 1 of 3 image files\n" * 2
    with speaking(logging.WARNING):
        log.info("not shown")
    log.info("not shown either: the library alone prints nothing")
    assert capsys.readouterr() == ("", "")
    assert not logging.getLogger("keras_fastres").handlers


def test_the_progress_bar_is_keras_s_rewritten_in_place_and_ends_its_line(capsys):
    show = progress_bar("Decoding x")
    show(0, 4)
    show(4, 4)
    out = capsys.readouterr().out
    label, bar = out.split("\n", 1)
    assert label == "Decoding x:"
    shown = re.sub(r"\x1b\[[0-9;]*m", "", bar)  # Keras's colours
    assert shown.startswith("\r0/4 ") and "\r4/4 " in shown and "/image" in shown
    assert shown.endswith("\n") and shown.count("\n") == 1


def test_sigterm_passes_through_code_that_catches_every_exception(capsys):
    """SIGTERM raises wherever Python is, e.g. inside TensorFlow binding a tf.function's
    inputs, which turns any Exception into a TypeError ("Binding inputs to tf.function failed
    due to ``": a SIGTERM test failed so in CI). As a BaseException it gets through."""
    import os
    import time

    def careless():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except Exception as error:
            raise TypeError(f"Binding inputs to tf.function failed due to `{error}`") from None
    assert run_command(careless, stopped_hint="Run it again.") == 143
    assert capsys.readouterr().err == "\nTerminated (SIGTERM). Run it again.\n"


def test_a_stop_replaced_by_a_context_managers_error_or_lost_in_a_callback_still_stops(capsys):
    """What the 30-moment test of test_run.py found, each made to happen here: a SIGTERM raised
    inside a context manager whose exit then fails (TensorFlow's graph building asserts its
    stack), and one raised in a weakref callback, where Python ignores exceptions."""
    import contextlib
    import gc
    import os
    import weakref

    @contextlib.contextmanager
    def strict_stack():
        try:
            yield
        finally:  # its bookkeeping undone by the stop: the exit's own error replaces it
            raise AssertionError("self._control_dependencies_stack[-1] is controller")

    def building():
        with contextlib.ExitStack() as stack:
            stack.enter_context(strict_stack())
            os.kill(os.getpid(), signal.SIGTERM)
    assert run_command(building, stopped_hint="Run it again.") == 143
    assert capsys.readouterr().err.strip() == "Terminated (SIGTERM). Run it again."

    class Thing:
        pass

    def callback_then_work():
        thing = Thing()
        watch = weakref.ref(thing, lambda ref: os.kill(os.getpid(), signal.SIGTERM))  # noqa: F841
        del thing  # the callback runs, its Terminated is ignored, then sent again
        gc.collect()
        for _ in range(1000):  # the work the stop must reach
            time.sleep(0.01)
        raise AssertionError("the stop was lost")
    assert run_command(callback_then_work, stopped_hint="Run it again.") == 143
    err = capsys.readouterr().err
    assert err.strip() == "Terminated (SIGTERM). Run it again." and "Traceback" not in err
