"""CIFAR-10/100 as tf.data pipelines, from TFDS, the official python archives, or synthetic data.

Every source yields the whole split in memory (CIFAR is 180 MB as uint8) as raw pixels
`(N, 32, 32, 3)` uint8 and integer labels `(N,)`; `TrainingData` and `test_dataset` turn a split
into batches of those pixels, which the training step casts to float32. Normalisation is a
layer inside the model, not part of the data.
"""

import contextlib
import io
import logging
import os
import pickle
import socket
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
import keras

DATASETS = ("cifar10", "cifar100")
SOURCES = ("tfds", "archive", "synthetic")
EXTRA_AUGMENTATIONS = ("randaugment", "mixup", "cutmix")
IMAGE_SHAPE = (32, 32, 3)
PAD = 4  # the standard CIFAR augmentation: 4-pixel zero padding, then a random 32x32 crop

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


class DataUnavailableError(RuntimeError):
    """The data set could not be found or read; the message says what was tried and what to do."""


@dataclass
class Split:
    images: np.ndarray  # (N, 32, 32, 3) uint8
    labels: np.ndarray  # (N,) int64


@dataclass
class Cifar:
    name: str
    train: Split
    test: Split

    @property
    def num_classes(self):
        return len(CLASS_NAMES[self.name])

    @property
    def class_names(self):
        return CLASS_NAMES[self.name]


def check_dataset(name):
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}.")


def check_source(source):
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}.")


def mixes_labels(extra_augmentation):
    """Whether the pipeline yields one-hot labels: MixUp and CutMix blend them."""
    return bool({"mixup", "cutmix"} & set(extra_augmentation))


def check_extra_augmentation(names):
    unknown = set(names) - set(EXTRA_AUGMENTATIONS)
    if unknown:
        raise ValueError(f"extra augmentation must be taken from {EXTRA_AUGMENTATIONS}, got "
                         f"{sorted(unknown)}.")


def load_cifar(name="cifar10", source="tfds", data_dir=None, download=True,
               synthetic_size=(1024, 256), seed=0):
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
    for split_name, split in (("train", cifar.train), ("test", cifar.test)):
        outside = split.labels[(split.labels < 0) | (split.labels >= cifar.num_classes)]
        if outside.size:
            raise DataUnavailableError(
                f"The {split_name} split of {name} from {data_dir or source} has labels outside "
                f"0..{cifar.num_classes - 1} (e.g. {int(outside[0])}): it is not {name}, or it "
                f"is damaged.")
    return cifar


def synthetic_cifar(name="cifar10", train_size=1024, test_size=256, seed=0):
    """Random uint8 images and labels with CIFAR's shapes. Not data to learn from."""
    check_dataset(name)
    rng = np.random.default_rng(seed)
    num_classes = len(CLASS_NAMES[name])

    def split(size):
        return Split(rng.integers(0, 256, (size, *IMAGE_SHAPE), dtype=np.uint8),
                     rng.integers(0, num_classes, size, dtype=np.int64))
    return Cifar(name, split(train_size), split(test_size))


def _host_reachable(host, timeout=5.0):
    """DNS lookup and TCP connect with a hard time limit (getaddrinfo itself has none)."""
    result = {}

    def connect():
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            result["ok"] = True
        except OSError:
            result["ok"] = False
    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(2 * timeout)
    return result.get("ok", False)


