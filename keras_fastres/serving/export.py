"""Export for serving: a TensorFlow SavedModel (TF Serving, tf.saved_model.load, C++...) or an
ONNX model (onnxruntime and other ONNX runtimes), neither needing this package or Keras.

SavedModel signatures (the batch dimension is None: any batch size, 1 included):
    serving_default  images: uint8 [None, H, W, 3], raw pixels as a PNG/JPEG decoder gives them
    serving_float    images: float32 [None, H, W, 3], pixel values in [0, 255]
    serving_bytes    image_bytes: string [None], encoded JPEG, PNG, GIF, BMP or WebP files of any
                     size, decoded and resized in the graph as training did (serving/decode.py)
All return {"probabilities": float32 [None, num_classes], "classes": int64 [None]}, and, for a
model with class names, "class_name": string [None], the top class's name; the names are also in
the asset file assets/class_names.txt, one per line (label i on line i + 1), as TF Serving's
classification examples keep them. The ONNX model has serving_default's input and its
probabilities and classes, and the class names as a JSON list in its metadata_props
("class_names").

How image files become the model's input (its `ImagePreparation`: the size and the resize
mode, stretch, crop or pad) travels too, so that clients prepare new images the same way: the
SavedModel's assets/preparation.json (and its serving_bytes signature prepares by it), the ONNX
model's metadata_props ("preparation", the same JSON).

By default every BatchNorm that directly follows a convolution is folded into it
(`folding.fold_batch_norms`): type1 keeps only its final BN, preact one per block plus the
final one, v1 none.

The command line is fastres-export (commands/export.py).
"""

import json
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path

import keras
import tensorflow as tf

from keras_fastres.errors import summary, tensorflow_reason
from keras_fastres.preparation import ImagePreparation
from keras_fastres.serving.folding import fold_batch_norms
from keras_fastres.utils.files import open_new, remove_leftovers, temporary_sibling
from keras_fastres.utils.machine import require_tensorflow_backend

SAVED_MODEL_FILE = "saved_model.pb"  # in <export-dir>/<version>/, TF Serving's layout
LITERT_FILE = "model.tflite"  # in <export-dir>/<version>/
ONNX_FILE = "model.onnx"  # in <export-dir>/<version>/, the layout Triton's ONNX backend reads
ONNX_OPSET = 17
FORMATS = ("saved_model", "onnx", "litert")
CLASS_NAMES_FILE = "class_names.txt"  # the SavedModel's asset: one class name per line


def _probabilities_fn(model):
    """Class probabilities of `model` on float pixels, whatever its last activation."""
    activation = getattr(model.layers[-1], "activation", None)
    if activation is keras.activations.softmax:
        return lambda images: model(images, training=False)
    if activation in (None, keras.activations.linear):
        return lambda images: tf.nn.softmax(model(images, training=False))
    raise ValueError(f"The model's last layer has activation {activation.__name__}; export "
                     f"needs softmax probabilities or logits.")


def _input_size(model):
    """(height, width) of a model's images, which export needs fixed and RGB."""
    height, width, channels = model.input_shape[1:]
    if channels != 3 or height is None or width is None:
        raise ValueError(f"export needs a model with a fixed (H, W, 3) input; got input shape "
                         f"{model.input_shape}. Build it with input_shape=(32, 32, 3).")
    return height, width


