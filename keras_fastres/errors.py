"""What the package raises and warns, and an exception said in one line.

The kinds, by base class (commands/output.py turns them into exit statuses):
    ValueError      a setting or argument that is wrong (exit status 2 in the commands)
    RuntimeError    work that failed or was refused: a damaged file, a busy or finished run,
                    data that cannot be had, a loss that became NaN (exit status 1)
    OSError         a file that cannot be read or written (exit status 1)
    Terminated      SIGTERM (exit status 143; a BaseException, as KeyboardInterrupt)

This module imports only the standard library.
"""

import _thread
import contextlib
import os
import re
import signal
import sys


class FastResWarning(UserWarning):
    """Something the package worked around and the user should know: files skipped, a damaged
    backup passed over, history rows written again. The commands show each as one
    "warning: ..." line."""


class DamagedFile(RuntimeError):
    """A file the work needs is there but cannot be used (truncated, damaged)."""


class Terminated(BaseException):
    """The process received SIGTERM (a scheduler preempting it, `kill`): raised in the main
    thread as soon as Python runs again, e.g. after the current training step. A
    BaseException, as KeyboardInterrupt is: raised wherever Python happens to be, it must not
    be caught by `except Exception` on the way (TensorFlow's tf.function binding turned it into
    a TypeError, "Binding inputs to tf.function failed due to ``")."""


@contextlib.contextmanager
def stop_on_sigterm():
    """SIGTERM raises Terminated for the duration, so that cleanup runs. Every file the package
    writes appears only when complete, so stopping anywhere loses at most the unfinished
    part. A stop raised where Python ignores exceptions (a finalizer, a weakref callback, which
    run between any two steps of the program) is not lost: its signal is sent again, to stop
    the work where it can; see `stopped_by` for one that another exception took the place of."""
    def terminate(signum, frame):
        raise Terminated

    def unraisable(info):
        stop = info.exc_value
        if isinstance(stop, (Terminated, KeyboardInterrupt)):
            # From a new thread, not waited for: raised here, it would be lost again.
            number = signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT
            _thread.start_new_thread(os.kill, (os.getpid(), number))
        else:
            hook(info)
    previous, hook = signal.signal(signal.SIGTERM, terminate), sys.unraisablehook
    sys.unraisablehook = unraisable
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        sys.unraisablehook = hook


def stopped_by(error: BaseException) -> BaseException | None:
    """The Terminated or KeyboardInterrupt that `error` is, or was raised while handling (its
    context or cause, followed back), else None. A stop raised inside a library's context
    manager can be replaced by the error of its exit (TensorFlow's graph building: "assert
    self._control_dependencies_stack[-1] is controller"): the stop is what happened."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, (Terminated, KeyboardInterrupt)):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    return None


def tensorflow_reason(message: str) -> str:
    """The line of a TensorFlow error message that says what went wrong. A graph error begins
    "Graph execution error:", then where it was detected and a stack, then the reason (with
    several, "N root error(s) found." and each as "(i) KIND: reason"), then the node's name in
    [[...]]; other errors say it first, an eager op's error between the function's
    {{function_node ...}} name and [Op:NAME], a file's as "PATH; reason"."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if lines and lines[0] == "Graph execution error:":
        lines = [line for line in lines[1:]
                 if not line.startswith(("Detected at", "File ", "<", "[["))
                 and not re.fullmatch(r"\d+ root error\(s\) found\.", line)]
    if not lines:
        return "no detail"
    reason = re.sub(r"^\(\d+\) [A-Z_]+:\s*", "", lines[0]).split(" [[")[0]
    reason = re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", reason)
    reason = re.sub(r"\s*\[Op:[^\]]*\].*$", "", reason)
    path, separator, rest = reason.partition("; ")
    if separator and path.startswith("/") and " " not in path:  # a temporary file's name
        reason = rest
    return reason or "no detail"


def is_tensorflow_error(error: BaseException) -> bool:
    """True for TensorFlow's OpErrors (checked without importing TensorFlow)."""
    return type(error).__module__.startswith("tensorflow") and isinstance(
        getattr(error, "message", None), str)


def summary(error: BaseException) -> str:
    """`error` in one line: an OSError's reason (strerror, with the file it names), a
    TensorFlow error's reason, or the first line of the message; the exception's type name
    when it has no message."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror + (f": {error.filename}" if error.filename else "")
    if is_tensorflow_error(error):
        return tensorflow_reason(error.message)  # type: ignore[attr-defined]
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
