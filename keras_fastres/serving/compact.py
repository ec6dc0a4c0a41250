"""Small and fast exports: ONNX quantized to int8 for CPU servers, and LiteRT (TensorFlow Lite)
for phones, the web and microcontrollers, float32 or full integer; each checked against the
float model on the run's test split before it is published (`fastres-export --quantize int8`,
`--format litert`).

    <export-dir>/<version>/model.onnx       int8 (QDQ): uint8 images in, probabilities float32
                                            and classes int64 out, class names and image
                                            preparation in its metadata_props, as the float
                                            ONNX model
    <export-dir>/<version>/model.tflite     signature serving_default: images uint8
                                            [N, H, W, 3] in; out probabilities (float32, or
                                            uint8 in steps of 1/256 for int8) and classes int64
                     .../class_names.txt    one name per line (label i on line i + 1)
                     .../preparation.json   how image files become its input (size, resize)

Quantization is static: activation ranges calibrated on `CALIBRATION_IMAGES` images of the
run's training split (drawn with a seed), weights per output channel. The BNs are folded
first, as in every export.
"""

import logging
import os
import tempfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from keras_fastres.evaluation.evaluation import Evaluation, disagreements
from keras_fastres.preparation import PREPARATION_FILE
from keras_fastres.serving.export import (
    CLASS_NAMES_FILE,
    LITERT_FILE,
    ONNX_FILE,
    _input_size,
    _probabilities_fn,
    check_one_format,
    onnx_bytes,
    preparation_of,
    publish_file,
)
from keras_fastres.serving.folding import fold_batch_norms

log = logging.getLogger(__name__)

CALIBRATION_IMAGES = 256
MAX_ACCURACY_DROP = 1.0  # percentage points of test error a quantized model may add
QUANTIZATIONS = ("int8",)


class AccuracyDropped(RuntimeError):
    """A quantized model lost more test accuracy than allowed; it was not published."""


def calibration_images(split, count=CALIBRATION_IMAGES, seed=0):
    """`count` images of a split (all of them when it holds fewer), drawn with `seed`, in
    their split's order: uint8 (count, H, W, 3)."""
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(split.labels), min(count, len(split.labels)),
                                replace=False))
    return np.asarray(split.images[chosen])


