"""keras_fastres: the paper "Simplified residual structure and fast deep residual networks" in Keras 3.

Models take raw images `(batch, H, W, 3)` (CIFAR's 32x32 by default) with pixel values in
[0, 255] (normalisation is a layer inside the model) and return class probabilities
`(batch, num_classes)`. `load_cifar` and `load_image_folder` load data sets into memory.

Importing the package registers its layers with Keras, which `keras.saving.load_model` of a
FastResNet `.keras` file needs (Keras imports no third-party module when it loads a file).
"""

from keras_fastres.console import quiet_tensorflow_start

with quiet_tensorflow_start():  # only in this package's commands; see console.py
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
    )
    from keras_fastres.data import ImageData, load_cifar, load_image_folder
    from keras_fastres.serving.export import export_onnx, export_saved_model
    from keras_fastres.serving.folding import fold_batch_norms

VARIANTS = tuple(BLOCKS)  # "v1", "preact", "type1", "type2"

__version__ = "0.1.0"

__all__ = [
    "FastResNet", "FastResNet20", "FastResNet32", "FastResNet44", "FastResNet56",
    "FastResNet110", "FastResNet668", "FastResNet1202",
    "export_saved_model", "export_onnx", "fold_batch_norms",
    "load_cifar", "load_image_folder", "ImageData",
    "ResidualBlock", "V1Block", "PreactBlock", "Type1Block", "Type2Block", "VARIANTS",
    "BatchNorm",
]
