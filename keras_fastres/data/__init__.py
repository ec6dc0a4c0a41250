"""The data sources, each returning a whole data set in memory as `ImageData` (uint8 images
`(N, H, W, 3)`, int64 labels, class names), and the pipelines that feed them to training:

    cifar.py     CIFAR-10/100: TFDS, the official archives, or synthetic images
    catalog.py   any image-classification data set of the TFDS catalog (--dataset tfds:NAME)
    folder.py    a folder of class folders (--data DIR)
    splits.py    what they return and share: Split, ImageData, the stratified hold-out
    pipeline.py  TrainingData (shuffle, crop, flip per epoch) and test_dataset
"""

from keras_fastres.data.catalog import PREFIX as TFDS_PREFIX
from keras_fastres.data.catalog import load_catalog
from keras_fastres.data.cifar import (ARCHIVES, CLASS_NAMES, DATASETS, SOURCES, check_dataset,
                                      check_source, load_cifar, synthetic_cifar)
from keras_fastres.data.folder import image_size_pair, load_image_folder
from keras_fastres.data.pipeline import (EXTRA_AUGMENTATIONS, TrainingData, augmentation_draws,
                                         check_extra_augmentation, crop_and_flip, mixes_labels,
                                         test_dataset)
from keras_fastres.data.splits import (DataUnavailableError, ImageData, Split,
                                       channel_statistics, check_validation_fraction)


def is_cifar(dataset):
    return dataset in DATASETS


def check_dataset_name(dataset):
    """A ValueError unless `dataset` is cifar10, cifar100 or tfds:NAME."""
    if not (is_cifar(dataset) or (isinstance(dataset, str) and dataset.startswith(TFDS_PREFIX)
                                  and len(dataset) > len(TFDS_PREFIX))):
        raise ValueError(f"dataset must be one of {DATASETS} or tfds:NAME (a TFDS catalog "
                         f"name, e.g. tfds:svhn_cropped), got {dataset!r}; for a folder of "
                         f"your own images, use --data DIR.")


def load(config, seed):
    """The data set a training configuration names (config.py's TrainConfig): its --data
    folder, its TFDS catalog data set, or CIFAR from its source."""
    size = image_size_pair(config.image_size)
    if config.data:
        max_memory = None if config.max_memory is None else int(config.max_memory * 2 ** 30)
        return load_image_folder(config.data, size, config.validation_fraction,
                                 max_memory=max_memory)
    if not is_cifar(config.dataset):
        return load_catalog(config.dataset[len(TFDS_PREFIX):], config.data_dir, size,
                            config.train_split, config.test_split, config.validation_fraction)
    return load_cifar(config.dataset, config.source, config.data_dir,
                      synthetic_size=config.synthetic_size, seed=seed)
