"""The residual blocks of the paper, one Keras layer per variant.

With X the block input, Conv a 3x3 convolution (no bias) and S the shortcut:

    v1      Y = ReLU(S(X) + BN(Conv2(ReLU(BN(Conv1(X))))))     He et al. 2015
    preact  Y = S(X) + Conv2(ReLU(BN(Conv1(ReLU(BN(X))))))     He et al. 2016
    type1   Y = S(X) + Conv2(ReLU(BN(Conv1(X))))               the paper (FastResNet)
    type2   Y = S(X) + Conv2(Conv1(ReLU(BN(X))))               the paper's ablation

S is the identity when shapes match. At a stride-2 block it is option "A" (subsample, then
zero-pad the new channels; no parameters) or option "B" (a 1x1 stride-2 projection, followed by BN
in `v1` only, since only `v1` adds normalised branches). The shortcut always takes the block
input X, exactly as the paper's equations write it.
"""

import math
import numbers

import keras
from keras import layers, ops

from keras_fastres.batch_norm import bn_layer, check_implementation

SHORTCUTS = ("A", "B")


def check_weight_decay(weight_decay):
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, numbers.Real) or not (
            0 <= float(weight_decay) < math.inf):
        raise ValueError(f"weight_decay must be a number >= 0 (the paper's 1e-4; 0 turns it "
                         f"off), got {weight_decay!r}.")


def check_shortcut(shortcut):
    if shortcut not in SHORTCUTS:
        raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {shortcut!r}.")


def check_drop_path_rate(drop_path_rate):
    if not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate!r}.")


def kernel_regularizer(weight_decay):
    """L2 penalty whose gradient is `weight_decay * w` (Keras's L2(l) differentiates to 2*l*w)."""
    check_weight_decay(weight_decay)
    return keras.regularizers.L2(weight_decay / 2) if weight_decay else None