def _serving_function(model, fold_batch_norm, empty_batches=True):
    """`serve`: images (uint8 or float32 [batch, H, W, 3]) -> {"probabilities", "classes"},
    checking the image shape at call time, running `model` or its folded copy.
    With `empty_batches`, a batch of 0 images is answered with empty outputs: TensorFlow's
    oneDNN convolutions fail on one, so the model runs on one blank image instead and its
    answer is dropped. (onnxruntime needs no such guard.)"""
    height, width = _input_size(model)
    served = fold_batch_norms(model) if fold_batch_norm else model
    probabilities = _probabilities_fn(served)
    expected = f"[batch, {height}, {width}, 3]"

    def serve(images):
        # The signature's static shape is not enforced at call time, so check (never resize).
        # Padding the shape with -1 makes one comparison catch a wrong rank as well.
        shape = tf.concat([tf.shape(images), [-1] * 5], axis=0)[1:5]
        check = tf.debugging.assert_equal(
            shape, tf.constant([height, width, 3, -1]),
            message=f"images must have shape {expected}; resize them to {height}x{width} RGB "
                    f"before calling this model")
        checks = [check]
        if images.dtype.is_floating:  # NaN pixels would still get a confident class
            finite = tf.debugging.assert_all_finite(
                images, "images must be finite pixel values in [0, 255]; got NaN or infinity")
            message = ("images must be pixel values in [0, 255] (raw pixels, not scaled: a 0-1 "
                       "scaled image is valid but answers wrongly); got a value ")
            with tf.control_dependencies([finite]):  # NaN is named as NaN, not as a range
                low = tf.debugging.assert_greater_equal(
                    images, tf.constant(0, images.dtype), message=message + "below 0")
                high = tf.debugging.assert_less_equal(
                    images, tf.constant(255, images.dtype), message=message + "above 255")
            checks += [finite, low, high]
        # Everything below waits for the checks: a graph runs independent ops in any order,
        # and a wrong rank would otherwise fail first, and obscurely, in the padding.
        with tf.control_dependencies(checks):
            images = tf.identity(images)
        count = tf.shape(images)[0]
        if empty_batches:  # one blank image appended to an empty batch; nothing to others
            images = tf.pad(images, [[0, tf.maximum(1 - count, 0)], [0, 0], [0, 0], [0, 0]])
        result = tf.cast(probabilities(tf.cast(images, tf.float32)), tf.float32)
        if empty_batches:
            result = result[:count]
        return {"probabilities": result, "classes": tf.argmax(result, axis=-1)}
    return serve


MAX_VERSION = 2 ** 63 - 1  # TF Serving reads versions as int64


def version_number(name):
    """The version a folder's name is, as TF Serving reads it (ASCII digits only: `²` or `١`
    are no version), or None."""
    return int(name) if re.fullmatch(r"[0-9]+", name) else None


def _next_version(root):
    versions = [version_number(p.name) for p in root.iterdir()] if root.exists() else []
    return max((v for v in versions if v is not None), default=0) + 1


def _check_version(version):
    if not (version in ("auto", None) or (isinstance(version, int) and not isinstance(
            version, bool) and 1 <= version <= MAX_VERSION)):
        raise ValueError(f"version must be 'auto', an integer from 1 to {MAX_VERSION} (TF "
                         f"Serving's int64) or None; got {version!r}.")


def _exists_error(target):
    return FileExistsError(f"{target} already exists; a new version never overwrites an old "
                           f"one. Choose another version or export directory.")


VERSION_FILES = {"saved_model": SAVED_MODEL_FILE, "onnx": ONNX_FILE, "litert": LITERT_FILE}


def check_one_format(root, kind):
    """A ValueError when the base folder `root` holds versions of another format than `kind`:
    a server loads the highest version of a base (TF Serving a SavedModel, Triton its
    backend's file), so one base holds one format."""
    if not root.is_dir():
        return
    for folder in sorted(root.iterdir()):
        if version_number(folder.name) is None:
            continue
        for other, name in VERSION_FILES.items():
            if other != kind and (folder / name).is_file():
                raise ValueError(
                    f"{root} holds {other} versions ({folder.name}/{name}); a server loads a "
                    f"base's highest version, so a {kind} version there would break it. Export "
                    f"into another --export-dir, e.g. {root}-{kind}.")


