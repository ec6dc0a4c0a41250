"""`evaluate(model, data)`: a model of any format the package writes, on labelled images.

The images are prepared by the model's own `ImagePreparation`, as `fastres-predict` prepares
them, a batch at a time: a folder larger than memory is streamed, never decoded whole. The
data's classes are matched to the model's by name.
"""

import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from keras_fastres.errors import DamagedFile, FastResWarning
from keras_fastres.evaluation.evaluation import Evaluation

BATCH = 256  # images prepared and classified at a time


def _classifier(model):
    from keras_fastres.serving.predict import keras_classifier, open_classifier
    if isinstance(model, (str, os.PathLike)):
        return open_classifier(model), str(model)
    return keras_classifier(model), getattr(model, "name", "model")


def _match_classes(model_names, data_names, num_classes):
    """{data label: model output} by class name; a ValueError naming what does not match."""
    if model_names is None:  # a model exported without names: outputs in the data's order
        if len(data_names) != num_classes:
            raise ValueError(f"The model has no class names and {num_classes} outputs; the data "
                             f"has {len(data_names)} classes, so they cannot be matched.")
        return {i: i for i in range(len(data_names))}, list(data_names)
    unknown = [name for name in data_names if name not in model_names]
    if unknown:
        raise ValueError(
            f"The data's classes {', '.join(unknown[:10])} are not among the model's "
            f"({', '.join(model_names[:10])}{'...' if len(model_names) > 10 else ''}); give "
            f"data with the model's class folder names.")
    absent = [name for name in model_names if name not in data_names]
    if absent:
        warnings.warn(f"The data has no class folder for the model's classes "
                      f"{', '.join(absent[:10])}{'...' if len(absent) > 10 else ''}; they are "
                      f"evaluated as answers only.", FastResWarning, stacklevel=4)
    return {i: model_names.index(name) for i, name in enumerate(data_names)}, list(model_names)


def _is_data_set_name(name):
    from keras_fastres.data import is_cifar
    from keras_fastres.data.catalog import PREFIX
    return is_cifar(name) or name.startswith(PREFIX)


def _folder_items(folder):
    """(class names, [(path, label)]) of a labelled folder: its test/ split when it has the
    train/test layout, else every image of its class folders."""
    from keras_fastres.data.folder import list_images
    names, train, test, _, _ = list_images(folder)
    return names, test if test is not None else train


def evaluate(model, data, *, batch_size: int = BATCH,
             on_error: Callable[[Path, str], None] | None = None) -> Evaluation:
    """The `Evaluation` of `model` on the labelled images `data`.

    Args:
        model: a `keras.Model`, or the path of any model `fastres-predict` reads (a run
            directory, a .keras file, a SavedModel or its base, an ONNX or LiteRT file).
        data: a folder of class folders (or with train/ and test/: its test split), a data
            set's name ("cifar10", "cifar100", "tfds:NAME": its test split at the model's
            size), or an `ImageData` (its test split; a finished run's:
            `keras_fastres.training.run.run_data`).
        on_error: called with (path, message) for an image file that cannot be read, which is
            then left out; without it such a file raises a `DamagedFile`.

    A ValueError when the data has a class the model does not know (by name).
    """
    classifier, model_label = _classifier(model)
    if isinstance(data, str) and not Path(data).exists() and _is_data_set_name(data):
        from keras_fastres.data import load
        data = load(data, image_size=classifier.preparation.image_size)
    if isinstance(data, (str, os.PathLike)):
        names, items = _folder_items(data)
        return _evaluate_files(classifier, model_label, str(data), names, items, batch_size,
                               on_error)
    split = data.test
    images = np.asarray(split.images)
    if tuple(images.shape[1:3]) != classifier.preparation.image_size:
        raise ValueError(f"The data's images are {images.shape[1]}x{images.shape[2]}, the "
                         f"model's input {classifier.preparation.image_size}; load the data at "
                         f"the model's size.")
    probabilities = np.concatenate([
        np.asarray(classifier.probabilities(images[i:i + batch_size]))
        for i in range(0, len(images), batch_size)])
    mapping, model_names = _match_classes(classifier.names(probabilities.shape[1]),
                                          list(data.class_names), probabilities.shape[1])
    labels = np.array([mapping[int(label)] for label in split.labels])
    return Evaluation(tuple(model_names), labels, probabilities,
                      tuple(f"test image {i}" for i in range(len(labels))), model_label,
                      "test split", lambda indices: images[indices])


def _evaluate_files(classifier, model_label, data_label, names, items, batch_size, on_error):
    from keras_fastres.serving.predict import load_image
    rows, labels, sources = [], [], []
    for start in range(0, len(items), batch_size):
        pixels = []
        for path, label in items[start:start + batch_size]:
            try:
                pixels.append(load_image(path, classifier.preparation))
            except DamagedFile as error:
                if on_error is None:
                    raise
                on_error(path, str(error))
                continue
            labels.append(label)
            sources.append(str(path))
        if pixels:
            rows.append(np.asarray(classifier.probabilities(np.stack(pixels))))
            if len(rows) == 1:  # the class count known: classes matched before more work
                count = rows[0].shape[1]
                mapping, model_names = _match_classes(classifier.names(count), list(names), count)
    if not rows:
        raise DamagedFile(f"No image of {data_label} could be read.")
    probabilities = np.concatenate(rows)
    preparation = classifier.preparation
    return Evaluation(tuple(model_names), np.array([mapping[label] for label in labels]),
                      probabilities, tuple(sources), model_label, data_label,
                      lambda indices: [preparation.prepare_file(sources[i]) for i in indices])