class ResidualBlock(layers.Layer):
    """What every variant shares: the shortcut, stochastic depth and the config.

    Each variant names in `conv_bn_pairs` its (convolution, BN) sublayers where the BN directly
    follows the convolution: at inference such a BN folds into the convolution (export.py).

    Args:
        filters: output channels of both 3x3 convolutions.
        strides: 1, or 2 to halve height and width (first block of stages 2 and 3).
        shortcut: "A" or "B", how the shortcut changes shape when `strides` or channels change.
        drop_path_rate: probability of dropping this block's residual branch per sample while
            training (stochastic depth, Huang et al. 2016). Survivors are scaled by
            1 / (1 - rate), so inference is the deterministic full block.
        weight_decay: coefficient of the L2 penalty on the convolution kernels, as the
            gradient term `weight_decay * w`.
        synchronized_batch_norm: batch statistics over all replicas of a distribution strategy
            (see `batch_norm.bn_layer`); False by default.
        batch_norm: "auto" (TensorFlow's fused kernel where it runs, the default), "fused" or
            "keras" (see `keras_fastres.batch_norm`).
        folded: True for the inference form `fold_batch_norms` makes: each BN of
            `conv_bn_pairs` is folded into its convolution (it adds a bias) and the block
            refuses to train. False by default.

    Input `(batch, H, W, C)`; output `(batch, ceil(H / strides), ceil(W / strides), filters)`.
    """

    def __init__(self, filters: int, strides: int = 1, shortcut: str = "A",
                 drop_path_rate: float = 0.0, weight_decay: float = 1e-4,
                 synchronized_batch_norm: bool = False, batch_norm: str = "auto",
                 folded: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        check_implementation(batch_norm)
        check_shortcut(shortcut)
        if strides not in (1, 2):
            raise ValueError(f"strides must be 1 or 2, got {strides!r}.")
        check_drop_path_rate(drop_path_rate)
        self.filters = filters
        self.strides = strides
        self.shortcut = shortcut
        self.drop_path_rate = drop_path_rate
        self.weight_decay = weight_decay
        self.synchronized_batch_norm = synchronized_batch_norm
        self.batch_norm = batch_norm
        self.folded = folded
        if drop_path_rate > 0:
            self.seed_generator = keras.random.SeedGenerator()

    def conv(self, name, kernel_size=3, strides=1):
        return layers.Conv2D(
            self.filters, kernel_size, strides=strides, padding="same", use_bias=False,
            kernel_initializer="he_normal",
            kernel_regularizer=kernel_regularizer(self.weight_decay),
            dtype=self.dtype_policy, name=name)

    def norm(self, name):
        folded = self.folded and any(bn == name for _, bn in self.conv_bn_pairs)
        return bn_layer(name, self.batch_norm, self.synchronized_batch_norm, self.dtype_policy,
                        folded)

    def build(self, input_shape):
        self.projection = None
        self.projection_bn = None
        changes_shape = self.strides != 1 or input_shape[-1] != self.filters
        if changes_shape and self.shortcut == "B":
            self.projection = self.conv("projection", kernel_size=1, strides=self.strides)
            self.projection.build(input_shape)
            if self.normalised_sum:
                self.projection_bn = self.norm("projection_bn")
                self.projection_bn.build(self.projection.compute_output_shape(input_shape))
        elif changes_shape and input_shape[-1] > self.filters:
            raise ValueError(
                f"Shortcut option A can only add channels; got {input_shape[-1]} input channels "
                f"for {self.filters} filters. Use shortcut='B'.")

    def shortcut_branch(self, x, training):
        if self.projection is not None:
            x = self.projection(x)
            return self.projection_bn(x, training=training) if self.projection_bn else x
        if self.strides != 1:
            x = x[:, ::self.strides, ::self.strides, :]
        new_channels = self.filters - x.shape[-1]
        if new_channels:
            x = ops.pad(x, [[0, 0], [0, 0], [0, 0], [0, new_channels]])
        return x

    def drop_path(self, residual, training):
        if not training or self.drop_path_rate == 0:
            return residual
        keep_prob = 1.0 - self.drop_path_rate
        mask_shape = (ops.shape(residual)[0], 1, 1, 1)
        noise = keras.random.uniform(mask_shape, seed=self.seed_generator, dtype=residual.dtype)
        keep = ops.floor(keep_prob + noise)
        return residual * keep / ops.cast(keep_prob, residual.dtype)

    def compute_output_shape(self, input_shape):
        def resize(size):
            return None if size is None else -(-size // self.strides)
        return (input_shape[0], resize(input_shape[1]), resize(input_shape[2]), self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, strides=self.strides, shortcut=self.shortcut,
                      drop_path_rate=self.drop_path_rate, weight_decay=self.weight_decay,
                      synchronized_batch_norm=self.synchronized_batch_norm,
                      batch_norm=self.batch_norm, folded=self.folded)
        return config


def _build_chain(sublayers, input_shape):
    """Builds layers applied one after another, each on the previous one's output shape."""
    shape = input_shape
    for layer in sublayers:
        layer.build(shape)
        shape = layer.compute_output_shape(shape)
    return shape


@keras.saving.register_keras_serializable(package="keras_fastres")
class V1Block(ResidualBlock):
    """Original post-activation block (He et al. 2015): Y = ReLU(S(X) + BN(Conv2(ReLU(BN(Conv1(X))))))."""

    normalised_sum = True
    conv_bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"), ("projection", "projection_bn"))

    def build(self, input_shape):
        super().build(input_shape)
        self.conv1 = self.conv("conv1", strides=self.strides)
        self.bn1 = self.norm("bn1")
        self.conv2 = self.conv("conv2")
        self.bn2 = self.norm("bn2")
        _build_chain([self.conv1, self.bn1, self.conv2, self.bn2], input_shape)

    def call(self, x, training=None):
        y = ops.relu(self.bn1(self.conv1(x), training=training))
        y = self.bn2(self.conv2(y), training=training)
        return ops.relu(self.shortcut_branch(x, training) + self.drop_path(y, training))


@keras.saving.register_keras_serializable(package="keras_fastres")
class PreactBlock(ResidualBlock):
    """Pre-activation block (He et al. 2016), the paper's "basic" block:
    Y = S(X) + Conv2(ReLU(BN(Conv1(ReLU(BN(X))))))."""

    normalised_sum = False
    conv_bn_pairs = (("conv1", "bn2"),)  # bn1 follows the residual sum

    def build(self, input_shape):
        super().build(input_shape)
        self.bn1 = self.norm("bn1")
        self.conv1 = self.conv("conv1", strides=self.strides)
        self.bn2 = self.norm("bn2")
        self.conv2 = self.conv("conv2")
        _build_chain([self.bn1, self.conv1, self.bn2, self.conv2], input_shape)

    def call(self, x, training=None):
        y = self.conv1(ops.relu(self.bn1(x, training=training)))
        y = self.conv2(ops.relu(self.bn2(y, training=training)))
        return self.shortcut_branch(x, training) + self.drop_path(y, training)


@keras.saving.register_keras_serializable(package="keras_fastres")
class Type1Block(ResidualBlock):
    """The paper's FastResNet block, the first BN-ReLU removed: Y = S(X) + Conv2(ReLU(BN(Conv1(X))))."""

    normalised_sum = False
    conv_bn_pairs = (("conv1", "bn"),)  # its only BN: the whole block folds

    def build(self, input_shape):
        super().build(input_shape)
        self.conv1 = self.conv("conv1", strides=self.strides)
        self.bn = self.norm("bn")
        self.conv2 = self.conv("conv2")
        _build_chain([self.conv1, self.bn, self.conv2], input_shape)

    def call(self, x, training=None):
        y = self.conv2(ops.relu(self.bn(self.conv1(x), training=training)))
        return self.shortcut_branch(x, training) + self.drop_path(y, training)


@keras.saving.register_keras_serializable(package="keras_fastres")
class Type2Block(ResidualBlock):
    """The paper's ablation, the second BN-ReLU removed: Y = S(X) + Conv2(Conv1(ReLU(BN(X))))."""

    normalised_sum = False
    conv_bn_pairs = ()  # its BN follows the residual sum

    def build(self, input_shape):
        super().build(input_shape)
        self.bn = self.norm("bn")
        self.conv1 = self.conv("conv1", strides=self.strides)
        self.conv2 = self.conv("conv2")
        _build_chain([self.bn, self.conv1, self.conv2], input_shape)

    def call(self, x, training=None):
        y = self.conv2(self.conv1(ops.relu(self.bn(x, training=training))))
        return self.shortcut_branch(x, training) + self.drop_path(y, training)


BLOCKS = {"v1": V1Block, "preact": PreactBlock, "type1": Type1Block, "type2": Type2Block}
