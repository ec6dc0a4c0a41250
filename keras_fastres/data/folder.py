"""A folder of images in class subfolders as a data set (`fastres-train --data DIR`,
`keras_fastres.load_image_folder`):

    DIR/train/<class>/<image>, DIR/test/<class>/<image>   the two splits as given
    DIR/<class>/<image>                                   a stratified hold-out is the test split

Class names are the folder names in sorted order (label i is the i-th). PNG, JPEG, BMP and GIF
(its first frame) files are read, at any depth below their class folder; other files are
ignored. Every image becomes RGB (grayscale, 16-bit grayscale and palette converted, alpha
dropped) and is resized to the asked size (stretched, antialiased). A file that cannot be
decoded is skipped and named in one warning; so is one whose header declares more than
`MAX_PIXELS` pixels (a decompression bomb), without being decoded.
"""

import concurrent.futures
import hashlib
import logging
import math
import os
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from keras_fastres.data.splits import (
    DataUnavailableError,
    ImageData,
    Split,
    check_validation_fraction,
    holdout,
)
from keras_fastres.errors import FastResWarning, summary

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
MAX_PIXELS = 64 * 2 ** 20  # 64 megapixels: 8192x8192, or a 50-megapixel camera's photo
SHOWN_SKIPPED = 5  # files named in the warning
CHUNK = 64  # files per decoding task


def image_size_pair(image_size):
    """(height, width) of an `image_size` given as one int or a one-item sequence (square), or a
    (height, width) pair (`--image-size H [W]`), checked."""
    pair = (image_size,) if isinstance(image_size, int) else tuple(image_size)
    pair = pair * 2 if len(pair) == 1 else pair
    if len(pair) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 4
                             for s in pair):
        raise ValueError(f"image size must be one integer (square) or a (height, width) pair, "
                         f"each at least 4 (the network halves it twice); got {image_size!r}.")
    return pair


def decode_image(path, height, width, max_pixels=MAX_PIXELS):
    """uint8 `(height, width, 3)` pixels of a PNG, JPEG, BMP or GIF file: RGB, resized with
    antialiasing. A ValueError saying why when the file cannot be used (it is not such an
    image, it is damaged, or its header declares more than `max_pixels` pixels)."""
    try:
        image = Image.open(path)  # reads the header only
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(summary(error)) from None
    with image:
        columns, rows = image.size
        if columns * rows > max_pixels:
            raise ValueError(f"its header declares {columns}x{rows} pixels, more than "
                             f"{max_pixels:,}: not decoded (a decompression bomb?)")
        try:
            if image.format == "JPEG" and (columns > width or rows > height):
                image.draft("RGB", (width, height))  # decoded at a smaller scale (1/2 to 1/8)
            if image.mode.startswith("I"):  # 16-bit grayscale: scaled to 8 bits, not clipped
                image = Image.fromarray(np.clip(np.round(
                    np.asarray(image, np.float64) / 257), 0, 255).astype(np.uint8), "L")
            if image.mode != "RGB":
                image = image.convert("RGB")
            if image.size != (width, height):
                # Pillow's bilinear filter widens with the reduction: antialiased.
                image = image.resize((width, height), Image.Resampling.BILINEAR)
            return np.asarray(image, dtype=np.uint8)
        except (OSError, SyntaxError, ValueError) as error:  # Pillow's "damaged"
            raise ValueError(summary(error)) from None


def _class_folders(root):
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_below(folder):
    found = []
    for parent, folders, files in os.walk(folder):
        folders[:] = sorted(f for f in folders if not f.startswith("."))
        found += [Path(parent, f) for f in sorted(files)
                  if f.lower().endswith(IMAGE_SUFFIXES) and not f.startswith(".")]
    return found


