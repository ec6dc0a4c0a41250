"""How the commands speak and end; the library itself only returns, logs and warns.

`run_command(body)` runs a command's work with:
    the library's log records (logger "keras_fastres", INFO) on stdout, one line each;
    its warnings (`errors.FastResWarning`) as one "warning: ..." line each on stderr;
    SIGTERM raising `errors.Terminated`, so that cleanup runs;
    one exit status per kind of error (`exit_status`), the error as one "error: ..." line.
"""

import contextlib
import logging
import sys
import warnings

from keras_fastres.errors import (
    DamagedFile,
    FastResWarning,
    Terminated,
    is_tensorflow_error,
    stop_on_sigterm,
    stopped_by,
    summary,
)

USAGE = 2  # a setting or argument that is wrong (argparse's own status too)
FAILED = 1  # work that failed or was refused


def exit_status(error: BaseException) -> int:
    """The exit status of a command stopped by `error`: 143 for SIGTERM, 130 for Ctrl-C, 2 for
    a wrong argument or setting (ValueError), 1 for anything that failed or was refused."""
    if isinstance(error, Terminated):
        return 143
    if isinstance(error, KeyboardInterrupt):
        return 130
    return USAGE if isinstance(error, ValueError) else FAILED


@contextlib.contextmanager
def speaking(level=logging.INFO):
    """The library's log records of `level` and above on stdout and its warnings on stderr,
    for the duration."""
    logger = logging.getLogger("keras_fastres")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    previous = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False  # once, here: not again through handlers others put on the root
    with warnings.catch_warnings():
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, FastResWarning):
                print(f"warning: {message}", file=sys.stderr, flush=True)
            else:
                shown(message, category, filename, lineno, file, line)
        warnings.showwarning = show
        warnings.simplefilter("always", FastResWarning)
        try:
            yield
        finally:
            logger.removeHandler(handler)
            logger.setLevel(previous[0])
            logger.propagate = previous[1]


ERRORS = (ValueError, RuntimeError, OSError, ImportError)  # and TensorFlow's


def run_command(body, stopped_hint="", advice=None, log_level=logging.INFO):
    """`body()`'s exit status (0 when it returns None), or the status of the error that
    stopped it (`exit_status`) after one line on stderr: "error: ..." for ERRORS and
    TensorFlow's errors (with `advice(error)` on a second line, when it gives one); for Ctrl-C
    and SIGTERM, what stopped it and `stopped_hint` (a string, or a function giving it as
    things stand when the command stops). Other exceptions are bugs and keep their
    traceback."""
    try:
        with speaking(log_level), stop_on_sigterm():
            return body() or 0
    except BaseException as error:
        stop = stopped_by(error)
        if stop is not None:
            what = "Terminated (SIGTERM)" if isinstance(stop, Terminated) else "Interrupted"
            hint = stopped_hint() if callable(stopped_hint) else stopped_hint
            print(f"\n{what}.{' ' + hint if hint else ''}", file=sys.stderr)
            return exit_status(stop)
        if not isinstance(error, Exception) or not (
                isinstance(error, ERRORS) or is_tensorflow_error(error)):
            raise
        prefix = "TensorFlow: " if is_tensorflow_error(error) else ""
        more = advice(error) if advice else ""
        print(f"error: {prefix}{summary(error)}" + (f"\n{more}" if more else ""),
              file=sys.stderr)
        return exit_status(error)


class Unreadable:
    """An `on_error(path, message)` for image files a command cannot read: each named on stderr
    as it is met, the rest of the work going on; `check(...)` then ends the command with one
    error (exit 1) when there were any."""

    def __init__(self):
        self.paths = []

    def __call__(self, path, message):
        print(f"error: {message}", file=sys.stderr)
        self.paths.append(path)

    def check(self, counted, done):
        """A `DamagedFile` saying "`counted` could not be read (the first five); the others are
        `done`" when any file could not be read."""
        if self.paths:
            raise DamagedFile(f"{counted} could not be read "
                              f"({', '.join(map(str, self.paths[:5]))}); the others are {done}.")


def progress_bar(label, unit="image"):
    """A `progress(done, total)` callable: `label` on a line, then Keras's own progress bar
    (the one `fit` draws) rewritten in place on stdout, for a terminal (elsewhere the library's
    start and end log lines say enough)."""
    import keras
    bar = None

    def show(done, total):
        nonlocal bar
        if bar is None:
            print(f"{label}:", flush=True)
            bar = keras.utils.Progbar(total, unit_name=unit)
        bar.update(done, finalize=done >= total)
    return show


def print_progress(message):
    """A one-line status on stderr: rewritten in place on a terminal, one line each elsewhere."""
    print(f"\r\033[K{message}" if sys.stderr.isatty() else message,
          end="" if sys.stderr.isatty() else "\n", file=sys.stderr, flush=True)
