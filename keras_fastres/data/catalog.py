"""Any image-classification data set of the TFDS catalog (`--dataset tfds:NAME`): image and label
from its supervised keys, class names from its label feature, images resized to the asked size
and made RGB, the splits asked for, or a stratified hold-out of the training split when the
data set has no test split.

Before a download, what can be known is checked: the name (TFDS's registry), an image and a
class label as its supervised keys (its features, known without data), the hosts it downloads
from (its checksums file) reachable, and the splits asked for, when TFDS publishes the data
set's metadata (dataset_info.json in its public bucket); unpublished splits are checked once
the data set is prepared."""

import json
import logging
import os
import socket
import threading
import urllib.request
from urllib.parse import urlparse

import numpy as np
import tensorflow as tf

from keras_fastres.data.splits import (
    DataUnavailableError,
    ImageData,
    Split,
    check_labels,
    check_validation_fraction,
    holdout,
    split_by,
)

PREFIX = "tfds:"
EXAMPLES = "tfds:svhn_cropped, tfds:fashion_mnist, tfds:eurosat/rgb"
DEFAULT_TEST_SPLIT = "test"  # held out of the training split when the data set has none

log = logging.getLogger(__name__)


def prepared_builder(name, data_dir, download, help_text="", check_network=None):
    """The TFDS builder of `name`, downloaded and prepared into `data_dir` first if needed (and
    `download`); `check_network(builder)` may refuse before a download starts."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
        prepared = builder.is_prepared()
    except tfds.core.registered.DatasetNotFoundError:
        raise DataUnavailableError(
            f"TFDS has no data set named {name!r}; give a name of its catalog "
            f"(https://www.tensorflow.org/datasets/catalog), e.g. {EXAMPLES}.") from None
    if not prepared:
        if not download:
            raise DataUnavailableError(
                f"TFDS data set {name!r} is not prepared in {builder.data_dir} and downloading "
                f"is off. {help_text}".strip())
        if check_network:
            check_network(builder)
        log.info("Downloading and preparing %s into %s ...", name, builder.data_dir)
        builder.download_and_prepare()
    return builder


def read_split(builder, split, image_size=None):
    """One split in memory: uint8 RGB images `(N, H, W, 3)`, resized (antialiased) to
    `image_size` (H, W) when given, and int64 labels."""
    dataset = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)

    def rgb(image, label):
        if image.shape[-1] == 1:
            image = tf.image.grayscale_to_rgb(image)
        image = image[..., :3]
        if image_size is not None and tuple(image.shape[:2]) != tuple(image_size):
            image = tf.image.resize(image, image_size, antialias=True)
            image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
        return image, label
    dataset = dataset.map(rgb, num_parallel_calls=tf.data.AUTOTUNE)
    images, labels = [], []
    for image_batch, label_batch in dataset.batch(10_000).as_numpy_iterator():
        images.append(image_batch)
        labels.append(label_batch)
    if not images:
        raise DataUnavailableError(f"TFDS split {builder.name}/{split} in {builder.data_dir} is "
                                   f"empty.")
    return Split(np.concatenate(images), np.concatenate(labels).astype(np.int64))


def load_catalog(name, data_dir=None, image_size=(32, 32), train_split="train",
                 test_split=DEFAULT_TEST_SPLIT, validation_fraction=0.1, download=True):
    """A TFDS image-classification data set in memory as `ImageData` (name "tfds:NAME").

    Without the test split in the data set (e.g. eurosat has only "train"), a stratified
    hold-out of `validation_fraction` of the training split (seed 0) is the test split.
    """
    check_validation_fraction(validation_fraction)

    def before_download(builder):
        _image_and_label(builder, name)
        _check_hosts(builder, name)
        _check_splits(name, published_splits(builder), train_split, test_split)
    builder = prepared_builder(name, data_dir, download, check_network=before_download)
    _, label_feature = _image_and_label(builder, name)
    # Empty when TFDS does not know them (a mocked data set).
    held_out = _check_splits(name, set(builder.info.splits), train_split, test_split)
    try:
        train = read_split(builder, train_split, image_size)
        if held_out:
            log.info(f"{name} has no {test_split!r} split: holding out "
                     f"{validation_fraction:.0%} of {train_split!r} (stratified, seed 0) as "
                     f"the test split.")
            train_index, test_index = holdout(train.labels, validation_fraction)
            train, test = split_by(train, train_index), split_by(train, test_index)
        else:
            test = read_split(builder, test_split, image_size)
    except (tf.errors.OpError, OSError) as error:
        raise DataUnavailableError(
            f"TFDS data set {name!r} in {builder.data_dir} could not be read ({error}). Delete "
            f"that folder and prepare it again.") from error
    data = ImageData(PREFIX + name, train, test, tuple(label_feature.names))
    check_labels(data.name, data)
    return data


def _image_and_label(builder, name):
    """The data set's image and class-label features (its supervised keys), known from its
    features before any download; DataUnavailableError for another kind of data set."""
    import tensorflow_datasets as tfds

    info = builder.info
    keys = info.supervised_keys
    image_feature = info.features[keys[0]] if keys and isinstance(keys[0], str) else None
    label_feature = info.features[keys[1]] if keys and isinstance(keys[1], str) else None
    if not (isinstance(image_feature, tfds.features.Image)
            and isinstance(label_feature, tfds.features.ClassLabel)):
        raise DataUnavailableError(
            f"TFDS data set {name!r} is not an image classification data set (its supervised "
            f"keys {keys} are not an image and a class label); e.g. {EXAMPLES} are.")
    return image_feature, label_feature


def _check_splits(name, splits, train_split, test_split):
    """DataUnavailableError naming the option of a split that `splits` (the data set's, when
    known: empty when not) lacks; returns whether the test split is to be held out of the
    training split (the default test split of a data set without one)."""
    def missing(split):
        return bool(splits) and split.split("[")[0] not in splits
    held_out = missing(test_split)
    for option, split in (("--train-split", train_split), ("--test-split", test_split)):
        if missing(split) and not (held_out and split == DEFAULT_TEST_SPLIT):
            raise DataUnavailableError(f"TFDS data set {name!r} has no split {split!r} "
                                       f"({option}); it has {sorted(splits)}.")
    return held_out


def behind_proxy():
    """Whether HTTPS goes through a proxy (then reachability is the proxy's to judge)."""
    return any(os.environ.get(v) for v in ("https_proxy", "HTTPS_PROXY"))


def host_reachable(host, timeout=5.0):
    """DNS lookup and TCP connect to port 443 with a hard time limit (getaddrinfo itself has
    none)."""
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


def check_hosts(builder, name, hosts, advice):
    """DataUnavailableError, ending with `advice`, when one of `hosts` that the data set
    downloads from cannot be reached: TFDS would retry for minutes, and leave partial files."""
    unreachable = [] if behind_proxy() else [h for h in hosts if not host_reachable(h)]
    if unreachable:
        raise DataUnavailableError(
            f"TFDS data set {name!r} is not prepared in {builder.data_dir} and "
            f"{', '.join(unreachable)} cannot be reached to download it. {advice}")


def _check_hosts(builder, name):
    """`check_hosts` on the hosts of the data set's checksums file's URLs."""
    hosts = sorted({urlparse(url).hostname for url in type(builder).url_infos or {}} - {None})
    check_hosts(builder, name, hosts, "Connect this machine to the network, or prepare the data "
                "set where there is one and pass its folder with --data-dir.")


METADATA_HOST = "storage.googleapis.com"  # TFDS's public bucket gs://tfds-data


def published_splits(builder, timeout=10.0):
    """The split names of the data set's published metadata (TFDS's
    gs://tfds-data/dataset_info/<name>/<version>/dataset_info.json, over HTTPS), or an empty
    set when it cannot be had (no network, a data set TFDS publishes none for)."""
    url = (f"https://{METADATA_HOST}/tfds-data/dataset_info/{builder.info.full_name}/"
           f"dataset_info.json")
    if not (behind_proxy() or host_reachable(METADATA_HOST)):
        return set()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            info = json.load(response)
    except (OSError, ValueError):
        return set()
    splits = info.get("splits") if isinstance(info, dict) else None
    return {split["name"] for split in splits or []
            if isinstance(split, dict) and isinstance(split.get("name"), str)}