def list_images(directory):
    """The class names and the (path, label) lists of the train and test splits (test None
    when the folder has no test/ folder), or a DataUnavailableError saying what is wrong."""
    root = Path(directory).expanduser()
    if not root.is_dir():
        raise DataUnavailableError(f"{root} is not a folder; --data needs a folder of class "
                                   f"folders (DIR/<class>/<images>, or DIR/train/<class>/... and "
                                   f"DIR/test/<class>/...).")
    train_root, test_root = root / "train", root / "test"
    if not train_root.is_dir():
        if test_root.is_dir():
            raise DataUnavailableError(f"{root} has a test/ folder but no train/ folder; put the "
                                       f"training images in {train_root}/<class>/.")
        train_root, test_root = root, None
    elif not test_root.is_dir():
        test_root = None
    classes = _class_folders(train_root)
    if not classes:
        raise DataUnavailableError(
            f"{train_root} holds no class folders: put each class's images in a folder named "
            f"after it ({train_root}/<class>/<images>).")
    names = tuple(folder.name for folder in classes)
    if len(names) == 1:
        raise DataUnavailableError(f"{train_root} has a single class folder ({names[0]}); a "
                                   f"classifier needs two or more.")
    train = [(path, label) for label, folder in enumerate(classes)
             for path in _images_below(folder)]
    counts = np.bincount([label for _, label in train], minlength=len(names))
    if not counts.any():
        raise DataUnavailableError(f"The class folders of {train_root} hold no PNG, JPEG, BMP or "
                                   f"GIF files.")
    if not counts.all():
        empty = [names[i] for i in np.flatnonzero(counts == 0)]
        raise DataUnavailableError(
            f"Class {empty[0]!r} ({train_root / empty[0]}) has no training images"
            + (f" (nor have {', '.join(empty[1:4])}{'...' if len(empty) > 4 else ''})"
               if len(empty) > 1 else "") + "; every class needs some.")
    if test_root is None:
        return names, train, None
    test = []
    for folder in _class_folders(test_root):
        if folder.name not in names:
            raise DataUnavailableError(
                f"Test class {folder.name!r} ({folder}) is not a training class; the training "
                f"classes are the folders of {train_root}: {', '.join(names[:10])}"
                f"{'...' if len(names) > 10 else ''}.")
        test += [(path, names.index(folder.name)) for path in _images_below(folder)]
    if not test:
        raise DataUnavailableError(f"{test_root} holds no images in class folders; remove it to "
                                   f"hold out part of the training images instead.")
    return names, train, test


