"""SavedModel export for serving with plain TensorFlow (TF Serving, tf.saved_model.load, C++...).

Signatures (the batch dimension is None: any batch size, 1 included):
    serving_default  images: uint8 [None, H, W, 3], raw pixels as a PNG/JPEG decoder gives them
    serving_float    images: float32 [None, H, W, 3], pixel values in [0, 255]
Both return {"probabilities": float32 [None, num_classes], "classes": int64 [None]}.

Command line, for a finished recipe run (or any .keras file of a FastResNet):
    python -m keras_fastres.export --model runs/cifar10-resnet110-type1 --export-dir serving/cifar10
"""

import argparse
import os
import shutil
import sys
from pathlib import Path

import keras
import tensorflow as tf

MODEL_FILE = "model.keras"  # what the recipes save at the end of a run


def require_tensorflow_backend(what):
    """A ValueError naming the backend when Keras does not run on TensorFlow: the recipes
    (tf.distribute, tf.data) and the SavedModel export need it; the models do not."""
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise ValueError(
            f"{what} needs Keras's TensorFlow backend, and KERAS_BACKEND selects {backend!r}. "
            f"Run it with KERAS_BACKEND=tensorflow (the models themselves build, train and load "
            f"on every backend).")


def _probabilities_fn(model):
    """Class probabilities of `model` on float pixels, whatever its last activation."""
    activation = getattr(model.layers[-1], "activation", None)
    if activation is keras.activations.softmax:
        return lambda images: model(images, training=False)
    if activation in (None, keras.activations.linear):
        return lambda images: tf.nn.softmax(model(images, training=False))
    raise ValueError(f"The model's last layer has activation {activation.__name__}; export "
                     f"needs softmax probabilities or logits.")


def _next_version(root):
    versions = [int(p.name) for p in root.iterdir() if p.name.isdigit()] if root.exists() else []
    return max(versions, default=0) + 1


def export_saved_model(model, export_dir, version="auto"):
    """Writes `model` as a TensorFlow SavedModel that serves without this package or Keras.

    Args:
        model: a Keras model taking float images `(batch, H, W, 3)` in [0, 255] and returning
            softmax probabilities or logits `(batch, num_classes)`, e.g. `FastResNet(...)`.
        export_dir: where to write. With a version, this is the model's base path in TF
            Serving's layout and the SavedModel goes to `export_dir/<version>/`.
        version: "auto" (default) for the next integer version after the existing ones (1 for a
            new directory), an integer for that version, or None to write `export_dir` itself.

    Returns:
        The directory holding `saved_model.pb`.

    Nothing is ever overwritten: an existing target raises `FileExistsError`. The SavedModel is
    written into a hidden temporary sibling and renamed into place only when complete, so an
    error or a crash leaves no half-written model where a server looks.
    """
    require_tensorflow_backend("SavedModel export")
    height, width, channels = model.input_shape[1:]
    if channels != 3 or height is None or width is None:
        raise ValueError(f"export needs a model with a fixed (H, W, 3) input; got input shape "
                         f"{model.input_shape}. Build it with input_shape=(32, 32, 3).")
    root = Path(export_dir)
    if version is None:
        target = root
    elif version == "auto":
        target = root / str(_next_version(root))
    elif isinstance(version, int) and not isinstance(version, bool) and version >= 1:
        target = root / str(version)
    else:
        raise ValueError(f"version must be 'auto', a positive integer or None; got {version!r}.")
    if target.exists():
        raise FileExistsError(f"{target} already exists; a new version never overwrites an old "
                              f"one. Choose another version or export directory.")

    probabilities = _probabilities_fn(model)

    expected = f"[batch, {height}, {width}, {channels}]"

    def serve(images):
        # The signature's static shape is not enforced at call time, so check (never resize).
        # Padding the shape with -1 makes one comparison catch a wrong rank as well.
        shape = tf.concat([tf.shape(images), [-1] * 5], axis=0)[1:5]
        tf.debugging.assert_equal(
            shape, tf.constant([height, width, channels, -1]),
            message=f"images must have shape {expected}; resize them to {height}x{width} RGB "
                    f"before calling this model")
        pixels = tf.cast(images, tf.float32)
        result = tf.cast(probabilities(pixels), tf.float32)
        return {"probabilities": result, "classes": tf.argmax(result, axis=-1)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    for name, dtype in (("serving_default", tf.uint8), ("serving_float", tf.float32)):
        archive.add_endpoint(name, tf.function(serve), input_signature=[
            tf.TensorSpec([None, height, width, channels], dtype, name="images")])

    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.parent / f".{target.name}.incomplete-{os.getpid()}"
    try:
        archive.write_out(str(temporary), verbose=False)
        os.rename(temporary, target)  # atomic on one file system; fails if target appeared
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return target


def load_for_export(path):
    """The Keras model of a recipe run directory, or of a .keras file. (The block layers it
    needs are registered: importing this module imported the keras_fastres package.)"""
    path = Path(path)
    model_file = path / MODEL_FILE if path.is_dir() else path
    if not model_file.is_file():
        raise FileNotFoundError(
            f"No model at {model_file}. Give a finished recipe run directory (it holds "
            f"{MODEL_FILE}) or a .keras file.")
    return keras.saving.load_model(model_file)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m keras_fastres.export",
        description="Export a trained FastResNet as a SavedModel for TF Serving.")
    parser.add_argument("--model", required=True,
                        help=f"a recipe run directory (holding {MODEL_FILE}) or a .keras file")
    parser.add_argument("--export-dir", required=True,
                        help="base directory; the SavedModel goes to <export-dir>/<version>/")
    parser.add_argument("--version", type=int, default=None,
                        help="version number (default: the next free one)")
    args = parser.parse_args(argv)
    try:
        require_tensorflow_backend("Export")
        model = load_for_export(args.model)
        target = export_saved_model(model, args.export_dir, args.version or "auto")
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"Wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
