"""BatchNorm folded into the convolution before it, for inference.

At inference a BN that directly follows a convolution is an affine map per output channel, so
it folds into that convolution (`BatchNorm.fold_into`): the kernel is scaled and the BN reduced
to a bias. In type1 every block's BN follows a convolution, so a folded FastResNet keeps only
its final BN.
"""

import keras

from keras_fastres.batch_norm import BatchNorm
from keras_fastres.blocks import ResidualBlock
from keras_fastres.models import CONV_BN_PAIRS


def fold_batch_norms(model: keras.Model) -> keras.Model:
    """An inference copy of `model` in which every BN that directly follows a convolution is
    folded into it (`BatchNorm.fold_into`: kernel scaled, the BN reduced to a bias); `model`
    itself is not modified. The pairs are those the blocks name in `conv_bn_pairs` and the
    model's `CONV_BN_PAIRS` (v1's stem); BNs that follow a residual sum stay. The folded
    state is in the layers' configs: the copy saves, loads and `from_config`s as folded."""
    folded = keras.models.clone_model(model)
    folded.set_weights(model.get_weights())
    by_name = {layer.name: layer for layer in folded.layers}
    pairs = [(by_name[conv], by_name[bn]) for conv, bn in CONV_BN_PAIRS
             if conv in by_name and bn in by_name]
    for layer in folded.layers:
        pairs += [(getattr(layer, conv), getattr(layer, bn))
                  for conv, bn in getattr(layer, "conv_bn_pairs", ())
                  if getattr(layer, bn, None) is not None]
    for conv, bn in pairs:
        if isinstance(bn, BatchNorm):  # a plain Keras BN (a .keras file of 0.1.0) stays
            bn.fold_into(conv)
    for layer in folded.layers:  # so that its config, and a saved copy, builds folded BNs
        if isinstance(layer, ResidualBlock):
            layer.folded = True
    return folded
