"""The decode-once cache of image folders: each folder's decoded, resized images of both splits
with their labels, once, for every later run with the same files and settings.

    <cache dir>/folders/<key>/images.npy      uint8 (N, H, W, 3), memory-mappable: the
                                              training images, then the test images
                              labels.npy      int64 (N,)
                              manifest.json   what it holds: source, classes, the two splits'
                                              counts, skipped files; its schema version and
                                              the SHA-256 of the two array files

The key is a digest of the loader's version, the folder, the image size, the resize mode, the
pixel limit and each file's path, label, size and modification time: touching, adding or
removing one file, or changing a setting, is another key (a miss), never a stale entry. An
entry is written in a hidden folder beside it and renamed into place when complete, so a run
killed while decoding leaves no entry; the next run in the same cache removes its leftovers.
Entries are never deleted: remove the cache folder to free the space.

An entry is input, not truth (a cache folder is shared, copied, synced, edited, on disks that
fill): every read checks the manifest's keys, types and schema, the arrays' shapes and dtypes
against it, every label against the classes, and both files' digests. An entry that fails is
named in one warning with the reason, removed, and decoded again. The key does not see a file
whose content changed while its size and modification time stayed the same (as make and rsync
do not); remove the entry (its folder, named by every run) to decode such a folder again.
"""

import hashlib
import json
import os
import shutil
import socket
import tempfile
import warnings
from pathlib import Path

import numpy as np

from keras_fastres.data.splits import Split
from keras_fastres.errors import FastResWarning
from keras_fastres.utils.files import INCOMPLETE, process_exists

IMAGES, LABELS, MANIFEST = "images.npy", "labels.npy", "manifest.json"
PARTIAL = f".{INCOMPLETE}-"  # an entry being written: .incomplete-<host>-<pid>-<random>
SCHEMA = 3  # the manifest's layout: 3 added "schema" and "digests"
MANIFEST_TYPES = {"schema": int, "version": int, "source": str, "image_size": list,
                  "resize": str, "class_names": list, "train": int, "test": int, "skipped": list,
                  "far_aspect": int, "far_smaller": int, "digests": dict}


class Damaged(ValueError):
    """A cache entry that fails a check: the reason."""


def file_digest(path):
    """The SHA-256 (hex) of a file's bytes, read a megabyte at a time."""
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


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
    unless `in_memory`; None when there is no entry, or a damaged one: then a FastResWarning
    names it and the reason, and it is removed (to be decoded again)."""
    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        return None
    try:
        if not folder.is_dir():
            raise Damaged("it is a file, not a folder")
        return _checked(folder, in_memory)
    except (Damaged, OSError, ValueError, EOFError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        warnings.warn(f"the cache entry {folder} is damaged ({reason}): decoding the folder "
                      f"again", FastResWarning, stacklevel=3)
        remove_entry(folder)
        return None


def _checked(folder, in_memory):
    """read_entry's entry, every check passed, or Damaged saying which failed."""
    if not (folder / MANIFEST).is_file():
        raise Damaged(f"no {MANIFEST}")
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (ValueError, UnicodeDecodeError):
        raise Damaged(f"{MANIFEST} is not JSON") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise Damaged(f"{MANIFEST} is not of schema {SCHEMA}")
    if set(manifest) != set(MANIFEST_TYPES):
        wrong = sorted(set(manifest) ^ set(MANIFEST_TYPES))
        raise Damaged(f"{MANIFEST} has missing or extra keys: {', '.join(wrong)}")
    for key, kind in MANIFEST_TYPES.items():
        if not isinstance(manifest[key], kind) or isinstance(manifest[key], bool):
            raise Damaged(f"{MANIFEST}'s {key} is not a {kind.__name__}")
    names, skipped = manifest["class_names"], manifest["skipped"]
    if (len(manifest["image_size"]) != 2 or not all(isinstance(n, str) for n in names)
            or min(manifest["train"], manifest["test"]) < 0
            or not all(isinstance(item, list) and len(item) == 2
                       and all(isinstance(part, str) for part in item) for item in skipped)):
        raise Damaged(f"{MANIFEST} holds values of the wrong kind")
    for name in (IMAGES, LABELS):
        if manifest["digests"].get(name) != file_digest(folder / name):
            raise Damaged(f"{name} is not the file that was written (its SHA-256 differs)")
    images = np.load(folder / IMAGES, mmap_mode=None if in_memory else "r")
    labels = np.load(folder / LABELS)
    train, count = manifest["train"], manifest["train"] + manifest["test"]
    if (images.dtype != np.uint8 or images.shape != (count, *manifest["image_size"], 3)
            or labels.dtype != np.int64 or labels.shape != (count,)):
        raise Damaged("the arrays do not match the manifest")
    if count and (labels.min() < 0 or labels.max() >= len(names)):
        raise Damaged(f"a label is outside the {len(names)} classes")
    return manifest, {"train": Split(images[:train], labels[:train]),
                      "test": Split(images[train:], labels[train:])}


def remove_entry(folder):
    """Removes an entry (a folder, or what stands in its place)."""
    if folder.is_dir() and not folder.is_symlink():
        shutil.rmtree(folder, ignore_errors=True)
    else:
        folder.unlink(missing_ok=True)


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


def allocate(path, shape):
    """A new uint8 .npy file of `shape`, its blocks reserved on the disk: a disk that fills
    later cannot fail the memory-mapped writes into it (a SIGBUS, in a decoding worker), and
    one without room fails here, with ENOSPC."""
    np.lib.format.open_memmap(path, "w+", np.uint8, shape)
    with open(path, "r+b") as file:
        os.posix_fallocate(file.fileno(), 0, os.fstat(file.fileno()).st_size)


def not_a_folder(path):
    """The nearest of `path` and its parents that exists and is not a folder, or None."""
    for where in (Path(path), *Path(path).parents):
        if where.exists():
            return None if where.is_dir() else where
    return None


def publish(partial, folder, manifest):
    """Writes the manifest (with its schema and the arrays' digests) last and renames `partial`
    to `folder`; when another process published the same entry first, `partial` is removed and
    theirs kept."""
    manifest = {"schema": SCHEMA, **manifest,
                "digests": {name: file_digest(partial / name) for name in (IMAGES, LABELS)}}
    (partial / MANIFEST).write_text(json.dumps(manifest, indent=1))
    try:
        os.rename(partial, folder)
    except OSError:
        if not (folder / MANIFEST).is_file():
            raise
        shutil.rmtree(partial, ignore_errors=True)
