"""A folder of images in class subfolders as a data set (`fastres-train --data DIR`,
`keras_fastres.load_image_folder`):

    DIR/train/<class>/<image>, DIR/test/<class>/<image>   the two splits as given
    DIR/<class>/<image>                                   a stratified hold-out is the test split

Class names are the folder names in sorted order (label i is the i-th). Every still format
Pillow reads is loaded (PNG, JPEG, WebP, TIFF, BMP, GIF's first frame...), at any depth below
its class folder, linked folders followed once; other files are ignored and named in a warning.
Each image is made upright (EXIF), RGB, and resized to the asked size by the resize mode
(data/decoding.py). A file that cannot be decoded is skipped and named in one warning; so is
one whose header declares more than `MAX_PIXELS` pixels (a decompression bomb), undecoded.

The folder is decoded once, by one process per CPU, into the cache (data/cache.py); later runs
read the cache. A set larger than `max_memory` stays memory-mapped in the cache, and training
reads it a batch at a time.
"""

import errno
import hashlib
import logging
import os
import shutil
import time
import unicodedata
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from keras_fastres.data import cache, decoding
from keras_fastres.data.decoding import (
    MAX_PIXELS,
    check_resize,
    decode_image,
    image_size_pair,
    image_suffixes,
)
from keras_fastres.data.splits import (
    DataUnavailableError,
    ImageData,
    check_validation_fraction,
    holdout,
)
from keras_fastres.errors import FastResWarning

log = logging.getLogger(__name__)

__all__ = ["MAX_PIXELS", "decode_image", "load_image_folder", "list_images", "image_size_pair"]

SHOWN_SKIPPED = 5  # files named in a warning
LOADER_VERSION = 2  # a new version (other pixels for the same files) misses every cache
VALIDATION_FRACTION = 0.1  # the default hold-out of class folders
PROCESS_FILES = 1000  # fewer files are decoded in this process: a worker's start costs more


def _class_folders(root):
    """The class folders of `root` (sorted; hidden ones skipped), each name checked to be one
    line by every Unicode definition and distinct from the others after NFC normalisation,
    before any image is read."""
    try:
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as error:
        raise DataUnavailableError(f"Cannot read the folder {root} ({error.strerror}).") from None
    seen: dict[str, Path] = {}
    for folder in folders:
        name = folder.name
        if name.splitlines() != [name]:  # \n, \r, form feed, U+2028...: not one line
            raise DataUnavailableError(
                f"The class folder {folder!r} has a line break in its name ({name!r}); class "
                f"names travel one per line to the exports: rename it.")
        normal = unicodedata.normalize("NFC", name)
        if normal in seen:
            raise DataUnavailableError(
                f"The class folders {seen[normal]!r} and {name!r} in {root} are the same name "
                f"written with different Unicode characters (NFC and NFD forms), which print "
                f"alike as two classes: merge them.")
        seen[normal] = name
    return folders


