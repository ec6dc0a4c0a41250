"""FastResNet(depth, variant): the paper's CIFAR network as a functional Keras model.

    raw pixels in [0, 255] -> Normalization (per-channel training-set mean and std)
    -> stem Conv3x3(16)              (v1: followed by BN-ReLU)
    -> stage 1: n blocks, 16 filters
    -> stage 2: n blocks, 32 filters, the first with stride 2
    -> stage 3: n blocks, 64 filters, the first with stride 2
    -> BN-ReLU                       (not v1: its blocks already end in ReLU)
    -> global average pooling -> Dense(num_classes)

Depth counts the convolutions on the longest path: 6n + 2.
"""

import os
import warnings
import zipfile
import zlib
from pathlib import Path

import keras
from keras import layers

from keras_fastres.batch_norm import bn_layer, check_implementation
from keras_fastres.blocks import BLOCKS, check_drop_path_rate, check_shortcut, kernel_regularizer
from keras_fastres.errors import DamagedFile, summary
from keras_fastres.preparation import ImagePreparation

STAGE_FILTERS = (16, 32, 64)
MODEL_FILE = "model.keras"  # what a training run saves at its end

# Per-channel mean and standard deviation of the 50,000 training images, on the 0-255 scale.
CIFAR_STATS = {
    "cifar10": ((125.307, 122.950, 113.865), (62.993, 62.089, 66.705)),
    "cifar100": ((129.304, 124.070, 112.434), (68.170, 65.392, 70.418)),
}

# (convolution, BN) layers where the BN directly follows the convolution, outside the blocks:
# v1's stem. At inference such a BN folds into the convolution (export.py).
CONV_BN_PAIRS = (("stem_conv", "stem_bn"),)

# The two stride-2 stages halve the input twice.
MIN_SPATIAL_SIZE = 4