def quantize_onnx(content: bytes, calibration: np.ndarray, batch: int = 32) -> bytes:
    """The float ONNX model `content` (export.onnx_bytes) quantized statically to int8 (QDQ,
    per-channel weights in 7 bits: on CPUs without VNNI onnxruntime sums uint8 x int8 pairs in
    saturating 16 bits, which full-range weights overflow; uint8 activations) with activation
    ranges calibrated on the uint8 images `calibration`; its metadata (class names, image
    mode) kept."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Images(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"images": calibration[i:i + batch]}
                                 for i in range(0, len(calibration), batch)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory(prefix="fastres-quantize-") as folder:
        float_file, prepared, quantized = (Path(folder, name) for name in (
            "float.onnx", "prepared.onnx", "int8.onnx"))
        float_file.write_bytes(content)
        quant_pre_process(str(float_file), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(quantized), Images(),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        reduce_range=True)
        model = onnx.load(str(quantized))
    metadata = {entry.key: entry.value for entry in onnx.load_from_string(content).metadata_props}
    del model.metadata_props[:]
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    _shorten_names(model.graph)
    return model.SerializeToString()


def _shorten_names(graph):
    """Names every value but the inputs and outputs `v<i>`, every node `n<i>`, and drops the
    shape annotations: TensorFlow's long scoped names, each written several times, were a
    fifth of a small int8 model's file (the values' names carry no meaning to a runtime)."""
    keep = {value.name for value in [*graph.input, *graph.output]}
    names: dict[str, str] = {}

    def short(name):
        if not name or name in keep:
            return name
        return names.setdefault(name, f"v{len(names)}")
    for initializer in graph.initializer:
        initializer.name = short(initializer.name)
    for index, node in enumerate(graph.node):
        node.name = f"n{index}"
        node.input[:] = [short(name) for name in node.input]
        node.output[:] = [short(name) for name in node.output]
    del graph.value_info[:]


def litert_bytes(model: keras.Model, quantize: str | None = None,
                 calibration: np.ndarray | None = None, fold_batch_norm: bool = True) -> bytes:
    """`model` as a LiteRT flatbuffer with one signature, serving_default: images uint8
    [N, H, W, 3] -> probabilities, classes. Float32 by default; `quantize="int8"`: full integer
    (every operation int8, the images' uint8 taken as they are: scale 1, zero point 0), its
    ranges calibrated on `calibration`, probabilities uint8 in steps of 1/256."""
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    check_quantize(quantize)
    if quantize and calibration is None:
        raise ValueError("int8 quantization needs calibration images.")
    height, width = _input_size(model)
    probabilities = _probabilities_fn(fold_batch_norms(model) if fold_batch_norm else model)
    # Full integer conversion quantizes float inputs: the graph takes float pixels and the
    # converter makes its input uint8; the float model casts uint8 itself.
    dtype = tf.float32 if quantize else tf.uint8

    def serve(images):
        result = tf.cast(probabilities(tf.cast(images, tf.float32)), tf.float32)
        return {"probabilities": result, "classes": tf.argmax(result, axis=-1)}
    function = tf.function(serve).get_concrete_function(
        tf.TensorSpec([None, height, width, 3], dtype, name="images"))
    # Frozen, then saved: LiteRT's calibration cannot read Keras's variables, and a SavedModel
    # gives the signature its input and output names.
    frozen = convert_variables_to_constants_v2(function)
    module = tf.Module()

    @tf.function(input_signature=[tf.TensorSpec([None, height, width, 3], dtype, name="images")])
    def signature(images):
        return tf.nest.pack_sequence_as(function.structured_outputs, frozen(images))
    module.signature = signature
    with tempfile.TemporaryDirectory(prefix="fastres-litert-") as folder:
        tf.saved_model.save(module, folder, signatures={"serving_default": signature})
        converter = tf.lite.TFLiteConverter.from_saved_model(folder)
        if quantize and calibration is not None:
            images = calibration.astype(np.float32)
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: ([images[i:i + 1]]
                                                        for i in range(len(images)))
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.uint8
            converter.inference_output_type = tf.uint8
        return converter.convert()


def check_quantize(quantize):
    if quantize not in (None, *QUANTIZATIONS):
        raise ValueError(f"quantize must be None or one of {QUANTIZATIONS}, got {quantize!r}.")


def compare(reference, candidate, split, batch=256):
    """Top-1 agreement of two classifiers (callables: uint8 images -> probabilities) on a
    split, and each one's test error (fractions), as `fastres-evaluate --compare` counts them
    (`evaluation.disagreements`)."""
    count = len(split.labels)
    first, second = (Evaluation(
        tuple(map(str, range(probabilities.shape[1]))), np.asarray(split.labels), probabilities,
        tuple(f"test image {i}" for i in range(count))) for probabilities in (
        np.concatenate([np.asarray(classify(np.asarray(split.images[i:i + batch])))
                        for i in range(0, count, batch)]) for classify in (reference, candidate)))
    return {"agreement": 1 - len(disagreements(first, second)) / count,
            "float_test_error": 1 - first.accuracy, "quantized_test_error": 1 - second.accuracy,
            "test_images": count}


def check_accuracy(comparison, max_drop=MAX_ACCURACY_DROP):
    """An AccuracyDropped when the quantized test error exceeds the float one by more than
    `max_drop` percentage points, with the numbers."""
    drop = 100 * (comparison["quantized_test_error"] - comparison["float_test_error"])
    if drop > max_drop:
        raise AccuracyDropped(
            f"The int8 model's test error is {100 * comparison['quantized_test_error']:.2f}% "
            f"against {100 * comparison['float_test_error']:.2f}% for the float model "
            f"(+{drop:.2f} points, more than --max-accuracy-drop {max_drop:g}; top-1 "
            f"agreement {100 * comparison['agreement']:.2f}%): not published.")


def onnx_classifier(content):
    """uint8 images -> probabilities, by onnxruntime on the ONNX model `content`."""
    import onnxruntime

    session = onnxruntime.InferenceSession(content, providers=["CPUExecutionProvider"])
    return lambda images: session.run(["probabilities"], {"images": images})[0]


def litert_classifier(content):
    """uint8 images -> probabilities, by the LiteRT interpreter on the flatbuffer `content`."""
    return litert_probabilities(litert_runner(content))


def litert_probabilities(runner):
    """uint8 images -> float probabilities by a LiteRT runner; an int8 model's uint8 output (in
    steps of 1/256) dequantized."""
    scale, zero = runner.get_output_details()["probabilities"]["quantization"]

    def probabilities(images):
        result = runner(images=images)["probabilities"]
        return (result.astype(np.float32) - zero) * scale if scale else result
    return probabilities


def litert_runner(content):
    """The serving_default signature runner of a LiteRT model (ai-edge-litert's interpreter,
    else TensorFlow's own), on every CPU."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        Interpreter = tf.lite.Interpreter
    runner = Interpreter(model_content=content, num_threads=os.cpu_count()
                         ).get_signature_runner("serving_default")
    images = runner.get_input_details()["images"]
    runner(images=np.zeros(images["shape"], images["dtype"]))  # warmed up
    return runner


def export_compact(model, export_dir, data, format="onnx", quantize=None, version="auto",
                   calibration_count=CALIBRATION_IMAGES, max_accuracy_drop=MAX_ACCURACY_DROP,
                   seed=0):
    """Writes `model` as int8 ONNX (`format="onnx", quantize="int8"`) or as LiteRT (float32,
    or int8 with `quantize`), calibrated on the training split of `data` (an `ImageData`) and,
    when quantized, checked against the float model on its test split: refused
    (`AccuracyDropped`, nothing written) when the test error rises by more than
    `max_accuracy_drop` points. Returns (the file written, the comparison or None)."""
    check_quantize(quantize)
    if version is not None:
        check_one_format(Path(export_dir), format)  # before the conversion's work
    if format == "onnx" and not quantize:
        raise ValueError("export_compact writes int8 ONNX; the float ONNX is export_onnx's.")
    if quantize and data is None:
        raise ValueError("int8 quantization needs the run's data (calibration, checking).")
    calibration = calibration_images(data.train, calibration_count, seed) if quantize else None
    comparison = None
    if format == "onnx":
        assert calibration is not None  # int8 ONNX only, checked above
        float_content = onnx_bytes(model)
        content = quantize_onnx(float_content, calibration)
        reference, candidate = onnx_classifier(float_content), onnx_classifier(content)
    else:
        content = litert_bytes(model, quantize, calibration)
        reference = (litert_classifier(litert_bytes(model)) if quantize else None)
        candidate = litert_classifier(content)
    if quantize:
        comparison = compare(reference, candidate, data.test)
        log.info("int8 against float on %d test images: top-1 agreement %.2f%%, test error "
                 "%.2f%% (float %.2f%%)", comparison["test_images"],
                 100 * comparison["agreement"], 100 * comparison["quantized_test_error"],
                 100 * comparison["float_test_error"])
        check_accuracy(comparison, max_accuracy_drop)
    if format == "onnx":
        target = publish_file(Path(export_dir), version, ONNX_FILE, content, kind="onnx")
    else:
        names = getattr(model, "class_names", None)
        beside = {PREPARATION_FILE: preparation_of(model).to_json()}
        if names:
            beside[CLASS_NAMES_FILE] = "".join(f"{name}\n" for name in names)
        target = publish_file(Path(export_dir), version, LITERT_FILE, content, beside,
                              kind="litert")
    return target, comparison