def _images_below(folder, seen, ignored, unreadable):
    """The image files (paths as strings: a million Path objects cost seconds) at any depth
    below `folder`, sorted, following linked folders once (`seen`: the real paths of the
    folders already read, so a link loop ends). Regular files only: other files with an image
    name (a FIFO would block the decoder) and folders that cannot be read go to `unreadable`,
    the other files (not hidden) to `ignored`."""
    found, suffixes = [], set(image_suffixes())

    def cannot_read(error):
        unreadable.append(f"{error.filename} ({error.strerror})")
    for parent, folders, files in os.walk(folder, followlinks=True, onerror=cannot_read):
        real = os.path.realpath(parent)
        if real in seen:
            folders[:] = []
            continue
        seen.add(real)
        folders[:] = sorted(f for f in folders if not f.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = os.path.join(parent, name)
            if os.path.splitext(name)[1].lower() not in suffixes:
                ignored.append(path)
            elif os.path.isfile(path):
                found.append(path)
            else:
                unreadable.append(f"{path} (not a regular file)")
    return found


def list_images(directory):
    """The class names, the (path, label) lists of the train and test splits (test None when
    the folder has no test/ folder), the files that are not images Pillow reads and what could
    not be read (folders, files that are not regular files); or a DataUnavailableError saying
    what is wrong."""
    root = Path(directory).expanduser()
    if not root.is_dir():
        raise DataUnavailableError(f"{root} is not a folder; --data needs a folder of class "
                                   f"folders (DIR/<class>/<images>, or DIR/train/<class>/... and "
                                   f"DIR/test/<class>/...).")
    train_root, test_root = root / "train", root / "test"
    folders = _class_folders(root)
    others = [p.name for p in folders if p.name not in ("train", "test")]
    if (train_root.is_dir() or test_root.is_dir()) and others:
        raise DataUnavailableError(
            f"{root} holds a {'train' if train_root.is_dir() else 'test'}/ folder beside other "
            f"folders ({', '.join(others[:3])}{'...' if len(others) > 3 else ''}): is it the "
            f"train/test layout or a class named so? Lay it out as {root}/train/<class>/ and "
            f"{root}/test/<class>/ only, or as class folders only (rename a class called train "
            f"or test, e.g. train_).")
    if not train_root.is_dir():
        if test_root.is_dir():
            raise DataUnavailableError(f"{root} has a test/ folder but no train/ folder; put the "
                                       f"training images in {train_root}/<class>/.")
        train_root, test_root = root, None  # type: ignore[assignment]
    elif not test_root.is_dir():
        test_root = None  # type: ignore[assignment]
    classes = folders if train_root == root else _class_folders(train_root)
    if not classes:
        raise DataUnavailableError(
            f"{train_root} holds no class folders: put each class's images in a folder named "
            f"after it ({train_root}/<class>/<images>).")
    names = tuple(folder.name for folder in classes)
    if len(names) == 1:
        raise DataUnavailableError(f"{train_root} has a single class folder ({names[0]}); a "
                                   f"classifier needs two or more.")
    seen: set[Path] = set()
    ignored: list[Path] = []
    unreadable: list[str] = []
    train = [(path, label) for label, folder in enumerate(classes)
             for path in _images_below(folder, seen, ignored, unreadable)]
    counts = np.bincount([label for _, label in train], minlength=len(names))
    if not counts.any():
        raise DataUnavailableError(
            f"The class folders of {train_root} hold no image files Pillow reads (PNG, JPEG, "
            f"WebP, TIFF, BMP, GIF...)" + (f"; they hold {len(ignored)} other files, e.g. "
                                           f"{ignored[0]}" if ignored else "") + ".")
    if not counts.all():
        empty = [names[i] for i in np.flatnonzero(counts == 0)]
        raise DataUnavailableError(
            f"Class {empty[0]!r} ({train_root / empty[0]}) has no training images"
            + (f" (nor have {', '.join(empty[1:4])}{'...' if len(empty) > 4 else ''})"
               if len(empty) > 1 else "") + "; every class needs some."
            + (f" Could not read: {'; '.join(unreadable[:3])}." if unreadable else ""))
    if test_root is None:
        return names, train, None, ignored, unreadable
    test = []
    for folder in _class_folders(test_root):
        if folder.name not in names:
            raise DataUnavailableError(
                f"Test class {folder.name!r} ({folder}) is not a training class; the training "
                f"classes are the folders of {train_root}: {', '.join(names[:10])}"
                f"{'...' if len(names) > 10 else ''}.")
        test += [(path, names.index(folder.name))
                 for path in _images_below(folder, seen, ignored, unreadable)]
    if not test:
        raise DataUnavailableError(f"{test_root} holds no images in class folders; remove it to "
                                   f"hold out part of the training images instead.")
    return names, train, test, ignored, unreadable


def default_max_memory():
    """Half of the machine's memory, in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def _size(count):
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"


def files_digest(root, train, test):
    """A fingerprint of which files make up each split (a run resumes only on the same)."""
    digest = hashlib.sha256()
    prefix = len(str(root).rstrip(os.sep)) + 1  # the listing's paths all start with the root's
    for split, files in (("train", train), ("test", test)):
        digest.update(split.encode())
        for path, label in files:
            digest.update(f"\0{str(path)[prefix:]}\0{label}".encode())
    return digest.hexdigest()[:16]


@dataclass
class FolderDetails:
    """What loading a folder found, beyond the images (`ImageData.details` of a folder)."""

    cache: str  # "hit" or "miss"
    cache_entry: str  # the entry's folder
    resize: str
    skipped: list = field(default_factory=list)  # [(path, reason)] of files not decoded
    ignored: list = field(default_factory=list)  # files of types Pillow does not read
    far_aspect: int = 0  # images whose aspect is 2x or more off the target's
    far_smaller: int = 0  # images with a side under half the target's
    seconds: float = 0.0  # listing, and decoding on a miss
    unreadable: list = field(default_factory=list)  # folders and non-regular files not read


def load_image_folder(directory: str | os.PathLike, image_size: int | Sequence[int] = 32,
                      validation_fraction: float = 0.1, seed: int = 0,
                      max_memory: int | None = None, max_pixels: int = MAX_PIXELS,
                      progress: Callable[[int, int], None] | None = None,
                      resize: str = "stretch", cache_dir: str | os.PathLike | None = None,
                      workers: int | None = None) -> ImageData:
    """Loads a folder of class folders, as `load_cifar` loads CIFAR, through the decode-once
    cache (data/cache.py): the first load decodes every file into the cache, later loads of
    the same files with the same settings read it without decoding.

    Args:
        directory: `DIR/train/<class>/...` and `DIR/test/<class>/...`, or `DIR/<class>/...`
            alone (then a stratified hold-out is the test split). Images at any depth below
            a class folder, linked folders followed (once), in any still format Pillow reads.
        image_size: an int (square) or (height, width): every image is resized to it.
        validation_fraction: with class folders only, the part of each class held out as the
            test split (drawn with `seed`; the same for every run of the same files).
        seed: the hold-out's seed.
        max_memory: bytes the decoded images may take in memory (N * H * W * 3); default half
            of the machine's memory. A larger set is returned memory-mapped from the cache
            (`ImageData.from_disk`), which training reads a batch at a time.
        max_pixels: images whose header declares more pixels are skipped, not decoded.
        progress: None, or a callable `progress(done, total)` told how many files are
            decoded, e.g. to draw a bar. The start and the end are logged (INFO, logger
            keras_fastres.data.folder); skipped files are a `FastResWarning`.
        resize: "stretch" (default), "crop" (the centred window of the target's aspect) or
            "pad" (letterboxed on zeros); see data/decoding.py.
        cache_dir: where decoded folders are kept; default `cache.default_cache_dir()`.
        workers: decoding processes; None: one per CPU for 1,000 files or more, else this
            process; 0: this process.

    Returns:
        `ImageData`: `train` and `test` splits of uint8 images `(N, H, W, 3)` and int64 labels
        `(N,)`, `class_names` (the folder names, sorted), `skipped` (the paths of the files
        skipped), `files_digest` (which files make up each split) and `details`
        (`FolderDetails`: cache hit or miss, skipped and ignored files, odd shapes).

    Raises:
        DataUnavailableError: one line saying what is wrong with the folder and what to do.
    """
    height, width = image_size_pair(image_size)
    check_validation_fraction(validation_fraction)
    check_resize(resize)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 0):
        raise ValueError(f"workers must be a whole number >= 0 (0: decode in this process), "
                         f"got {workers!r}.")
    start = time.perf_counter()
    root = Path(directory).expanduser()
    names, train, test, ignored, unreadable = list_images(root)
    if test is not None and validation_fraction != VALIDATION_FRACTION:
        warnings.warn(f"validation_fraction {validation_fraction} holds out part of class "
                      f"folders; {root} has a test/ folder, which is the test split as it is "
                      f"(the setting is ignored)", FastResWarning, stacklevel=2)
    if test is None:
        train_index, test_index = holdout(np.array([label for _, label in train]),
                                          validation_fraction, seed)
        train, test = [train[i] for i in train_index], [train[i] for i in test_index]
    max_memory = default_max_memory() if max_memory is None else max_memory
    parent = Path(cache_dir).expanduser() if cache_dir else cache.default_cache_dir()
    parent = parent / "folders"
    key = cache.entry_key({"loader": LOADER_VERSION, "root": str(root.resolve()),
                           "size": [height, width], "resize": resize,
                           "max_pixels": max_pixels, "names": list(names)}, (train, test))
    entry = parent / key
    fits = (len(train) + len(test)) * height * width * 3 <= max_memory
    found = cache.read_entry(entry, in_memory=fits)
    if found is None:
        log.info("Decoding %s: %s files into the cache %s ...", root,
                 f"{len(train) + len(test):,}", entry)
        _fill_entry(parent, entry, root, names, (train, test), (height, width), resize,
                    max_pixels, workers, progress)
        found = cache.read_entry(entry, in_memory=fits)
        if found is None:
            raise DataUnavailableError(f"The cache entry {entry} just written cannot be read "
                                       f"back; pass another --cache-dir.")
        state = "miss"
    else:
        state = "hit"
        log.info("Read %s from the cache %s (decoded before: no file changed).", root, entry)
    manifest, arrays = found
    if not fits and max_memory:  # (0: the cache only is asked for)
        log.info("%s: %s decoded, more than the memory budget of %s (--max-memory): training "
                 "reads it from the memory-mapped cache, a batch at a time.", root,
                 _size((len(train) + len(test)) * height * width * 3), _size(max_memory))
    details = FolderDetails(state, str(entry), resize,
                            [tuple(item) for item in manifest["skipped"]],
                            [str(path) for path in ignored], manifest["far_aspect"],
                            manifest["far_smaller"], time.perf_counter() - start, unreadable)
    _warn(details, len(train) + len(test))
    data = ImageData(f"folder:{root}", arrays["train"], arrays["test"],
                     tuple(names), skipped=[path for path, _ in details.skipped],
                     files_digest=files_digest(root, train, test), details=details)
    missing = sorted(set(range(len(names))) - set(np.unique(data.train.labels).tolist()))
    if missing:  # every training image of a class could not be decoded
        raise DataUnavailableError(f"Class {names[missing[0]]!r} has no training image that "
                                   f"could be decoded; every class needs some.")
    if not len(data.test.labels):
        raise DataUnavailableError(
            f"{root} leaves no test image (every class has a single image, or no test image "
            f"could be decoded); add images, or a test/ folder beside train/.")
    return data


def _fill_entry(parent, entry, root, names, splits, size, resize, max_pixels, workers,
                progress):
    """Decodes both splits into a new cache entry and publishes it (cache.publish)."""
    total = sum(len(files) for files in splits)
    needed = total * size[0] * size[1] * 3
    if blocking := cache.not_a_folder(parent):
        raise DataUnavailableError(f"The cache dir cannot be made: {blocking} is a file, not a "
                                   f"folder; pass a --cache-dir that is a folder.")
    try:
        partial = cache.new_entry(parent)
    except OSError as error:
        raise DataUnavailableError(f"Cannot write the decoded images to the cache {parent} "
                                   f"({error.strerror}); pass a writable --cache-dir.") from None
    try:
        free = shutil.disk_usage(partial).free
        if needed > free:
            raise DataUnavailableError(
                f"The decoded images take {_size(needed)} and the cache {parent} has "
                f"{_size(free)} free; pass a --cache-dir with room, or a smaller --image-size.")
        if workers is None:
            workers = (os.cpu_count() or 1) if total >= PROCESS_FILES else 0
        show = progress or (lambda done, total: None)
        start = time.perf_counter()
        files = [*splits[0], *splits[1]]  # one array: the training rows, then the test rows
        output = partial / cache.IMAGES
        cache.allocate(output, (total, *size, 3))
        with warnings.catch_warnings():  # Pillow's own bomb warning: such files are skipped
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            skipped, wide, small = decoding.decode_files(
                [path for path, _ in files], output, max_pixels, resize, workers,
                lambda done: show(done, total))
        labels = np.array([label for _, label in files], np.int64)
        keep = np.ones(total, bool)
        keep[[row for row, _ in skipped]] = False
        if skipped:
            _keep_rows(output, keep)
        np.save(partial / cache.LABELS, labels[keep])
        manifest = {"version": LOADER_VERSION, "source": str(root), "image_size": list(size),
                    "resize": resize, "class_names": list(names),
                    "train": int(keep[:len(splits[0])].sum()),
                    "test": int(keep[len(splits[0]):].sum()),
                    "skipped": [(str(files[row][0]), reason) for row, reason in skipped],
                    "far_aspect": wide, "far_smaller": small}
        log.info("Decoding %s: done in %.1f s", root, time.perf_counter() - start)
        cache.publish(partial, entry, manifest)
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        raise DataUnavailableError(
            f"The disk of the cache {parent} filled while the decoded images were written "
            f"({_size(needed)} needed, {_size(shutil.disk_usage(parent).free)} free now); pass a "
            f"--cache-dir with room, or a smaller --image-size.") from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # gone when published


def _keep_rows(output, keep, chunk=4096):
    """Rewrites the .npy file `output` with only the rows where `keep` is true, a chunk of
    rows in memory at a time."""
    images = np.load(output, mmap_mode="r")
    kept_file = output.with_suffix(".kept.npy")
    cache.allocate(kept_file, (int(keep.sum()), *images.shape[1:]))
    kept = np.load(kept_file, mmap_mode="r+")
    rows = np.flatnonzero(keep)
    for first in range(0, len(rows), chunk):
        kept[first:first + chunk] = images[rows[first:first + chunk]]
    kept.flush()
    del images, kept
    os.replace(kept_file, output)


def _warn(details, total):
    """One FastResWarning for the files that could not be decoded, one for those of types
    Pillow does not read."""
    if details.skipped:
        shown = "; ".join(f"{path} ({reason})" for path, reason in
                          details.skipped[:SHOWN_SKIPPED])
        warnings.warn(f"skipped {len(details.skipped)} of {total} image files that could not be "
                      f"used: {shown}{'; ...' if len(details.skipped) > SHOWN_SKIPPED else ''}",
                      FastResWarning, stacklevel=3)
    if details.unreadable:
        warnings.warn(f"could not read {len(details.unreadable)} folders or files: "
                      f"{'; '.join(details.unreadable[:SHOWN_SKIPPED])}"
                      f"{'; ...' if len(details.unreadable) > SHOWN_SKIPPED else ''}",
                      FastResWarning, stacklevel=3)
    if details.ignored:
        shown = ", ".join(details.ignored[:SHOWN_SKIPPED])
        count = len(details.ignored)
        warnings.warn(f"ignored {count} {'file' if count == 1 else 'files'} of types Pillow "
                      f"does not read (by the name's ending): {shown}"
                      f"{', ...' if len(details.ignored) > SHOWN_SKIPPED else ''}",
                      FastResWarning, stacklevel=3)