def blocks_per_stage(depth):
    """n for a depth of 6n + 2, or a ValueError that lists valid depths."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(
            f"depth must be an integer of the form 6n + 2 with n >= 1 (8, 14, 20, 32, 44, 56, "
            f"110, 668, 1202, ...), got {depth!r}.")
    return (depth - 2) // 6


def _normalization_stats(normalization, num_classes):
    if normalization == "auto":
        if num_classes not in (10, 100):
            warnings.warn(
                f"FastResNet(num_classes={num_classes}, normalization='auto') standardises its "
                f"input with CIFAR-10's mean and std; pass normalization=(mean, std) of your "
                f"images (per channel, 0-255 scale) or None.", stacklevel=4)
        normalization = "cifar100" if num_classes == 100 else "cifar10"
    if normalization is None:
        return None
    if isinstance(normalization, str):
        if normalization not in CIFAR_STATS:
            raise ValueError(
                f"normalization must be 'auto', one of {sorted(CIFAR_STATS)}, a (mean, std) pair "
                f"of per-channel sequences, or None; got {normalization!r}.")
        return CIFAR_STATS[normalization]
    try:
        mean, std = normalization
        mean, std = [float(m) for m in mean], [float(s) for s in std]
    except (TypeError, ValueError):
        raise ValueError(
            "normalization given as statistics must be a (mean, std) pair of per-channel "
            f"sequences, e.g. ((125.3, 123.0, 113.9), (63.0, 62.1, 66.7)); got {normalization!r}."
        ) from None
    if len(mean) != len(std) or min(std) <= 0:
        raise ValueError(f"normalization needs one positive std per mean; got {normalization!r}.")
    return mean, std


def _check_input_shape(input_shape, channels):
    if not (isinstance(input_shape, (tuple, list)) and len(input_shape) == 3):
        raise ValueError(
            f"input_shape must be (height, width, channels), e.g. (32, 32, 3); got {input_shape!r}.")
    height, width, image_channels = input_shape
    for size in (height, width):
        if size is not None and (not isinstance(size, int) or size < MIN_SPATIAL_SIZE):
            raise ValueError(
                f"input_shape height and width must be None or integers >= {MIN_SPATIAL_SIZE} "
                f"(two stride-2 stages halve them); got {input_shape!r}.")
    if not isinstance(image_channels, int) or image_channels < 1:
        raise ValueError(f"input_shape channels must be a positive integer; got {input_shape!r}.")
    if channels is not None and image_channels != channels:
        raise ValueError(
            f"input_shape has {image_channels} channels but the normalization statistics have "
            f"{channels}; pass normalization=(mean, std) with {image_channels} values each, "
            f"or normalization=None.")


def _check_class_names(class_names, num_classes):
    if class_names is None:
        return None
    names = list(class_names) if isinstance(class_names, (list, tuple)) else None
    # One line by every Unicode definition: the exports write them one per line.
    if names is None or not all(isinstance(n, str) and n and n.splitlines() == [n]
                                for n in names):
        raise ValueError(f"class_names must be a list of non-empty one-line strings, got "
                         f"{class_names!r}.")
    if len(names) != num_classes:
        raise ValueError(f"class_names has {len(names)} names for num_classes={num_classes}; "
                         f"give one name per class.")
    return names


def check_variant(variant):
    """A ValueError naming the variants unless `variant` is one of them."""
    if variant not in BLOCKS:
        raise ValueError(f"variant must be one of {sorted(BLOCKS)}, got {variant!r}.")


@keras.saving.register_keras_serializable(package="keras_fastres")
class FastResNet(keras.Model):
    """A CIFAR residual network of the paper "Simplified residual structure and fast deep
    residual networks": a functional `keras.Model` that remembers how it was made.

    `get_config()` returns the constructor's arguments (keras-hub's pattern), so
    `FastResNet.from_config(model.get_config())` and a `.keras` file saved and loaded give back
    a `FastResNet` of the same depth, variant and settings. `.keras` files written by 0.1.0
    (where the model was a plain functional `keras.Model`) still load, as such a model.

    Args:
        depth: 6n + 2 convolution layers, n blocks per stage (20, 32, 44, 56, 110, 668, 1202...).
        variant: the residual block. "type1" (default) is the paper's FastResNet block, the
            pre-activation block without its first BN-ReLU; "preact" is the pre-activation block
            (the paper's "basic" baseline); "type2" drops the second BN-ReLU instead (the paper's
            ablation); "v1" is the original post-activation ResNet block.
        num_classes: number of output classes (10 for CIFAR-10, 100 for CIFAR-100).
        input_shape: (height, width, channels) of one image; height and width may be None.
        shortcut: "A" (subsample and zero-pad channels, no parameters; the default, as in He et
            al.'s CIFAR networks) or "B" (1x1 projection) at the two stride-2 blocks.
        drop_path_rate: stochastic depth; the last block drops its residual branch with this
            probability during training, block l of L with probability l / L * rate (Huang et
            al. 2016). 0 (default) turns it off. Inference is always deterministic.
        include_top: True for class probabilities `(batch, num_classes)`; False for the final
            feature map `(batch, ceil(H / 4), ceil(W / 4), 64)`.
        weight_decay: L2 penalty on convolution and dense kernels, as the gradient term
            `weight_decay * w` (the paper's 1e-4). 0 turns it off.
        normalization: per-channel input standardisation inside the model, so that the model
            takes raw pixels in [0, 255]. "auto" (default): CIFAR-100 training-set statistics
            when num_classes is 100, CIFAR-10 otherwise; "cifar10" or "cifar100"; a (mean, std)
            pair of per-channel sequences on the 0-255 scale; None for no normalisation layer.
        classifier_activation: activation of the last Dense layer ("softmax" by default; None
            for logits). The classifier computes in float32 under mixed precision.
        synchronized_batch_norm: compute BN batch statistics over all replicas of a
            tf.distribute strategy (TensorFlow backend only), so that training on several
            devices matches one device with the same global batch. Off by default; the recipes
            turn it on when they train on more than one replica.
        batch_norm: which BatchNormalization computes: "auto" (default) runs TensorFlow's
            fused kernel (FusedBatchNormV3) on the TensorFlow backend and Keras's layer on the
            others; "fused" is the same but raises on a backend without it; "keras" always
            runs Keras's layer. Same variables either way, so a model saved with one loads and
            runs with the other and on every backend. Synchronized BN always runs Keras's.
        dtype: the dtype policy of the layers, e.g. "mixed_bfloat16"; None (default): Keras's
            global policy when the model is built. The config records the policy used.
        class_names: the name of each class (output i is `class_names[i]`), or None (default).
            Kept in the config, so they travel with `.keras` files; the exports serve them.
        name: model name; default "resnet{depth}_{variant}".

    Input: float images `(batch, H, W, channels)`, raw pixel values in [0, 255].

    `model.preparation` (an `ImagePreparation`) says how image files become that input (size,
    resize mode); it is saved with the model (not in its config: the network does not use it),
    and predict, the exports and the server prepare new images by it. Default: the input size,
    "stretch".
    """

    def __init__(self, depth: int = 110, variant: str = "type1", num_classes: int = 10,
                 input_shape: tuple = (32, 32, 3), shortcut: str = "A",
                 drop_path_rate: float = 0.0, include_top: bool = True,
                 weight_decay: float = 1e-4, normalization="auto",
                 classifier_activation: str | None = "softmax",
                 synchronized_batch_norm: bool = False, batch_norm: str = "auto",
                 dtype: str | None = None, class_names: list | None = None,
                 name: str | None = None, **kwargs):
        n = blocks_per_stage(depth)
        check_variant(variant)
        check_shortcut(shortcut)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}.")
        check_drop_path_rate(drop_path_rate)
        check_implementation(batch_norm)
        class_names = _check_class_names(class_names, num_classes)
        stats = _normalization_stats(normalization, num_classes)
        _check_input_shape(input_shape, None if stats is None else len(stats[0]))
        policy = keras.dtype_policies.get(dtype) if dtype else keras.config.dtype_policy()

        inputs = keras.Input(shape=tuple(input_shape), name="images")
        x = inputs
        if stats is not None:
            mean, std = stats
            x = layers.Normalization(mean=mean, variance=[s * s for s in std], dtype=policy,
                                     name="normalization")(x)
        x = layers.Conv2D(STAGE_FILTERS[0], 3, padding="same", use_bias=False,
                          kernel_initializer="he_normal", dtype=policy,
                          kernel_regularizer=kernel_regularizer(weight_decay),
                          name="stem_conv")(x)
        if variant == "v1":
            x = bn_layer("stem_bn", batch_norm, synchronized_batch_norm, policy)(x)
            x = layers.ReLU(dtype=policy, name="stem_relu")(x)

        block = BLOCKS[variant]
        total_blocks = 3 * n
        for stage, filters in enumerate(STAGE_FILTERS):
            for index in range(n):
                block_number = stage * n + index + 1
                x = block(filters, strides=2 if stage > 0 and index == 0 else 1,
                          shortcut=shortcut,
                          drop_path_rate=drop_path_rate * block_number / total_blocks,
                          weight_decay=weight_decay,
                          synchronized_batch_norm=synchronized_batch_norm,
                          batch_norm=batch_norm, dtype=policy,
                          name=f"stage{stage + 1}_block{index + 1}")(x)

        if variant != "v1":
            x = bn_layer("final_bn", batch_norm, synchronized_batch_norm, policy)(x)
            x = layers.ReLU(dtype=policy, name="final_relu")(x)
        if include_top:
            x = layers.GlobalAveragePooling2D(dtype=policy, name="avg_pool")(x)
            x = layers.Dense(num_classes, activation=classifier_activation,
                             kernel_regularizer=kernel_regularizer(weight_decay),
                             dtype="float32", name="predictions")(x)
        super().__init__(inputs, x, name=name or f"resnet{depth}_{variant}", **kwargs)
        self.dtype_policy = policy  # compile() wraps the optimiser for loss scaling by it
        # As JSON gives them back, so that a loaded model's config equals the original's.
        if stats is not None and not isinstance(normalization, str):
            normalization = [list(stats[0]), list(stats[1])]
        self._arguments = {
            "depth": depth, "variant": variant, "num_classes": num_classes,
            "input_shape": list(input_shape), "shortcut": shortcut,
            "drop_path_rate": drop_path_rate, "include_top": include_top,
            "weight_decay": weight_decay, "normalization": normalization,
            "classifier_activation": classifier_activation,
            "synchronized_batch_norm": synchronized_batch_norm, "batch_norm": batch_norm,
            "dtype": policy.name, "class_names": class_names}
        height, width = input_shape[:2]
        self._preparation = ImagePreparation(
            (height, width) if height and width else (32, 32))

    @property
    def depth(self) -> int:
        return self._arguments["depth"]

    @property
    def variant(self) -> str:
        return self._arguments["variant"]

    @property
    def class_names(self) -> list | None:
        return self._arguments["class_names"]

    @property
    def preparation(self) -> ImagePreparation:
        """How image files become this model's input (see `ImagePreparation`)."""
        return self._preparation

    @preparation.setter
    def preparation(self, preparation: ImagePreparation) -> None:
        if not isinstance(preparation, ImagePreparation):
            raise ValueError(f"preparation must be an ImagePreparation, got {preparation!r}.")
        height, width = self._arguments["input_shape"][:2]
        if (height and height != preparation.image_size[0]) or (
                width and width != preparation.image_size[1]):
            raise ValueError(
                f"preparation must prepare images of the model's input size "
                f"{height}x{width}; got {preparation!r}.")
        self._preparation = preparation

    def get_config(self) -> dict:
        """The constructor's arguments, with the name and trainable flag."""
        return {**self._arguments, "name": self.name, "trainable": self.trainable}

    @classmethod
    def from_config(cls, config: dict, custom_objects=None) -> "FastResNet":
        config = dict(config)
        resize = config.pop("resize", None)  # 0.3's config held the preparation's resize mode
        model = cls(**config)
        if resize is not None:
            model.preparation = ImagePreparation(model.preparation.image_size, resize)
        return model

    # The preparation travels in the .keras file as an asset (Keras calls these on save/load).
    def save_assets(self, dir_path) -> None:
        self._preparation.save(dir_path)

    def load_assets(self, dir_path) -> None:
        preparation = ImagePreparation.load(dir_path)
        if preparation is not None:
            self.preparation = preparation


def _alias(depth):
    def factory(variant: str = "type1", **kwargs) -> FastResNet:
        return FastResNet(depth, variant, **kwargs)

    factory.__name__ = factory.__qualname__ = f"FastResNet{depth}"
    factory.__doc__ = (
        f"FastResNet-{depth} ({(depth - 2) // 6} blocks per stage), type1 blocks by default.\n\n"
        f"Same as `FastResNet(depth={depth}, variant=..., **kwargs)`; see `FastResNet` for the "
        f"arguments. Input `(batch, 32, 32, 3)` raw pixels in [0, 255]; output "
        f"`(batch, num_classes)` probabilities.")
    return factory


FastResNet20 = _alias(20)
FastResNet32 = _alias(32)
FastResNet44 = _alias(44)
FastResNet56 = _alias(56)
FastResNet110 = _alias(110)
FastResNet668 = _alias(668)
FastResNet1202 = _alias(1202)


MAX_JSON_BYTES = 64 * 2 ** 20  # a FastResNet's config.json is a few kB
MAX_EXPANSION = 100  # a member may expand to 100x its compressed size beyond MAX_JSON_BYTES


def _check_sizes(model_file):
    """A `DamagedFile` for a .keras archive whose members declare sizes no FastResNet has (a
    zip bomb: a config.json that expands to gigabytes), before anything is expanded."""
    try:
        with zipfile.ZipFile(model_file) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError) as error:
        raise DamagedFile(f"{model_file} is not a complete .keras file: {summary(error)}") \
            from None
    for member in members:
        expands = (member.file_size > MAX_JSON_BYTES
                   and member.file_size > MAX_EXPANSION * max(member.compress_size, 1))
        if expands or (member.filename.endswith(".json") and member.file_size > MAX_JSON_BYTES):
            raise DamagedFile(
                f"{model_file} holds {member.filename}, declared {member.file_size:,} bytes "
                f"({member.compress_size:,} compressed): no .keras file of this package has such "
                f"a member (a zip bomb?); not loaded.")


def load_model(path: str | os.PathLike) -> keras.Model:
    """The Keras model of a finished training run's directory (its model.keras) or of a .keras
    file. A ValueError when there is no such file, a `DamagedFile` when it cannot be loaded."""
    path = Path(path)
    model_file = path / MODEL_FILE if path.is_dir() else path
    if not model_file.is_file():
        raise ValueError(
            f"No model at {model_file}. Give a finished training run's directory (it holds "
            f"{MODEL_FILE}) or a .keras file.")
    if not zipfile.is_zipfile(model_file):  # Keras would call it "File not found"
        raise DamagedFile(
            f"{model_file} is not a complete .keras file (a zip archive; this one, "
            f"{model_file.stat().st_size} bytes, is truncated or damaged). Save the model again, "
            f"or train its run again.")
    _check_sizes(model_file)
    try:
        return keras.saving.load_model(model_file)
    except (TypeError, ValueError, KeyError, OSError, zipfile.BadZipFile, zlib.error) as error:
        raise DamagedFile(f"{model_file} cannot be loaded as a Keras model: "
                          f"{summary(error)[:300]}") from None
