"""The decode-once cache of image folders: each folder's decoded, resized images of both splits
with their labels, once, for every later run with the same files and settings.

    <cache dir>/folders/<key>/images.npy      uint8 (N, H, W, 3), memory-mappable: the
                                              training images, then the test images
                              labels.npy      int64 (N,)
                              manifest.json   what it holds: source, classes, the two splits'
                                              counts, skipped files

The key is a digest of the loader's version, the folder, the image size, the resize mode, the
pixel limit and each file's path, label, size and modification time: touching, adding or
removing one file, or changing a setting, is another key (a miss), never a stale entry. An
entry is written in a hidden folder beside it and renamed into place when complete, so a run
killed while decoding leaves no entry; the next run in the same cache removes its leftovers.
Entries are never deleted: remove the cache folder to free the space.
"""

import hashlib
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path

import numpy as np

from keras_fastres.data.splits import Split
from keras_fastres.utils.files import INCOMPLETE, process_exists

IMAGES, LABELS, MANIFEST = "images.npy", "labels.npy", "manifest.json"
PARTIAL = f".{INCOMPLETE}-"  # an entry being written: .incomplete-<host>-<pid>-<random>


def default_cache_dir():
    """$KERAS_FASTRES_CACHE, else $XDG_CACHE_HOME/keras_fastres, else ~/.cache/keras_fastres."""
    if os.environ.get("KERAS_FASTRES_CACHE"):
        return Path(os.environ["KERAS_FASTRES_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "keras_fastres"


def entry_key(settings, splits):
    """The digest naming a cache entry: `settings` (a JSON-able dict) and, for each split's
    (path, label) files, each file's path, label, size and modification time."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for name, files in zip(("train", "test"), splits):
        digest.update(name.encode())
        for path, label in files:
            try:
                status = os.stat(path)
                stamp = f"{status.st_size}\0{status.st_mtime_ns}"
            except OSError:  # gone since it was listed: the decoder skips it
                stamp = "missing"
            digest.update(f"\0{path}\0{label}\0{stamp}".encode())
    return digest.hexdigest()[:32]


def read_entry(folder, in_memory):
    """(manifest, {"train": Split, "test": Split}) of a complete entry, images memory-mapped
    unless `in_memory`; None when `folder` is no entry or a damaged one (then removed)."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        images = np.load(folder / IMAGES, mmap_mode=None if in_memory else "r")
        labels = np.load(folder / LABELS)
        train = manifest["train"]
        if (images.dtype != np.uint8 or images.ndim != 4 or labels.shape != images.shape[:1]
                or len(labels) != train + manifest["test"]):
            raise ValueError("the arrays do not match the manifest")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, EOFError):
        shutil.rmtree(folder, ignore_errors=True)  # damaged: decoded again
        return None
    return manifest, {"train": Split(images[:train], labels[:train]),
                      "test": Split(images[train:], labels[train:])}


def new_entry(parent):
    """A hidden folder in `parent` to write an entry into (see `publish`), after removing
    the partial entries of this host's processes that no longer run."""
    parent.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    for leftover in parent.glob(f"{PARTIAL}{host}-*"):
        pid = leftover.name[len(f"{PARTIAL}{host}-"):].split("-")[0]
        if pid.isdigit() and not process_exists(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{PARTIAL}{host}-{os.getpid()}-", dir=parent))


def publish(partial, folder, manifest):
    """Writes the manifest last and renames `partial` to `folder`; when another process
    published the same entry first, `partial` is removed and theirs kept."""
    (partial / MANIFEST).write_text(json.dumps(manifest, indent=1))
    try:
        os.rename(partial, folder)
    except OSError:
        if not (folder / MANIFEST).is_file():
            raise
        shutil.rmtree(partial, ignore_errors=True)
