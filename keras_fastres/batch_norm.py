"""The package's one BatchNormalization: TensorFlow's fused kernel where it can run, Keras's
layer everywhere else, on the same four variables.

Why: Keras 3's BatchNormalization is written with `keras.ops` and runs unfused (separate mean,
variance and normalisation kernels, with float32 casts under mixed precision). On TensorFlow,
`FusedBatchNormV3` does the same in one kernel, forward and backward, and takes float16/bfloat16
activations directly with float32 statistics. BN-ReLU is the very cost the paper removes, so how
fast BN runs decides how much the paper's block saves (README, "Speed").

Implementations (`implementation=`, the models' `batch_norm=`):
    "auto"   fused on the TensorFlow backend for 4-D channels-last inputs, Keras's otherwise
             (the default)
    "fused"  the same, but an error on a backend without the fused kernel
    "keras"  always Keras's layer
Synchronized (cross-replica) statistics and other ranks always take Keras's path.

Moving variance: both paths keep the *biased* batch variance (divided by N, Keras's convention),
so weights and statistics move between them and between backends unchanged. The fused kernel
returns the unbiased one (divided by N - 1, as the reference Torch networks keep); it is
rescaled by (N - 1) / N. With N = batch x height x width (8,192 at ResNet's last stage, batch
128) the two conventions differ by about 1e-4 relative.
"""

import keras
from keras import layers

IMPLEMENTATIONS = ("auto", "fused", "keras")

# Momentum and epsilon of the reference CIFAR ResNets (Torch defaults 0.1 and 1e-5), not Keras's.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def check_implementation(implementation):
    """A ValueError unless `implementation` is one of IMPLEMENTATIONS and runs on this backend."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"batch_norm must be one of {IMPLEMENTATIONS}, got {implementation!r}.")
    backend = keras.backend.backend()
    if implementation == "fused" and backend != "tensorflow":
        raise ValueError(
            f"batch_norm='fused' runs TensorFlow's fused kernel, and Keras runs on the {backend} "
            f"backend here. Use batch_norm='auto' (fused where available, the default) or "
            f"'keras'.")


def resolve(implementation):
    """What "auto" means on this backend: "fused" on TensorFlow, "keras" elsewhere."""
    if implementation == "auto":
        return "fused" if keras.backend.backend() == "tensorflow" else "keras"
    return implementation


@keras.saving.register_keras_serializable(package="keras_fastres")
class BatchNorm(layers.BatchNormalization):
    """`keras.layers.BatchNormalization` that runs TensorFlow's fused kernel where it can.

    Args:
        implementation: "auto" (default), "fused" or "keras"; see the module docstring.
        folded: True for a BN already folded into the convolution before it (`fold_into`): it
            adds `beta`, now that convolution's bias, and refuses to train. Recorded in the
            config, so a folded model saves and loads as folded. False by default.
        **kwargs: those of `keras.layers.BatchNormalization`.

    Same input and output shape; same variables (gamma, beta, moving_mean, moving_variance) in
    both implementations.
    """

    def __init__(self, implementation: str = "auto", folded: bool = False, **kwargs) -> None:
        check_implementation(implementation)
        super().__init__(**kwargs)
        self.implementation = implementation
        self.fused = False
        self.folded = folded

    def build(self, input_shape):
        super().build(input_shape)
        rank = len(input_shape)
        self.fused = (resolve(self.implementation) == "fused"
                      and rank == 4 and self.axis % rank == 3
                      and self.center and self.scale
                      and not (self.synchronized or self.renorm))

    def fold_into(self, conv):
        """Folds this BN's inference transform into `conv`, the bias-free convolution whose
        output it normalises: gamma * (conv(x) - mean) / sqrt(variance + eps) + beta equals
        conv'(x) + bias with conv's kernel scaled per output channel by
        s = gamma / sqrt(variance + eps) and bias = beta - mean * s. The kernel is scaled here
        and this layer keeps only the bias (in `beta`) and adds it: on TensorFlow one BiasAdd,
        which it fuses into the convolution. For an inference copy of a model
        (`fold_batch_norms`): a folded layer refuses to train. Every backend."""
        if self.folded:
            raise ValueError(f"BN layer {self.name} is already folded.")
        if getattr(conv, "use_bias", True) or conv.kernel.shape[-1] != self.gamma.shape[0]:
            raise ValueError(f"BN layer {self.name} can only fold into a bias-free convolution "
                             f"with {self.gamma.shape[0]} filters; got {conv.name}.")
        scale = self.gamma / keras.ops.sqrt(self.moving_variance + self.epsilon)
        conv.kernel.assign(conv.kernel * scale)  # the kernel's last axis: output channels
        self.beta.assign(self.beta - self.moving_mean * scale)
        self.folded = True

    def call(self, inputs, training=None, mask=None):
        if self.folded:
            if training:
                raise ValueError(f"BN layer {self.name} is folded into the convolution before "
                                 f"it, for inference only; train the unfolded model.")
            bias = keras.ops.cast(self.beta, inputs.dtype)
            if keras.backend.backend() == "tensorflow":  # BiasAdd, which fuses into the conv
                import tensorflow as tf
                return tf.nn.bias_add(inputs, bias)
            return inputs + bias
        if not self.fused or mask is not None:
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf  # only reached on the TensorFlow backend

        if not (training and self.trainable):
            return tf.raw_ops.FusedBatchNormV3(
                x=inputs, scale=self.gamma, offset=self.beta, mean=self.moving_mean,
                variance=self.moving_variance, epsilon=self.epsilon, data_format="NHWC",
                is_training=False)[0]
        empty = tf.constant([], tf.float32)
        outputs, mean, unbiased_variance, *_ = tf.raw_ops.FusedBatchNormV3(
            x=inputs, scale=self.gamma, offset=self.beta, mean=empty, variance=empty,
            epsilon=self.epsilon, exponential_avg_factor=1.0, data_format="NHWC",
            is_training=True)
        count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:-1]), tf.float32)
        variance = unbiased_variance * ((count - 1.0) / tf.maximum(count, 1.0))
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(
            self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        return outputs

    def get_config(self):
        return {**super().get_config(), "implementation": self.implementation,
                "folded": self.folded}


def bn_layer(name, implementation="auto", synchronized=False, dtype=None, folded=False):
    """The package's BN with the reference networks' momentum and epsilon. `synchronized`
    computes the batch statistics over all replicas of a tf.distribute strategy (TensorFlow
    backend only, Keras's path), so that several devices train as one device with the global
    batch would. `folded`: see `BatchNorm`."""
    return BatchNorm(implementation, folded, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                     synchronized=synchronized, dtype=dtype, name=name)
