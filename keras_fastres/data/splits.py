"""What every data source returns: a training and a test `Split` of uint8 images and int64
labels, with the class names (`ImageData`); and what the sources share: the stratified hold-out
and the checks of labels and classes."""

from dataclasses import dataclass, field
from typing import Any

import numpy as np


class DataUnavailableError(RuntimeError):
    """The data set could not be found or read; the message says what was tried and what to do."""


@dataclass
class Split:
    images: np.ndarray  # (N, H, W, 3) uint8
    labels: np.ndarray  # (N,) int64


@dataclass
class ImageData:
    """A data set in memory: `train` and `test` splits and the class names (label i is
    `class_names[i]`). A folder source also gives the files it skipped (`skipped`) and a
    fingerprint of the files in each split (`files_digest`) and what loading found (`details`,
    a `folder.FolderDetails`). Images may be memory-mapped (`from_disk`)."""

    name: str
    train: Split
    test: Split
    class_names: tuple
    skipped: list = field(default_factory=list)
    files_digest: str | None = None
    details: Any = None  # a folder.FolderDetails (folder.py imports this module)

    @property
    def from_disk(self) -> bool:
        """Whether the images are memory-mapped from a file (larger than the memory budget)."""
        return isinstance(self.train.images, np.memmap)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple:
        """(H, W, 3) of every image."""
        return tuple(self.train.images.shape[1:])


def check_validation_fraction(fraction):
    """A ValueError unless the hold-out fraction is a number strictly between 0 and 1."""
    if not (isinstance(fraction, (int, float)) and 0 < fraction < 1):
        raise ValueError(f"validation_fraction must be between 0 and 1, got {fraction!r}.")


def holdout(labels, fraction, seed=0):
    """Indices (train, test) of a stratified hold-out: `fraction` of each class's examples
    (rounded, at least one when the class has two or more, never all of them) drawn with
    `seed` for the test split. A pure function of the labels, the fraction and the seed."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        count = min(max(round(fraction * len(members)), 1), len(members) - 1)
        test.append(members[:count])
        train.append(members[count:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def split_by(split, indices):
    return Split(split.images[indices], split.labels[indices])


def check_labels(name, data):
    """A DataUnavailableError when a split has labels outside 0..num_classes-1."""
    for split_name, split in (("train", data.train), ("test", data.test)):
        outside = split.labels[(split.labels < 0) | (split.labels >= data.num_classes)]
        if outside.size:
            raise DataUnavailableError(
                f"The {split_name} split of {name} has labels outside 0..{data.num_classes - 1} "
                f"(e.g. {int(outside[0])}): it is not {name}, or it is damaged.")


def channel_statistics(images, values=2 ** 22):
    """Per-channel mean and standard deviation of uint8 images `(N, H, W, C)` on the 0-255
    scale, in float64, a chunk of about `values` pixel values at a time (32 MB of float64: no
    float copy of the whole set, which may be memory-mapped). A channel that never varies gets
    std 1 (normalising by 0 would divide by zero)."""
    channels = images.shape[-1]
    chunk = max(1, values // max(1, int(np.prod(images.shape[1:]))))
    total, squares, count = np.zeros(channels), np.zeros(channels), 0
    for start in range(0, len(images), chunk):
        batch = np.asarray(images[start:start + chunk]).reshape(-1, channels).astype(np.float64)
        total += batch.sum(axis=0)
        squares += (batch * batch).sum(axis=0)
        count += len(batch)
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean * mean, 0.0))
    return tuple(mean.tolist()), tuple(np.where(std > 1e-3, std, 1.0).tolist())
