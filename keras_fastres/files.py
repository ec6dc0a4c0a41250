"""Files and folders that appear only when complete: each is written into a hidden temporary
sibling named after its writer's process and renamed into place, so a reader never sees half of
one; what a killed writer leaves behind is removed by the next writer into the same folder."""

import os
import shutil


def temporary_sibling(target):
    """The hidden sibling `target` is written into before it is renamed into place."""
    return target.parent / f".{target.name}.incomplete-{os.getpid()}"


def remove_leftovers(directory):
    """Removes the hidden temporaries that writers killed while writing left in `directory`
    (those of a process still running are its work in progress, and stay)."""
    for path in directory.glob(".*.incomplete-*") if directory.is_dir() else ():
        pid = path.name.rsplit("-", 1)[1]
        if not pid.isdigit() or _process_exists(int(pid)):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _process_exists(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True
