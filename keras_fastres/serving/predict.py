"""Classify image files with an exported SavedModel, without a server (fastres-predict,
commands/predict.py).

Any image size: images are resized to the model's input as the training data was
(`data.decoding.decode_image`, in the model's resize mode: the SavedModel's
assets/resize.txt). Class names are the model's own (the SavedModel's
assets/class_names.txt); a model exported without names answers with class indices.
"""

from pathlib import Path

import numpy as np
import tensorflow as tf

from keras_fastres.console import check_positive_integers
from keras_fastres.data.decoding import RESIZE_MODES, decode_image
from keras_fastres.errors import DamagedFile, summary
from keras_fastres.serving.export import CLASS_NAMES_FILE, RESIZE_FILE, version_number


def find_saved_model(export_dir):
    """`export_dir` itself if it holds a SavedModel, else its highest numbered version; a
    ValueError that says what the folder holds instead (an ONNX export, a run)."""
    root = Path(export_dir)
    if (root / "saved_model.pb").is_file():
        return root
    versions = sorted((number, path) for path in root.glob("*")
                      if (number := version_number(path.name)) is not None
                      and (path / "saved_model.pb").is_file())
    if versions:
        return versions[-1][1]
    if list(root.glob("model.onnx")) or list(root.glob("[0-9]*/model.onnx")):
        hint = (" It holds an ONNX model, which onnxruntime serves; this command reads "
                "SavedModels: export one with fastres-export --format saved_model.")
    elif (root / "model.keras").is_file():
        hint = (f" It is a training run: pass {root / 'export'} if the run was exported "
                f"(--export), or export it first with fastres-export --model {root}.")
    else:
        hint = ""
    raise ValueError(f"No SavedModel in {root} nor in a numbered version below it." + hint)


def load_serving_function(path):
    """The `serving_default` signature of the SavedModel at `path`, checked to be one that
    fastres-export wrote (uint8 `images` in): a `DamagedFile` when it cannot be loaded, a
    ValueError when it is another kind of model, each naming the folder."""
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as error:  # damaged files fail in many ways (IndexError, DecodeError...)
        raise DamagedFile(f"{path} is not a complete SavedModel (truncated or damaged files?): "
                          f"{summary(error)[:200]}") from None
    serve = getattr(loaded, "signatures", {}).get("serving_default")
    inputs = serve.structured_input_signature[1] if serve is not None else {}
    if getattr(inputs.get("images"), "dtype", None) != tf.uint8:
        takes = ", ".join(f"{name} {spec.dtype.name}" for name, spec in inputs.items())
        raise ValueError(f"{path} is a SavedModel whose serving_default takes "
                         f"{takes or 'nothing'}, not the uint8 images of a fastres-export "
                         f"export; export the model with fastres-export.")
    return serve


def load_image(path, height, width, resize="stretch"):
    """uint8 [height, width, 3] pixels of an image file (any still format Pillow reads),
    upright and resized as the training images of an image folder are; a `DamagedFile` when
    it cannot be read."""
    try:
        return decode_image(path, height, width, resize=resize)
    except ValueError as error:
        raise DamagedFile(f"Cannot read {path}: it is not an image Pillow reads, or it is "
                          f"damaged ({error}).") from None


def resize_mode(saved_model):
    """The resize mode exported with the SavedModel at `saved_model` ("stretch" for an export
    older than the file); a `DamagedFile` naming the file when it holds another word."""
    resize_file = Path(saved_model) / "assets" / RESIZE_FILE
    if not resize_file.is_file():
        return "stretch"
    word = resize_file.read_text(encoding="utf-8", errors="replace").strip()
    if word not in RESIZE_MODES:
        raise DamagedFile(f"{resize_file} says {word[:40]!r}, not one of {RESIZE_MODES}; "
                          f"export the model again.")
    return word


def class_names(saved_model, num_classes):
    """The `num_classes` class names exported with the SavedModel at `saved_model`, or None;
    a `DamagedFile` naming the file when it does not hold one UTF-8 line per class. Lines
    end at "\n" only, as the export writes them."""
    names_file = Path(saved_model) / "assets" / CLASS_NAMES_FILE
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
        if not path.is_file():
            raise ValueError(f"{path}: no such image file.")


def predict(export_dir, image_paths, top=3):
    """[(path, [(class name, probability), ...top]), ...] for each image file."""
    check_positive_integers(top=top)
    check_image_files(image_paths)
    saved_model = find_saved_model(export_dir)
    serve = load_serving_function(saved_model)
    height, width = serve.structured_input_signature[1]["images"].shape[1:3]
    resize = resize_mode(saved_model)
    images = tf.constant(np.stack([load_image(path, height, width, resize)
                                   for path in image_paths]))
    probabilities = serve(images=images)["probabilities"].numpy()
    names = class_names(saved_model, probabilities.shape[-1])
    results = []
    for path, row in zip(image_paths, probabilities):
        best = np.argsort(row)[::-1][:top]
        results.append((path, [(names[i] if names else f"class {i}", float(row[i])) for i in best]))
    return results
