"""One process at a time in a folder: an advisory lock on `<folder>/.lock`.

The operating system releases an flock when its process ends, so a killed holder leaves no
stale lock. Two rules keep it exclusive under races: a process that is refused never touches
the lock file, and a process that got the lock checks that the file it locked is still the one
at `.lock` (a holder that created the folder removes it, lock file included, when it ends with
nothing written; a process that opened the old file meanwhile must not count as a holder).
"""

import contextlib
import fcntl
import os


class Busy(RuntimeError):
    """Another process holds the folder's lock."""


@contextlib.contextmanager
def folder_lock(folder, busy_message):
    """Holds `folder/.lock` (creating the folder) for the duration, writing this process's PID
    into it; raises Busy with `busy_message.format(pid=<the holder's PID>)` at once when
    another process holds it. A folder this call created and left holding only the lock is
    removed at the end."""
    while True:
        created = not folder.exists()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / ".lock"
        try:
            file = open(path, "a+")
        except FileNotFoundError:  # the folder went between mkdir and open: start again
            continue
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip() or "unknown"
            file.close()
            raise Busy(busy_message.format(pid=holder)) from None
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(file.fileno()).st_ino:
            break
        file.close()  # a holder removed this file after we opened it: lock the new one
    try:
        file.seek(0)
        file.truncate()
        file.write(f"{os.getpid()}\n")
        file.flush()
        yield
    finally:
        # Removed while still held, so that no one can lock the file being removed unnoticed.
        if created and [p.name for p in folder.iterdir()] == [".lock"]:
            path.unlink()
            with contextlib.suppress(OSError):  # something appeared meanwhile: keep it
                folder.rmdir()
        file.close()