def _load_tfds(name, data_dir, download):
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir)
    archive, folder, _, _ = ARCHIVES[name]
    # TFDS warns (through absl) that an unprepared version folder has no dataset_info.json;
    # the message below says that, and what to do.
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        prepared = builder.is_prepared()
    finally:
        absl_logger.setLevel(level)
    if not prepared:
        help_text = HOW_TO_PROVIDE.format(archive=archive, folder=folder)
        if not download:
            raise DataUnavailableError(
                f"TFDS data set {name!r} is not prepared in {builder.data_dir} and downloading "
                f"is off. {help_text}")
        behind_proxy = any(os.environ.get(v) for v in ("https_proxy", "HTTPS_PROXY"))
        if not behind_proxy and not _host_reachable(CIFAR_HOST):
            # TFDS would retry the lookup for minutes before failing; answer now instead.
            raise DataUnavailableError(
                f"TFDS data set {name!r} is not prepared in {builder.data_dir} and "
                f"{CIFAR_HOST} cannot be reached to download it. {help_text}")
        print(f"Downloading and preparing {name} into {builder.data_dir} ...", flush=True)
        builder.download_and_prepare()
    try:
        return Cifar(name, *(_tfds_split(builder, split) for split in ("train", "test")))
    except (tf.errors.OpError, OSError, ValueError) as error:
        raise DataUnavailableError(
            f"TFDS data set {name!r} in {builder.data_dir} could not be read ({error}). Delete "
            f"that folder and prepare it again, or use --source archive.") from error


def _tfds_split(builder, split):
    dataset = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)
    images, labels = [], []
    for image_batch, label_batch in dataset.batch(10_000).as_numpy_iterator():
        images.append(image_batch)
        labels.append(label_batch)
    if not images:
        raise DataUnavailableError(f"TFDS split {builder.name}/{split} in {builder.data_dir} is empty.")
    return Split(np.concatenate(images), np.concatenate(labels).astype(np.int64))


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
                    return tar.extractfile(f"{folder}/{member}").read()
            return Cifar(name, *(_archive_split(read, members[split], label_key)
                                 for split in ("train", "test")))
    except (OSError, EOFError, KeyError, tarfile.TarError, pickle.UnpicklingError, ValueError) as error:
        raise DataUnavailableError(
            f"The {name} data at {found} is incomplete or corrupt ({type(error).__name__}: "
            f"{error}). {help_text}") from error


def _archive_split(read, members, label_key):
    images, labels = [], []
    for member in members:
        batch = _ArrayUnpickler(io.BytesIO(read(member)), encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3072 or len(batch[label_key]) != len(data):
            raise ValueError(f"{member}: expected data (N, 3072) and N labels, got data "
                             f"{data.shape} and {len(batch[label_key])} labels")
        # Rows are 1024 red, 1024 green, then 1024 blue values, each image row-major.
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(batch[label_key], dtype=np.int64))
    return Split(np.concatenate(images), np.concatenate(labels))


def test_dataset(split, batch_size, num_classes, one_hot=False):
    """The evaluation pipeline: the images as they are, in order, batched.

    Yields `(images, labels)`: images `(batch, 32, 32, 3)` uint8, the raw pixels (the training
    step casts them); labels `(batch,)` int64, or one-hot float32 `(batch, num_classes)` with
    `one_hot` (as the training labels are when mixup or cutmix mixes them).
    """
    dataset = tf.data.Dataset.from_tensor_slices((split.images, split.labels))
    if one_hot:
        dataset = dataset.map(lambda x, y: (x, tf.one_hot(y, num_classes)))
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def crop_and_flip(images, offsets, flips):
    """The paper's augmentation on a whole batch `(n, H, W, ...)`: 4-pixel zero padding, the HxW
    window at `offsets` (n, 2) of (row, column) in [0, 8], mirrored where `flips` (n,) is true.
    Two gathers: the rows of every window, then its columns, read backwards for a mirrored one."""
    size = tf.shape(images)[1]
    padding = [[0, 0], [PAD, PAD], [PAD, PAD]] + [[0, 0]] * (len(images.shape) - 3)
    padded = tf.pad(images, padding)
    steps = tf.range(size)
    rows = offsets[:, :1] + steps
    columns = offsets[:, 1:] + tf.where(flips[:, None], size - 1 - steps, steps)
    windows = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(windows, columns, axis=2, batch_dims=1)


