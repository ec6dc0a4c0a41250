"""CIFAR-10/100 from TFDS, from the official python archives, or synthetic (random images of
CIFAR's shapes, for smoke runs and benchmarks only). Every source returns the whole data set in
memory (180 MB as uint8): `ImageData` with 32x32 images and CIFAR's class names.
"""

import contextlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import tensorflow as tf

from keras_fastres.data.catalog import check_hosts, prepared_builder, read_split
from keras_fastres.data.splits import DataUnavailableError, ImageData, Split, check_labels

DATASETS = ("cifar10", "cifar100")
SOURCES = ("tfds", "archive", "synthetic")
IMAGE_SHAPE = (32, 32, 3)

CLASS_NAMES = {
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                "truck"),
    "cifar100": (
        "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
        "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle",
        "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch",
        "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox",
        "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard",
        "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse",
        "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck",
        "pine_tree", "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray",
        "road", "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail",
        "snake", "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
        "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle",
        "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm"),
}

# The official python-version archives: file name, folder inside it, the members per split and
# the key of the labels in each pickled dict.
ARCHIVES = {
    "cifar10": ("cifar-10-python.tar.gz", "cifar-10-batches-py",
                {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
                b"labels"),
    "cifar100": ("cifar-100-python.tar.gz", "cifar-100-python",
                 {"train": ["train"], "test": ["test"]}, b"fine_labels"),
}
CIFAR_HOST = "www.cs.toronto.edu"  # where TFDS downloads CIFAR from
HOW_TO_PROVIDE = (
    "Provide the data in one of these ways: (1) on a machine with internet, run once with "
    "--source tfds --data-dir DIR to download and prepare it, then copy DIR; (2) download "
    "{archive} from https://www.cs.toronto.edu/~kriz/cifar.html and pass --source archive "
    "--data-dir with the file or the folder holding it (or its extracted {folder}/ folder). To "
    "try the recipe without CIFAR, --synthetic trains on random images (smoke runs only).")


def cifar_data(name, train, test):
    return ImageData(name, train, test, CLASS_NAMES[name])


def check_dataset(name):
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}.")


def check_source(source):
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}.")


def load_cifar(name: str = "cifar10", source: str = "tfds", data_dir: str | None = None,
               download: bool = True, synthetic_size: tuple[int, int] = (1024, 256),
               seed: int = 0) -> ImageData:
    """Loads both splits of CIFAR-10 or CIFAR-100 into memory.

    Args:
        name: "cifar10" or "cifar100".
        source: "tfds" (TensorFlow Datasets; `data_dir` as in `tfds.load`, default
            ~/tensorflow_datasets), "archive" (the official python archive: `data_dir` is
            cifar-10-python.tar.gz / cifar-100-python.tar.gz, a folder holding it, or the
            extracted folder) or "synthetic" (random images of CIFAR's shapes, for smoke runs
            and benchmarks only).
        download: let TFDS download and prepare the data when it is not in `data_dir`.
        synthetic_size: (train, test) image counts of the synthetic source.
        seed: seed of the synthetic source.

    Returns:
        `ImageData`: `train` (50,000) and `test` (10,000) splits of uint8 images
        `(N, 32, 32, 3)` and int64 labels `(N,)`, and CIFAR's `class_names`.

    Raises:
        DataUnavailableError: naming the path or name tried and how to provide the data.
    """
    check_dataset(name)
    check_source(source)
    if source == "tfds":
        cifar = _load_tfds(name, data_dir, download)
    elif source == "archive":
        cifar = _load_archive(name, data_dir)
    else:
        return synthetic_cifar(name, *synthetic_size, seed=seed)
    check_labels(f"{name} from {data_dir or source}", cifar)
    return cifar


def synthetic_cifar(name: str = "cifar10", train_size: int = 1024, test_size: int = 256,
                    seed: int = 0) -> ImageData:
    """Random uint8 images and labels with CIFAR's shapes. Not data to learn from."""
    check_dataset(name)
    rng = np.random.default_rng(seed)
    num_classes = len(CLASS_NAMES[name])

    def split(size):
        return Split(rng.integers(0, 256, (size, *IMAGE_SHAPE), dtype=np.uint8),
                     rng.integers(0, num_classes, size, dtype=np.int64))
    return cifar_data(name, split(train_size), split(test_size))


