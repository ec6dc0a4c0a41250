"""The data sources, each returning a whole data set as `ImageData` (uint8 images
`(N, H, W, 3)`, int64 labels, class names), and the pipelines that feed them to training:

    cifar.py     CIFAR-10/100: TFDS, the official archives, or synthetic images
    catalog.py   any image-classification data set of the TFDS catalog (--dataset tfds:NAME)
    folder.py    a folder of class folders (--data DIR), decoded once into
    cache.py     the decode-once cache, by
    decoding.py  one file's pixels (EXIF, resize modes) and the decoding worker processes
    splits.py    what they return and share: Split, ImageData, the stratified hold-out
    pipeline.py  TrainingData (shuffle, crop, flip per epoch) and test_dataset
    summary.py   what a run trains on, said before its first epoch

`load` picks the source from explicit arguments; each loader can also be called alone.
"""

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from keras_fastres.data.splits import ImageData

# Each name from the module that defines it, imported on first use: the sources import
# TensorFlow, and `keras_fastres.data.decoding` (what the model zoo and the decoding workers
# need) must import without it.
_LAZY = {
    "TFDS_PREFIX": ("catalog", "PREFIX"), "load_catalog": ("catalog", "load_catalog"),
    **{name: ("cifar", name) for name in (
        "ARCHIVES", "CLASS_NAMES", "DATASETS", "SOURCES", "check_dataset", "check_source",
        "load_cifar", "synthetic_cifar")},
    "RESIZE_MODES": ("decoding", "RESIZE_MODES"),
    "image_size_pair": ("decoding", "image_size_pair"),
    "load_image_folder": ("folder", "load_image_folder"),
    **{name: ("pipeline", name) for name in (
        "EXTRA_AUGMENTATIONS", "TrainingData", "augmentation_draws", "check_extra_augmentation",
        "crop_and_flip", "mixes_labels", "test_dataset")},
    **{name: ("splits", name) for name in (
        "DataUnavailableError", "ImageData", "Split", "channel_statistics",
        "check_validation_fraction")},
}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'keras_fastres.data' has no attribute {name!r}")
    module, attribute = _LAZY[name]
    value = getattr(importlib.import_module(f"keras_fastres.data.{module}"), attribute)
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *_LAZY])


__all__ = [
    "ARCHIVES", "CLASS_NAMES", "DATASETS", "EXTRA_AUGMENTATIONS", "RESIZE_MODES", "SOURCES",
    "TFDS_PREFIX",
    "DataUnavailableError", "ImageData", "Split", "TrainingData", "augmentation_draws",
    "channel_statistics", "check_dataset", "check_dataset_name", "check_extra_augmentation",
    "check_source", "check_validation_fraction", "crop_and_flip", "image_size_pair", "is_cifar",
    "load", "load_catalog", "load_cifar", "load_image_folder", "mixes_labels", "synthetic_cifar",
    "test_dataset",
]


def is_cifar(dataset):
    from keras_fastres.data.cifar import DATASETS
    return dataset in DATASETS


def check_dataset_name(dataset):
    """A ValueError unless `dataset` is cifar10, cifar100 or tfds:NAME."""
    from keras_fastres.data.catalog import PREFIX as TFDS_PREFIX
    from keras_fastres.data.cifar import DATASETS
    if not (is_cifar(dataset) or (isinstance(dataset, str) and dataset.startswith(TFDS_PREFIX)
                                  and len(dataset) > len(TFDS_PREFIX))):
        raise ValueError(f"dataset must be one of {DATASETS} or tfds:NAME (a TFDS catalog "
                         f"name, e.g. tfds:svhn_cropped), got {dataset!r}; for a folder of "
                         f"your own images, use --data DIR.")


def load(dataset="cifar10", *, folder=None, source="tfds", data_dir=None, image_size=(32, 32),
         validation_fraction=0.1, train_split="train", test_split="test",
         synthetic_size=(1024, 256), max_memory=None, seed=0, progress=None,
         resize="stretch", cache_dir=None) -> "ImageData":
    """The data set of a training run: the image `folder` when given (`load_image_folder`),
    else `dataset`: tfds:NAME (`load_catalog`) or cifar10/cifar100 from `source`
    (`load_cifar`). Each argument goes to the loader that takes it; see those."""
    from keras_fastres.data.catalog import PREFIX as TFDS_PREFIX
    from keras_fastres.data.catalog import load_catalog
    from keras_fastres.data.cifar import load_cifar
    from keras_fastres.data.folder import image_size_pair, load_image_folder
    size = image_size_pair(image_size)
    if folder:
        return load_image_folder(folder, size, validation_fraction, max_memory=max_memory,
                                 progress=progress, resize=resize, cache_dir=cache_dir)
    if not is_cifar(dataset):
        return load_catalog(dataset[len(TFDS_PREFIX):], data_dir, size, train_split,
                            test_split, validation_fraction)
    return load_cifar(dataset, source, data_dir, synthetic_size=synthetic_size, seed=seed)