def pack_pixels(images):
    """uint8 `(N, H, W, 3)` as uint32 `(N, H, W)`, one element per pixel (a zero fourth byte),
    so that the crop's column gather moves one 4-byte element per pixel instead of a 3-byte
    slice: 1.1x the pipeline's speed, measured."""
    rgba = np.concatenate([images, np.zeros((*images.shape[:3], 1), np.uint8)], axis=-1)
    return np.ascontiguousarray(rgba).view(np.uint32)[..., 0]


def unpack_pixels(pixels):
    """`pack_pixels` undone on a tensor: uint32 `(..., H, W)` to uint8 `(..., H, W, 3)` by a
    bitcast; int32 (`TrainingData.device_arrays`) by shifts, which XLA compiles (it cannot
    bitcast to a smaller type). Both read the little-endian bytes pack_pixels wrote."""
    if pixels.dtype == tf.uint32:
        return tf.bitcast(pixels, tf.uint8)[..., :3]
    channels = [tf.bitwise.bitwise_and(tf.bitwise.right_shift(pixels, shift), 255)
                for shift in (0, 8, 16)]
    return tf.cast(tf.stack(channels, axis=-1), tf.uint8)


def augmentation_draws(key, count):
    """Crop offsets `(count, 2)` in [0, 8] and flips `(count,)` (true for about half) for one
    batch, a pure function of the stateless `key` (two integers)."""
    # The device placement, compiled by XLA or not, must draw exactly what the tf.data
    # pipeline draws: Philox named (auto_select picks another generator under XLA), and
    # integers only (XLA turns random bits into floats differently).
    offsets = tf.random.stateless_uniform([count, 2], key, 0, 2 * PAD + 1, tf.int32,
                                          alg="philox")
    flips = tf.random.stateless_uniform(
        [count], tf.random.experimental.stateless_fold_in(key, 1, alg="philox"), 0, 2,
        tf.int32, alg="philox") == 1
    return offsets, flips


def layer_seed(seed, epoch, offset):
    """A seed for a stateful Keras augmentation layer built for one epoch: a pure function of
    the run's seed and the epoch, different for each layer."""
    return (seed * 1_000_003 + epoch * 1_009 + offset) % 2 ** 31