def _load_tfds(name, data_dir, download):
    archive, folder, _, _ = ARCHIVES[name]
    help_text = HOW_TO_PROVIDE.format(archive=archive, folder=folder)

    def check_network(builder):
        check_hosts(builder, name, (CIFAR_HOST,), help_text)
    builder = prepared_builder(name, data_dir, download, help_text, check_network)
    try:
        return cifar_data(name, *(read_split(builder, split) for split in ("train", "test")))
    except (tf.errors.OpError, OSError, ValueError) as error:
        raise DataUnavailableError(
            f"TFDS data set {name!r} in {builder.data_dir} could not be read ({error}). Delete "
            f"that folder and prepare it again, or use --source archive.") from error


class _ArrayUnpickler(pickle.Unpickler):
    """Reads the official pickles (dicts of numpy arrays and lists) and nothing that runs code."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"),
               # Python 3 writes bytes into protocol-2 pickles as _codecs.encode(text, latin1),
               # and empty bytes as a bytes() call.
               ("_codecs", "encode"), ("__builtin__", "bytes"), ("builtins", "bytes")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a CIFAR pickle")
        return super().find_class(module, name)


def _find_archive(name, data_dir):
    """The archive file or extracted folder that `data_dir` points to, and what was tried."""
    archive, folder, members, _ = ARCHIVES[name]
    path = Path(data_dir).expanduser()
    candidates = [path] if path.is_file() else [path / folder, path / archive, path]
    for candidate in candidates:
        if candidate.is_file() and tarfile.is_tarfile(candidate):
            return candidate, candidates
        if candidate.is_dir() and (candidate / members["test"][0]).is_file():
            return candidate, candidates
    return None, candidates


def _load_archive(name, data_dir):
    archive, folder, members, label_key = ARCHIVES[name]
    help_text = HOW_TO_PROVIDE.format(archive=archive, folder=folder)
    if data_dir is None:
        raise DataUnavailableError(f"--source archive needs --data-dir. {help_text}")
    found, tried = _find_archive(name, data_dir)
    given = Path(data_dir).expanduser()
    for candidate in ([given] if given.is_file() else [given / archive]):
        if found is None and candidate.is_file():  # there, but not a tar archive
            size = candidate.stat().st_size
            what = "an empty file" if size == 0 else f"{size} bytes of something else"
            raise DataUnavailableError(f"{candidate} is not a tar.gz archive ({what}): "
                                       f"download it again. {help_text}")
    if found is None:
        raise DataUnavailableError(
            f"No {name} data found at {data_dir} (tried: {', '.join(map(str, tried))}). "
            f"{help_text}")
    try:
        with contextlib.ExitStack() as stack:
            if found.is_dir():
                def read(member):
                    return (found / member).read_bytes()
            else:
                tar = stack.enter_context(tarfile.open(found))

                def read(member):
                    file = tar.extractfile(f"{folder}/{member}")
                    if file is None:  # a member that is no regular file
                        raise KeyError(f"{folder}/{member}")
                    return file.read()
            return cifar_data(name, *(_archive_split(read, members[split], label_key)
                                 for split in ("train", "test")))
    except (OSError, EOFError, KeyError, tarfile.TarError, pickle.UnpicklingError, ValueError) as error:
        raise DataUnavailableError(
            f"The {name} data at {found} is incomplete or corrupt ({type(error).__name__}: "
            f"{error}). {help_text}") from error


def _archive_split(read, members, label_key):
    images, labels = [], []
    for member in members:
        batch = _ArrayUnpickler(io.BytesIO(read(member)), encoding="bytes").load()
        if not isinstance(batch, dict):
            raise ValueError(f"{member}: a {type(batch).__name__}, not the dict of a CIFAR batch")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        # Integers that fit int64, as written: a float (1.5) or a huge label is damage, never
        # truncated or wrapped into a class.
        batch_labels = np.asarray(batch[label_key])
        if not batch_labels.size:  # an empty list reads as float64
            batch_labels = batch_labels.astype(np.int64)
        if batch_labels.dtype.kind not in "iu" or batch_labels.dtype.itemsize > 8 or (
                batch_labels.dtype.kind == "u" and batch_labels.size
                and batch_labels.max() > np.iinfo(np.int64).max):
            raise ValueError(f"{member}: labels of type {batch_labels.dtype}, not integers")
        if data.ndim != 2 or data.shape[1] != 3072 or len(batch_labels) != len(data):
            raise ValueError(f"{member}: expected data (N, 3072) and N labels, got data "
                             f"{data.shape} and {len(batch_labels)} labels")
        # Rows are 1024 red, 1024 green, then 1024 blue values, each image row-major.
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(batch_labels.astype(np.int64))
    return Split(np.concatenate(images), np.concatenate(labels))

