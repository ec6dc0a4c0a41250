"""keras_fastres: the paper "Simplified residual structure and fast deep residual networks" in Keras 3.

Models take raw images `(batch, H, W, 3)` (CIFAR's 32x32 by default) with pixel values in
[0, 255] (normalisation is a layer inside the model) and return class probabilities
`(batch, num_classes)`. `load_cifar` and `load_image_folder` load data sets into memory.

Importing the package registers its layers with Keras, which `keras.saving.load_model` of a
FastResNet `.keras` file needs (Keras imports no third-party module when it loads a file).
The models run on every Keras backend and import no TensorFlow; the data loaders and the
exports are TensorFlow's and import it when first used (`keras_fastres.load_cifar`...).
"""

import importlib

from keras_fastres.utils.console import quiet_tensorflow_start, started_as_command

with quiet_tensorflow_start():  # only in this package's commands; see utils/console.py
    if started_as_command():
        import tensorflow  # noqa: F401 (every command needs it: its start-up noise hidden)
    from keras_fastres.batch_norm import BatchNorm
    from keras_fastres.blocks import (
        BLOCKS,
        PreactBlock,
        ResidualBlock,
        Type1Block,
        Type2Block,
        V1Block,
    )
    from keras_fastres.models import (
        FastResNet,
        FastResNet20,
        FastResNet32,
        FastResNet44,
        FastResNet56,
        FastResNet110,
        FastResNet668,
        FastResNet1202,
        load_model,
    )
    from keras_fastres.preparation import ImagePreparation
    from keras_fastres.serving.folding import fold_batch_norms

VARIANTS = tuple(BLOCKS)  # "v1", "preact", "type1", "type2"

__version__ = "0.3.0"

# TensorFlow's side of the API, imported on first use.
_LAZY = {
    "ImageData": "keras_fastres.data",
    "load_cifar": "keras_fastres.data",
    "load_image_folder": "keras_fastres.data",
    "export_saved_model": "keras_fastres.serving.export",
    "export_onnx": "keras_fastres.serving.export",
    "evaluate": "keras_fastres.evaluation",
    "Evaluation": "keras_fastres.evaluation",
}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'keras_fastres' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *_LAZY])


__all__ = [
    "FastResNet", "FastResNet20", "FastResNet32", "FastResNet44", "FastResNet56",
    "FastResNet110", "FastResNet668", "FastResNet1202", "load_model", "ImagePreparation",
    "export_saved_model", "export_onnx", "fold_batch_norms",
    "load_cifar", "load_image_folder", "ImageData", "evaluate", "Evaluation",
    "ResidualBlock", "V1Block", "PreactBlock", "Type1Block", "Type2Block", "VARIANTS",
    "BatchNorm",
]