class TrainingData:
    """The training split as one tf.data pipeline per epoch, every random draw a pure function
    of (seed, epoch, batch): a run resumed at any epoch sees what an uninterrupted run would.

    Epoch e shuffles with a permutation drawn from (seed, e) and cuts it into global batches of
    `batch_size` (the last one shorter). Batch b is augmented as the paper does (4-pixel pad,
    random 32x32 crop, horizontal flip) with offsets and flips drawn from (seed, e, b) for the
    whole global batch; a pipeline that feeds some replicas of a distributed run gathers and
    augments only their shares of it (`epoch(e, first_share, shares, total_shares)`), so N
    replicas together see exactly the batch one device would. Batches are built in parallel
    (tf.data keeps their order). The optional extra augmentations (RandAugment per image,
    MixUp and CutMix per share) run after, in order, in Keras layers seeded per epoch.

    Yields `(images, labels)`: images `(share, 32, 32, 3)` uint8 (a quarter of float32's bytes
    through tf.data and to the device: the training step casts them), float32 in [0, 255] when
    an extra augmentation runs; labels `(share,)` int64, or one-hot float32
    `(share, num_classes)` with mixup or cutmix.
    """

    def __init__(self, split, batch_size, seed, num_classes, extra_augmentation=()):
        check_extra_augmentation(extra_augmentation)
        self.pixels = tf.constant(pack_pixels(split.images))
        self.labels = tf.constant(split.labels)
        self.batch_size, self.seed = batch_size, seed
        self.num_classes, self.extra_augmentation = num_classes, tuple(extra_augmentation)
        self.steps_per_epoch = -(-len(split.labels) // batch_size)
        # Traced once, not once per epoch: the epoch comes in as the order and key tensors.
        self._share = tf.function(self._share_of_batch)

    def epoch_order(self, epoch):
        """The epoch's key (seed, epoch) and its permutation of the training images."""
        key = tf.constant([self.seed, epoch], tf.int64)
        return tf.random.experimental.stateless_shuffle(tf.range(len(self.labels)), seed=key), key

    def epoch(self, epoch, first_share=0, shares=1, total_shares=1):
        order, key = self.epoch_order(epoch)
        shares_here = tf.constant([first_share, shares, total_shares])
        dataset = tf.data.Dataset.range(self.steps_per_epoch * shares).map(
            lambda index: self._share(index, order, key, shares_here),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return self._extra(dataset, epoch).prefetch(tf.data.AUTOTUNE)

    def device_arrays(self):
        """The packed pixels (as int32, which every device gathers and XLA unpacks) and the
        labels, to be copied to an accelerator once; `share(...)` computes batches there."""
        return tf.bitcast(self.pixels, tf.int32), self.labels

    def share(self, batch, order, key, part, total_shares, pixels, labels, size):
        """Share `part` of `total_shares` of global batch `batch`, which holds `size` images
        (a Python int: XLA needs static shapes), cropped and flipped with the batch's draws,
        from `pixels` and `labels` (`device_arrays`) wherever they are: the same images the
        tf.data pipeline delivers for it."""
        return self._share_of_batch(tf.cast(batch, tf.int64), order, key,
                                    tf.stack([tf.cast(part, tf.int32), 1, total_shares]),
                                    pixels, labels, size)

    def _share_of_batch(self, index, order, key, shares_here, pixels=None, labels=None,
                        size=None):
        """Element `index` of an epoch: share `first_share + index % shares` of global batch
        `index // shares`, cropped and flipped with the batch's draws. `size`, if known, is
        the batch's image count."""
        pixels = self.pixels if pixels is None else pixels
        labels = self.labels if labels is None else labels
        first_share, shares, total_shares = tf.unstack(shares_here)
        index = tf.cast(index, tf.int32)
        batch, part = index // shares, first_share + index % shares
        if size is None:
            members = order[batch * self.batch_size:(batch + 1) * self.batch_size]
        else:
            members = tf.slice(order, [batch * self.batch_size], [size])
        count = tf.shape(members)[0] if size is None else size
        start, stop = count * part // total_shares, count * (part + 1) // total_shares
        offsets, flips = augmentation_draws(
            tf.random.experimental.stateless_fold_in(key, batch, alg="philox"), count)
        members = members[start:stop]
        cropped = crop_and_flip(tf.gather(pixels, members), offsets[start:stop],
                                flips[start:stop])
        return unpack_pixels(cropped), tf.gather(labels, members)

    def _extra(self, dataset, epoch):
        """RandAugment, MixUp and CutMix as asked, in order (their layers draw from a stateful
        seed generator, so a parallel map would draw in a racy order)."""
        extra = self.extra_augmentation
        if extra:
            dataset = dataset.map(lambda images, labels: (tf.cast(images, tf.float32), labels))
        if "randaugment" in extra:
            randaugment = keras.layers.RandAugment(value_range=(0, 255),
                                                   seed=layer_seed(self.seed, epoch, 3))
            dataset = dataset.map(lambda images, labels: (
                tf.map_fn(lambda image: randaugment(image, training=True), images), labels))
        if mixes_labels(extra):
            dataset = dataset.map(lambda x, y: (x, tf.one_hot(y, self.num_classes)))
        mixers = [layer(seed=layer_seed(self.seed, epoch, offset)) for offset, key, layer in (
                      (4, "mixup", keras.layers.MixUp), (5, "cutmix", keras.layers.CutMix))
                  if key in extra]
        if mixers:
            def mix(images, labels):
                batch = {"images": images, "labels": labels}
                for layer in mixers:
                    batch = layer(batch, training=True)
                return batch["images"], batch["labels"]
            dataset = dataset.map(mix)
        return dataset
