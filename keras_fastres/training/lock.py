"""One process at a time in a folder: an advisory lock on `<folder>/.lock`.

The operating system releases an flock when its process ends, so a killed holder leaves no
stale lock. Two rules keep it exclusive under races: a process that is refused never touches
the lock file, and a process that got the lock checks that the file it locked is still the one
at `.lock` (the last holder removes a folder the contest created, lock file included, when it
ends with nothing written; a process that opened the old file meanwhile must not count as a
holder). Never through a symbolic link planted at `.lock`.
"""

import contextlib
import fcntl
import os

from keras_fastres.utils import files

CREATED = ".lock-created"  # beside .lock while a contest for the lock has created the folder


class Busy(RuntimeError):
    """Another process holds the folder's lock."""


class LockRefused(RuntimeError):
    """The folder's lock file is not a plain file this process may lock (a symbolic link)."""


@contextlib.contextmanager
def folder_lock(folder, busy_message):
    """Holds `folder/.lock` (creating the folder) for the duration, writing this process's PID
    into it; raises Busy with `busy_message.format(pid=<the holder's PID>)` at once when
    another process holds it. A folder that a contender for the lock created (the one whose
    mkdir succeeded marks it with CREATED before it tries the lock) and that holds nothing but
    the lock at the end is removed by whichever contender held it last: the creator itself
    may have been refused."""
    # A holder killed between renaming a folder away and deleting it left it hidden here.
    files.remove_leftovers(folder.parent)
    while True:
        try:
            folder.mkdir(parents=True)
        except FileExistsError:
            pass
        else:
            try:
                (folder / CREATED).touch()
            except FileNotFoundError:  # removed by a holder's end meanwhile: start again
                continue
        path = folder / ".lock"
        try:
            # Never through a link planted at .lock: it would truncate the file it points to.
            file = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW,
                                     0o644), "a+")
        except FileNotFoundError:  # the folder went between mkdir and open: start again
            continue
        except OSError as error:
            if not path.is_symlink():
                raise
            raise LockRefused(f"{path} is a symbolic link (to {os.readlink(path)}); a lock is "
                              f"never taken through one. Remove the link.") from error
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
        names = {p.name for p in folder.iterdir()}
        if names == {".lock", CREATED}:
            # Away in one rename: a contender opening .lock from now on finds no folder and
            # starts again (removing the files one by one, a new .lock could appear between).
            files.remove_folder(folder)
        elif CREATED in names:  # the folder holds work now: it stays, as any folder would
            (folder / CREATED).unlink(missing_ok=True)
        file.close()
