"""Files and folders that appear only when complete: each is written into a hidden temporary
sibling named after its writer's process and renamed into place, so a reader never sees half of
one; what a killed writer leaves behind is removed by the next writer into the same folder."""

import contextlib
import os
import shutil
from pathlib import Path

INCOMPLETE = "incomplete"  # the word naming every temporary file or folder the package writes


def temporary_sibling(target):
    """The hidden sibling `target` is written into before it is renamed into place."""
    return target.parent / f".{target.name}.{INCOMPLETE}-{os.getpid()}"


def open_new(path, mode="w", **kwargs):
    """`path` opened as a new file for writing: whatever has its name (a leftover, or a
    symbolic link planted there to make this write another file) is removed first, and the
    open follows no link and takes no file created meanwhile (O_EXCL | O_NOFOLLOW)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a link itself, never what it points to
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    return os.fdopen(descriptor, mode, **kwargs)


@contextlib.contextmanager
def replacing(path, mode="w", **kwargs):
    """A new file (`open_new`) at `path`'s temporary sibling, renamed onto `path` when the block
    ends without an error (replacing a file, or a link planted there, never writing through
    it); the temporary is removed whatever happens."""
    temporary = temporary_sibling(Path(path))
    try:
        with open_new(temporary, mode, **kwargs) as file:
            yield file
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def remove_folder(folder):
    """Removes `folder` after renaming it to its hidden sibling in one step: a kill midway
    leaves a leftover that `remove_leftovers` removes, never part of `folder`."""
    away = temporary_sibling(Path(folder))
    shutil.rmtree(away, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        os.rename(folder, away)
    shutil.rmtree(away, ignore_errors=True)


def remove_leftovers(directory):
    """Removes the hidden temporaries that writers killed while writing left in `directory`
    (those of a process still running are its work in progress, and stay)."""
    for path in directory.glob(f".*.{INCOMPLETE}-*") if directory.is_dir() else ():
        pid = path.name.rsplit("-", 1)[1]
        if not pid.isdigit() or process_exists(int(pid)):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def process_exists(pid):
    """True while a process `pid` runs on this host (another user's included)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True