def publish(export_dir, version, write, kind=None):
    """Writes one model with `write(folder)` into a hidden temporary folder, then claims its
    place in one atomic rename: `export_dir/<version>` (TF Serving's and Triton's layout), the
    next free version for "auto", or `export_dir` itself for None. A rename onto a folder that
    is not empty fails, so two exports never claim one version: with "auto" the later one takes
    the next version, otherwise it raises FileExistsError. A published version is never
    written into, and an error or a kill leaves nothing where a server looks (the next export
    removes what a killed one left). `kind` (a VERSION_FILES key): refused where the base
    holds versions of another format (`check_one_format`). Returns the published folder."""
    _check_version(version)
    root = Path(export_dir)
    if root.exists() and not root.is_dir():
        raise ValueError(f"The export directory {root} is a file; give a folder (a new one, or "
                         f"one holding numbered versions).")
    if kind is not None and version is not None:
        check_one_format(root, kind)
    place = root.parent if version is None else root
    fixed = root if version is None else None if version == "auto" else root / str(version)
    if fixed is not None and fixed.exists():
        raise _exists_error(fixed)  # before any work
    place.mkdir(parents=True, exist_ok=True)
    remove_leftovers(place)
    # Named after the thread too: two exports from one process must not share it.
    temporary = temporary_sibling(place / f"export-{threading.get_ident()}")
    temporary.mkdir()
    try:
        try:
            write(temporary)
        except tf.errors.OpError as error:  # a full disk under TensorFlow's writer
            raise OSError(f"Could not write the export into {place}: "
                          f"{tensorflow_reason(error.message)}") from None
        except OSError as error:  # a full disk says "[Errno 28]" and no file: name the place
            raise OSError(f"Could not write the export into {place}: {summary(error)}") \
                from None
        while True:
            target = fixed or root / str(_next_version(root))
            try:
                os.rename(temporary, target)
                return target
            except OSError:
                if not target.exists():
                    raise  # not a race for the version: a permission, a full disk...
                if fixed is not None:
                    raise _exists_error(target) from None
                # Another export took this version meanwhile: take the next one.
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def export_saved_model(model: keras.Model, export_dir: str | os.PathLike,
                       version: int | str | None = "auto",
                       fold_batch_norm: bool = True) -> Path:
    """Writes `model` as a TensorFlow SavedModel that serves without this package or Keras.

    Args:
        model: a Keras model taking float images `(batch, H, W, 3)` in [0, 255] and returning
            softmax probabilities or logits `(batch, num_classes)`, e.g. `FastResNet(...)`.
        export_dir: where to write. With a version, this is the model's base path in TF
            Serving's layout and the SavedModel goes to `export_dir/<version>/`.
        version: "auto" (default) for the next integer version after the existing ones (1 for a
            new directory), an integer for that version, or None to write `export_dir` itself.
        fold_batch_norm: fold every BN that directly follows a convolution into it (default;
            see `fold_batch_norms`). The answers are the same to float rounding (1e-5).

    Returns:
        The directory holding `saved_model.pb`.

    Nothing is ever overwritten: an existing target raises `FileExistsError`. The SavedModel is
    written into a hidden temporary folder and renamed into place only when complete, so an
    error or a crash leaves no half-written model where a server looks, and two exports at once
    take two versions (`publish`).
    """
    require_tensorflow_backend("SavedModel export")
    height, width = _input_size(model)
    _check_version(version)
    serve = _serving_function(model, fold_batch_norm)

    names = getattr(model, "class_names", None)
    with tempfile.TemporaryDirectory() as assets:
        # The SavedModel's object graph holds only what the signatures use: the variables they
        # capture and the class-name table (not the Keras objects, nor an optimizer's state).
        root = tf.Module()
        if names:
            # A table read from the names file: the SavedModel keeps the file as its asset.
            names_file = Path(assets) / CLASS_NAMES_FILE
            names_file.write_text("".join(f"{name}\n" for name in names), encoding="utf-8")
            root.table = tf.lookup.StaticHashTable(tf.lookup.TextFileInitializer(
                str(names_file), tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER, tf.string,
                tf.lookup.TextFileIndex.WHOLE_LINE), default_value="")
            serve = _naming_top_class(serve, root.table)
        preparation = preparation_of(model)

        def serve_bytes(image_bytes):
            return serve(preparation.prepare_bytes(image_bytes))
        # Each traced once, as a concrete function (a tf.function given as a signature would
        # be traced again when saved).
        images = tf.function(serve)
        signatures = {name: images.get_concrete_function(
            tf.TensorSpec([None, height, width, 3], dtype, name="images"))
            for name, dtype in (("serving_default", tf.uint8), ("serving_float", tf.float32))}
        signatures["serving_bytes"] = tf.function(serve_bytes).get_concrete_function(
            tf.TensorSpec([None], tf.string, name="image_bytes"))
        captured = {id(v): v for function in signatures.values() for v in function.variables}
        root.weights = list(captured.values())
        for name, function in signatures.items():  # also `loaded.serving_default(images=...)`
            setattr(root, name, function)

        def write(folder):
            tf.saved_model.save(root, str(folder), signatures=signatures)
            (folder / "assets").mkdir(exist_ok=True)
            preparation.save(folder / "assets")
        return publish(export_dir, version, write, "saved_model")


def preparation_of(model) -> ImagePreparation:
    """How image files become `model`'s input: a FastResNet's `preparation`; for another
    Keras model, its input size stretched."""
    preparation = getattr(model, "preparation", None)
    return preparation if isinstance(preparation, ImagePreparation) else ImagePreparation(
        _input_size(model))


def _naming_top_class(serve, table):
    def serve_with_names(images):
        outputs = serve(images)
        return {**outputs, "class_name": table.lookup(outputs["classes"])}
    return serve_with_names


