"""Classify image files with any model this package writes, without a server
(fastres-predict, commands/predict.py): a SavedModel (a version, or the base of versions), an
ONNX or LiteRT model (the file, its version folder or their base), a training run's directory
(its model.keras) or a .keras file.

Any image size: images are prepared for the model's input as the training data was, by the
`ImagePreparation` saved with the model (the SavedModel's assets/preparation.json, the ONNX
metadata, the preparation.json beside a LiteRT model, the .keras file's asset).
Class names are the model's own (assets/class_names.txt, the ONNX metadata, the
class_names.txt beside a LiteRT model, the Keras config); a model without names answers with
class indices.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from keras_fastres.errors import DamagedFile, summary
from keras_fastres.models import MODEL_FILE
from keras_fastres.preparation import ImagePreparation
from keras_fastres.serving.export import (
    CLASS_NAMES_FILE,
    LITERT_FILE,
    ONNX_FILE,
    SAVED_MODEL_FILE,
    preparation_of,
    version_number,
)
from keras_fastres.utils.console import check_positive_integers

MODEL_FILES = (("saved_model", SAVED_MODEL_FILE), ("keras", MODEL_FILE), ("onnx", ONNX_FILE),
               ("litert", LITERT_FILE))
SUFFIXES = {".onnx": "onnx", ".tflite": "litert", ".keras": "keras"}
BATCH = 256  # images classified at a time


def find_model(path):
    """(format, file or folder) of the model at `path`: a model file, a folder holding one
    (SavedModel, run, ONNX or LiteRT version), or the highest numbered version of a base
    folder; a ValueError saying what is there instead."""
    path = Path(path)
    if path.is_file():
        if path.suffix in SUFFIXES:
            return SUFFIXES[path.suffix], path
        raise ValueError(f"{path} is not a model this command reads: a SavedModel folder, a "
                         f".onnx, .tflite or .keras file, or a training run's folder.")
    if not path.is_dir():
        raise ValueError(f"{path}: no such model file or folder.")
    for kind, name in MODEL_FILES:
        if (path / name).is_file():
            return kind, path if kind == "saved_model" else path / name
    versions = sorted((number, folder) for folder in path.glob("*")
                      if (number := version_number(folder.name)) is not None
                      and any((folder / name).is_file() for _, name in MODEL_FILES))
    if versions:
        return find_model(versions[-1][1])
    raise ValueError(f"No model in {path} nor in a numbered version below it (a SavedModel, "
                     f"{ONNX_FILE}, {LITERT_FILE}, or a run's {MODEL_FILE}).")


def find_saved_model(export_dir):
    """`export_dir` itself if it holds a SavedModel, else its highest numbered version."""
    kind, found = find_model(export_dir)
    if kind != "saved_model":
        raise ValueError(f"{found} is a {kind} model, not a SavedModel.")
    return found


def load_signatures(path):
    """The signatures of the SavedModel at `path`, checked to be one that fastres-export wrote
    (serving_default takes uint8 `images`): a `DamagedFile` when it cannot be loaded, a
    ValueError when it is another kind of model, each naming the folder."""
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as error:  # damaged files fail in many ways (IndexError, DecodeError...)
        raise DamagedFile(f"{path} is not a complete SavedModel (truncated or damaged files?): "
                          f"{summary(error)[:200]}") from None
    signatures = getattr(loaded, "signatures", {})
    serve = signatures.get("serving_default")
    inputs = serve.structured_input_signature[1] if serve is not None else {}
    if getattr(inputs.get("images"), "dtype", None) != tf.uint8:
        takes = ", ".join(f"{name} {spec.dtype.name}" for name, spec in inputs.items())
        raise ValueError(f"{path} is a SavedModel whose serving_default takes "
                         f"{takes or 'nothing'}, not the uint8 images of a fastres-export "
                         f"export; export the model with fastres-export.")
    return signatures


def load_serving_function(path):
    """The `serving_default` signature of the SavedModel at `path` (`load_signatures`)."""
    return load_signatures(path)["serving_default"]


def load_image(path, preparation):
    """uint8 [height, width, 3] pixels of an image file (any still format Pillow reads),
    prepared by `preparation` (an `ImagePreparation`) as the training images were; a
    `DamagedFile` when it cannot be read."""
    try:
        return preparation.prepare_file(path)
    except ValueError as error:
        raise DamagedFile(f"Cannot read {path}: it is not an image Pillow reads, or it is "
                          f"damaged ({error}).") from None


def exported_preparation(source, size, metadata=None):
    """The `ImagePreparation` exported at `source`: the folder holding its preparation.json, or
    an ONNX file whose "preparation" `metadata` is given; for an export without one (0.2), `size`
    stretched. A `DamagedFile` when it is not one, or prepares another size than the model's
    input `size`."""
    if metadata is not None:
        preparation = ImagePreparation.from_json(metadata, f"{source}'s metadata")
    else:
        preparation = (Path(source).is_dir() and ImagePreparation.load(source)
                       or ImagePreparation(size))
    if preparation.image_size != tuple(size):
        raise DamagedFile(f"The image preparation of {source} is for {preparation.image_size} "
                          f"images, the model's input is {tuple(size)}; export the model again.")
    return preparation


def class_names(saved_model, num_classes, names_file=None):
    """The `num_classes` class names exported with the SavedModel at `saved_model` (or in
    `names_file`), or None; a `DamagedFile` naming the file when it does not hold one UTF-8
    line per class. Lines end at "\n" only, as the export writes them."""
    names_file = names_file or Path(saved_model) / "assets" / CLASS_NAMES_FILE
    if not names_file.is_file():
        return None
    try:
        names = names_file.read_bytes().decode("utf-8").split("\n")
    except UnicodeDecodeError as error:
        raise DamagedFile(f"{names_file} is not UTF-8 text ({error.reason} at byte "
                          f"{error.start}); export the model again.") from None
    if names[-1] == "":
        names.pop()
    if len(names) != num_classes:
        raise DamagedFile(f"{names_file} names {len(names)} classes and the model has "
                          f"{num_classes}; export the model again.")
    return names


def check_image_files(image_paths):
    """A ValueError naming the first path that is not a readable file (before any model loads)."""
    for path in map(Path, image_paths):
        if path.is_dir():
            raise ValueError(f"{path} is a folder; give image files (e.g. {path}/*.png).")
        if path.exists() and not path.is_file():  # a FIFO would block, a device never end
            raise ValueError(f"{path} is not a regular file (a FIFO or a device?); give image "
                             f"files.")
        if not path.is_file():
            raise ValueError(f"{path}: no such image file.")


@dataclass
class Classifier:
    """A model opened for classifying: `names(num_classes)` (its class names, or None), its
    `ImagePreparation`, and `probabilities(images)`: uint8 (N, H, W, 3) -> float
    (N, num_classes)."""

    path: Path
    names: Callable[[int], list | None]
    preparation: ImagePreparation
    probabilities: Callable[[np.ndarray], np.ndarray]


def open_classifier(path) -> Classifier:
    """The model at `path` (see `find_model`) as a `Classifier`; a `DamagedFile` when it
    cannot be read."""
    kind, found = find_model(path)
    return {"saved_model": _saved_model, "keras": _keras, "onnx": _onnx,
            "litert": _litert}[kind](found)


def _saved_model(folder):
    serve = load_serving_function(folder)
    size = tuple(serve.structured_input_signature[1]["images"].shape[1:3])
    return Classifier(folder, _names(lambda count: class_names(folder, count)),
                      exported_preparation(folder / "assets", size),
                      lambda images: serve(images=tf.constant(images))["probabilities"].numpy())


def _names(read):
    """Class names read lazily, once the class count is known."""
    cache = {}

    def names(count):
        if "names" not in cache:
            cache["names"] = read(count)
        return cache["names"]
    return names


def _keras(file):
    from keras_fastres.models import load_model
    return keras_classifier(load_model(file), file)


def keras_classifier(model, path=None, batch=256) -> Classifier:
    """A Keras model in memory as a `Classifier`. The model is called directly, `batch` images
    at a time, not through `predict()`: a model built under a multi-worker strategy would run
    `predict()` on every worker, and the chief classifies alone after the others have ended."""
    import keras
    names = getattr(model, "class_names", None)

    def probabilities(images):
        return np.concatenate([keras.ops.convert_to_numpy(model(
            images[i:i + batch].astype(np.float32), training=False))
            for i in range(0, len(images), batch)])
    return Classifier(path or Path(model.name), lambda count: names, preparation_of(model),
                      probabilities)


def _onnx(file):
    import json

    import onnxruntime
    try:
        session = onnxruntime.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own classes for damaged files
        raise DamagedFile(f"{file} is not a complete ONNX model: {summary(error)[:200]}") from None
    metadata = session.get_modelmeta().custom_metadata_map
    names = json.loads(metadata["class_names"]) if "class_names" in metadata else None
    size = tuple(session.get_inputs()[0].shape[1:3])
    return Classifier(file, lambda count: names,
                      exported_preparation(file, size, metadata.get("preparation")),
                      lambda images: session.run(["probabilities"], {"images": images})[0])


def _litert(file):
    from keras_fastres.serving.compact import litert_probabilities, litert_runner
    try:
        runner = litert_runner(file.read_bytes())
    except (ValueError, RuntimeError) as error:
        raise DamagedFile(f"{file} is not a complete LiteRT model: {summary(error)[:200]}") \
            from None
    images_input = runner.get_input_details()["images"]
    probabilities = litert_probabilities(runner)
    names_file = file.parent / CLASS_NAMES_FILE
    return Classifier(file, _names(lambda count: class_names(file.parent, count, names_file)),
                      exported_preparation(file.parent, tuple(images_input["shape"][1:3])),
                      probabilities)


def predict(export_dir, image_paths, top=3, on_error=None):
    """[(path, [(class name, probability), ...top]), ...] for each image file, by the model at
    `export_dir` (any format `find_model` reads). An image that cannot be read raises a
    `DamagedFile`, or, with `on_error`, is passed to `on_error(path, message)` and left out."""
    check_positive_integers(top=top)
    check_image_files(image_paths)
    classifier = open_classifier(export_dir)
    readable, pixels = [], []
    for path in image_paths:
        try:
            pixels.append(load_image(path, classifier.preparation))
            readable.append(path)
        except DamagedFile as error:
            if on_error is None:
                raise
            on_error(path, str(error))
    if not readable:
        return []
    # A batch at a time: 10,000 64x64 images in one call took 12.7 GB for a ResNet-20.
    probabilities = np.concatenate([np.asarray(classifier.probabilities(np.stack(
        pixels[i:i + BATCH]))) for i in range(0, len(pixels), BATCH)])
    names = classifier.names(probabilities.shape[-1])
    results = []
    for path, row in zip(readable, probabilities):
        best = np.argsort(row)[::-1][:top]
        results.append((path, [(names[i] if names else f"class {i}", float(row[i])) for i in best]))
    return results