def default_max_memory():
    """Half of the machine's memory, in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def check_memory(count, height, width, max_memory):
    """A DataUnavailableError when `count` RGB images of height x width (uint8) exceed
    `max_memory` bytes, naming an image size that would fit."""
    needed = count * height * width * 3
    if needed <= max_memory:
        return
    scale = math.sqrt(max_memory / needed)
    smaller = (int(height * scale), int(width * scale))
    advice = (f"--image-size {smaller[0]}" + (f" {smaller[1]}" if smaller[0] != smaller[1] else "")
              + " would fit" if min(smaller) >= 4 else "no image size would fit: use fewer images")
    raise DataUnavailableError(
        f"{count:,} images at {height}x{width} take {_size(needed)} in memory, more than the "
        f"budget of {_size(max_memory)} (--max-memory); {advice}, or raise --max-memory.")


def _size(count):
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"


def files_digest(root, train, test):
    """A fingerprint of which files make up each split (a run resumes only on the same)."""
    digest = hashlib.sha256()
    for split, files in (("train", train), ("test", test)):
        digest.update(split.encode())
        for path, label in files:
            digest.update(f"\0{path.relative_to(root)}\0{label}".encode())
    return digest.hexdigest()[:16]


def _decode_all(files, height, width, max_pixels, progress):
    """The images of `files` in one uint8 array, decoded by one thread per CPU, a chunk of
    files per task (Pillow releases the GIL while it decodes and resizes; tasks of one small
    file each spend more time handing over than decoding: 0.6x, measured), and the skipped
    files with their reasons."""
    images = np.empty((len(files), height, width, 3), np.uint8)
    skipped = {}
    stop = threading.Event()  # set by the first task that fails: the others decode no more

    def decode(start):
        for index in range(start, min(start + CHUNK, len(files))):
            if stop.is_set():
                break
            try:
                images[index] = decode_image(files[index][0], height, width, max_pixels)
            except ValueError as error:
                skipped[index] = str(error)
            except BaseException:
                stop.set()
                raise
        return min(start + CHUNK, len(files))
    pool = concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1)
    try:
        for done in pool.map(decode, range(0, len(files), CHUNK)):
            progress(done)
    finally:  # Ctrl-C or SIGTERM: the chunks not started are dropped, not decoded first
        pool.shutdown(cancel_futures=True)
    keep = np.array([i not in skipped for i in range(len(files))], bool)
    labels = np.array([label for _, label in files], np.int64)
    if skipped:
        images, labels = images[keep], labels[keep]
    return Split(images, labels), [(files[i][0], skipped[i]) for i in sorted(skipped)]


def load_image_folder(directory: str | os.PathLike, image_size: int | Sequence[int] = 32,
                      validation_fraction: float = 0.1, seed: int = 0,
                      max_memory: int | None = None, max_pixels: int = MAX_PIXELS,
                      progress: Callable[[int, int], None] | None = None) -> ImageData:
    """Loads a folder of class folders into memory, as `load_cifar` loads CIFAR.

    Args:
        directory: `DIR/train/<class>/...` and `DIR/test/<class>/...`, or `DIR/<class>/...`
            alone (then a stratified hold-out is the test split).
        image_size: an int (square) or (height, width): every image is resized to it.
        validation_fraction: with class folders only, the part of each class held out as the
            test split (drawn with `seed`; the same for every run of the same files).
        seed: the hold-out's seed.
        max_memory: bytes the decoded images may take (N * H * W * 3); default half of the
            machine's memory. Checked before any image is decoded.
        max_pixels: images whose header declares more pixels are skipped, not decoded.
        progress: None, or a callable `progress(done, total)` told how many files are
            decoded, e.g. to draw a bar. The start and the end are logged (INFO, logger
            keras_fastres.data.folder); skipped files are a `FastResWarning`.

    Returns:
        `ImageData`: `train` and `test` splits of uint8 images `(N, H, W, 3)` and int64 labels
        `(N,)`, `class_names` (the folder names, sorted), `skipped` (the paths of the files
        skipped) and `files_digest` (which files make up each split).

    Raises:
        DataUnavailableError: one line saying what is wrong with the folder and what to do.
    """
    height, width = image_size_pair(image_size)
    check_validation_fraction(validation_fraction)
    root = Path(directory).expanduser()
    names, train, test = list_images(root)
    if test is None:
        train_index, test_index = holdout(np.array([label for _, label in train]),
                                          validation_fraction, seed)
        train, test = [train[i] for i in train_index], [train[i] for i in test_index]
    check_memory(len(train) + len(test), height, width,
                 default_max_memory() if max_memory is None else max_memory)
    total = len(train) + len(test)
    log.info("Decoding %s: %s files ...", root, f"{total:,}")
    start = time.perf_counter()
    show = progress or (lambda done, total: None)
    splits, skipped = [], []
    with warnings.catch_warnings():  # Pillow's own bomb warning: such files are skipped here
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        for files, offset in ((train, 0), (test, len(train))):
            split, lost = _decode_all(files, height, width, max_pixels,
                                      lambda done, o=offset: show(o + done, total))
            splits.append(split)
            skipped += lost
    log.info("Decoding %s: done in %.1f s", root, time.perf_counter() - start)
    if skipped:
        shown = "; ".join(f"{path} ({reason})" for path, reason in skipped[:SHOWN_SKIPPED])
        warnings.warn(f"skipped {len(skipped)} of {total} image files that could not be used: "
                      f"{shown}{'; ...' if len(skipped) > SHOWN_SKIPPED else ''}",
                      FastResWarning, stacklevel=2)
    train_split, test_split = splits
    data = ImageData(f"folder:{root}", train_split, test_split, tuple(names),
                     skipped=[str(path) for path, _ in skipped],
                     files_digest=files_digest(root, train, test))
    missing = sorted(set(range(len(names))) - set(np.unique(data.train.labels).tolist()))
    if missing:  # every training image of a class could not be decoded
        raise DataUnavailableError(f"Class {names[missing[0]]!r} has no training image that "
                                   f"could be decoded; every class needs some.")
    if not len(data.test.labels):
        raise DataUnavailableError(
            f"{root} leaves no test image (every class has a single image, or no test image "
            f"could be decoded); add images, or a test/ folder beside train/.")
    return data
