"""The data sources, each returning a whole data set in memory as `ImageData` (uint8 images
`(N, H, W, 3)`, int64 labels, class names), and the pipelines that feed them to training:

    cifar.py     CIFAR-10/100: TFDS, the official archives, or synthetic images
    catalog.py   any image-classification data set of the TFDS catalog (--dataset tfds:NAME)
    folder.py    a folder of class folders (--data DIR)
    splits.py    what they return and share: Split, ImageData, the stratified hold-out
    pipeline.py  TrainingData (shuffle, crop, flip per epoch) and test_dataset

Each loader takes explicit arguments (a training run picks one from its settings: run.py).
"""

from keras_fastres.data.catalog import PREFIX as TFDS_PREFIX
from keras_fastres.data.catalog import load_catalog
from keras_fastres.data.cifar import (
    ARCHIVES,
    CLASS_NAMES,
    DATASETS,
    SOURCES,
    check_dataset,
    check_source,
    load_cifar,
    synthetic_cifar,
)
from keras_fastres.data.folder import image_size_pair, load_image_folder
from keras_fastres.data.pipeline import (
    EXTRA_AUGMENTATIONS,
    TrainingData,
    augmentation_draws,
    check_extra_augmentation,
    crop_and_flip,
    mixes_labels,
    test_dataset,
)
from keras_fastres.data.splits import (
    DataUnavailableError,
    ImageData,
    Split,
    channel_statistics,
    check_validation_fraction,
)

__all__ = [
    "ARCHIVES", "CLASS_NAMES", "DATASETS", "EXTRA_AUGMENTATIONS", "SOURCES", "TFDS_PREFIX",
    "DataUnavailableError", "ImageData", "Split", "TrainingData", "augmentation_draws",
    "channel_statistics", "check_dataset", "check_dataset_name", "check_extra_augmentation",
    "check_source", "check_validation_fraction", "crop_and_flip", "image_size_pair", "is_cifar",
    "load_catalog", "load_cifar", "load_image_folder", "mixes_labels", "synthetic_cifar",
    "test_dataset",
]


def is_cifar(dataset):
    return dataset in DATASETS


def check_dataset_name(dataset):
    """A ValueError unless `dataset` is cifar10, cifar100 or tfds:NAME."""
    if not (is_cifar(dataset) or (isinstance(dataset, str) and dataset.startswith(TFDS_PREFIX)
                                  and len(dataset) > len(TFDS_PREFIX))):
        raise ValueError(f"dataset must be one of {DATASETS} or tfds:NAME (a TFDS catalog "
                         f"name, e.g. tfds:svhn_cropped), got {dataset!r}; for a folder of "
                         f"your own images, use --data DIR.")