def export_onnx(model: keras.Model, path: str | os.PathLike, fold_batch_norm: bool = True,
                version: int | str | None = None) -> Path:
    """Writes `model` as an ONNX model for onnxruntime (or any ONNX runtime), without Keras.

    Input `images`: uint8 `[N, H, W, 3]`, raw pixels; outputs `probabilities` float32
    `[N, num_classes]` and `classes` int64 `[N]`: serving_default of the SavedModel. Opset 17.
    BNs are folded as in `export_saved_model`. Needs the `onnx` extra (tf2onnx, onnx):
    `pip install "keras-fastres[onnx]"`.

    Args:
        model: as for `export_saved_model`.
        path: with version None (default), the .onnx file to write; with a version, the base
            directory, and the model goes to `path/<version>/model.onnx` (Triton's layout).
        fold_batch_norm: fold every BN that directly follows a convolution into it (default).
        version: None, "auto" or an integer, as for `export_saved_model`.

    Returns:
        The .onnx file written. Never overwritten (FileExistsError); it appears only when
        complete.
    """
    require_tensorflow_backend("ONNX export")
    _input_size(model)
    _check_version(version)
    target = Path(path)
    if version is None and target.exists():
        raise _exists_error(target)
    if version is not None:
        check_one_format(target, "onnx")  # before the conversion's work
    return publish_file(target, version, ONNX_FILE, onnx_bytes(model, fold_batch_norm),
                        kind="onnx")


def onnx_bytes(model: keras.Model, fold_batch_norm: bool = True) -> bytes:
    """The ONNX model `export_onnx` writes, as bytes."""
    try:
        import tf2onnx
        from tensorflow.python.framework.convert_to_constants import (
            convert_variables_to_constants_v2,
        )
    except ImportError:
        raise ImportError('ONNX export needs tf2onnx: pip install "keras-fastres[onnx]".') from None
    height, width = _input_size(model)
    serve = _serving_function(model, fold_batch_norm, empty_batches=False)
    function = tf.function(serve).get_concrete_function(
        tf.TensorSpec([None, height, width, 3], tf.uint8, name="images"))
    # Frozen first: converted with its variables (and the Normalization layer's constants) as
    # captures, tf2onnx made them extra graph inputs that onnxruntime then demands.
    frozen = convert_variables_to_constants_v2(function)
    outputs = dict(zip(sorted(function.structured_outputs), (t.name for t in frozen.outputs)))
    proto, _ = tf2onnx.convert.from_graph_def(
        frozen.graph.as_graph_def(), input_names=[frozen.inputs[0].name],
        output_names=[outputs["probabilities"], outputs["classes"]], opset=ONNX_OPSET)
    _rename_values(proto.graph, {frozen.inputs[0].name: "images",
                                 **{tensor: name for name, tensor in outputs.items()}})
    names = getattr(model, "class_names", None)
    if names:
        entry = proto.metadata_props.add()
        entry.key, entry.value = "class_names", json.dumps(names)
    entry = proto.metadata_props.add()
    entry.key, entry.value = "preparation", preparation_of(model).to_json()
    return proto.SerializeToString()


def publish_file(target, version, name, content, beside=None, kind=None):
    """Writes `content` as `target` (version None) or as `target/<version>/name` (see
    `publish`), with the files of `beside` ({name: text}) next to it; returns the file."""
    def write(folder):
        (folder / name).write_bytes(content)
        for other, text in (beside or {}).items():
            (folder / other).write_text(text, encoding="utf-8")
    if version is not None:
        return publish(target, version, write, kind) / name
    if beside:
        raise ValueError(f"{name} comes with {', '.join(beside)}: export it into a versioned "
                         f"layout (a version, or 'auto').")
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(target.parent)
    temporary = temporary_sibling(target)
    try:
        with open_new(temporary, "wb") as file:  # never through a link planted at its name
            file.write(content)
        os.link(temporary, target)  # atomic, and fails if the target appeared meanwhile
    except FileExistsError:
        raise _exists_error(target) from None
    finally:
        temporary.unlink(missing_ok=True)
    return target


def _rename_values(graph, names):
    """Renames ONNX graph values (TensorFlow's "images:0", "Identity:0") wherever they occur."""
    for value in [*graph.input, *graph.output]:
        value.name = names.get(value.name, value.name)
    for node in graph.node:
        node.input[:] = [names.get(name, name) for name in node.input]
        node.output[:] = [names.get(name, name) for name in node.output]
