"""The package's BatchNorm: TensorFlow's fused kernel and Keras's layer compute the same thing on
the same variables; "auto" picks the fused one on TensorFlow only. Runs on every backend."""

from pathlib import Path

import keras
import numpy as np
import pytest

from keras_fastres import FastResNet
from keras_fastres.batch_norm import BN_MOMENTUM, BatchNorm, bn_layer, resolve

VARIANTS = ("v1", "preact", "type1", "type2")
ON_TENSORFLOW = keras.backend.backend() == "tensorflow"
tensorflow_only = pytest.mark.skipif(not ON_TENSORFLOW, reason="the fused kernel is TensorFlow's")


def _images(batch=16, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (batch, 32, 32, 3)).astype("float32")


def _bns(model):
    return [layer for layer in model._flatten_layers() if isinstance(layer, BatchNorm)]


def _op_types(model, images, training):
    import tensorflow as tf
    function = tf.function(lambda x: model(x, training=training))
    return [op.type for op in function.get_concrete_function(images).graph.get_operations()]


@tensorflow_only
@pytest.mark.parametrize("variant", VARIANTS)
def test_fused_and_keras_agree_on_the_same_weights(variant):
    """Whole models, forward: outputs and the moving statistics a training step leaves. (Their
    gradients are compared layer by layer below: through a whole model, a pre-activation
    within rounding of a ReLU kink in one path and not the other moves every gradient upstream
    of it by ~1e-3, and where that happens depends on the CPU's rounding.)"""
    images = _images()
    for seed in (0, 1):
        keras.utils.set_random_seed(seed)
        fused = FastResNet(14, variant, batch_norm="fused")
        plain = FastResNet(14, variant, batch_norm="keras")
        plain.set_weights(fused.get_weights())
        assert all(bn.fused for bn in _bns(fused)) and not any(bn.fused for bn in _bns(plain))
        np.testing.assert_allclose(fused(images, training=True), plain(images, training=True),
                                   atol=1e-4)
        for a, b in zip(_bns(fused), _bns(plain)):
            np.testing.assert_allclose(a.moving_mean, b.moving_mean, rtol=1e-3, atol=1e-5)
            np.testing.assert_allclose(a.moving_variance, b.moving_variance, rtol=1e-3, atol=1e-5)
            assert not np.allclose(a.moving_variance, 1.0)  # the step did move them
        np.testing.assert_allclose(fused(images, training=False), plain(images, training=False),
                                   atol=1e-4)


# Float32's unit roundoff, and the bound on the relative error of a sum of n terms in any order
# (Higham, "Accuracy and Stability of Numerical Algorithms", 2nd ed., section 4.2):
# |fl(sum) - sum| <= gamma(n) * sum(|terms|), gamma(n) = n u / (1 - n u).
UNIT_ROUNDOFF = 2.0 ** -24


def gamma(n):
    return n * UNIT_ROUNDOFF / (1 - n * UNIT_ROUNDOFF)


@tensorflow_only
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fused_and_keras_gradients_agree_within_float32_rounding(seed):
    """One BN layer, training mode, loss = sum(y * g) for a fixed upstream gradient g: no ReLU
    between the BN and the loss, so the two implementations differ by rounding alone, and that
    is bounded whatever order either sums in (AMD and Intel alike). With n = batch x H x W
    values per channel, x^ = (x - mean) / sqrt(var + eps) and s = gamma / sqrt(var + eps):
        d beta  = sum(g)                                   |error| <= gamma(n) sum|g|
        d gamma = sum(g x^)                                |error| <= gamma(n + 4) sum|g x^| + E
        d x     = s (g - mean(g) - x^ mean(g x^))          |error| <= s gamma(n + 4) (|g| +
                                                            mean|g| + |x^| mean|g x^|) + E'
    where E, E' carry the error of x^ itself (from the mean and variance, each a sum of n
    terms: relative error of x^ <= gamma(2n + 8) (1 + |x^|)). Each implementation is within
    the bound of the exact value, so they are within twice it of each other."""
    import tensorflow as tf
    rng = np.random.default_rng(seed)
    shape = (16, 8, 8, 32)
    x = rng.normal(2.0, 3.0, shape).astype("float32")
    g = rng.normal(0.0, 1.0, shape).astype("float32")
    scale = rng.uniform(0.5, 2.0, shape[-1]).astype("float32")
    gradients = {}
    for implementation in ("fused", "keras"):
        bn = bn_layer("bn", implementation)
        bn.build(shape)
        bn.gamma.assign(scale)
        inputs = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            loss = tf.reduce_sum(bn(inputs, training=True) * g)
        gradients[implementation] = [np.asarray(t, "float64") for t in
                                     tape.gradient(loss, [inputs, bn.gamma, bn.beta])]
    n = np.prod(shape[:-1])
    flat = x.reshape(-1, shape[-1]).astype("float64")
    x_hat = ((flat - flat.mean(0)) / np.sqrt(flat.var(0) + 1e-5)).reshape(shape)
    s = scale / np.sqrt(flat.var(0) + 1e-5)
    g64 = g.astype("float64")
    x_hat_error = gamma(2 * n + 8) * (1 + np.abs(x_hat))
    bounds = [
        s * (gamma(n + 4) * (np.abs(g64) + np.abs(g64).mean((0, 1, 2))
                             + np.abs(x_hat) * np.abs(g64 * x_hat).mean((0, 1, 2)))
             + np.abs(g64).mean((0, 1, 2)) * x_hat_error
             + np.abs(x_hat) * (np.abs(g64) * x_hat_error).mean((0, 1, 2))
             + x_hat_error * np.abs(g64 * x_hat).mean((0, 1, 2))),
        gamma(n + 4) * np.abs(g64 * x_hat).sum((0, 1, 2))
        + (np.abs(g64) * x_hat_error).sum((0, 1, 2)),
        gamma(n) * np.abs(g64).sum((0, 1, 2)),
    ]
    for fused, plain, bound in zip(gradients["fused"], gradients["keras"], bounds):
        assert np.all(np.abs(fused - plain) <= 2 * bound), np.max(np.abs(fused - plain) / bound)
    # The bound is not vacuous: it is far below the gradients themselves.
    assert np.median(bounds[0] / np.abs(gradients["keras"][0])) < 0.05


@pytest.mark.parametrize("implementation", ["fused", "keras"] if ON_TENSORFLOW else ["keras"])
def test_moving_variance_keeps_the_biased_batch_variance(implementation):
    x = np.random.default_rng(1).normal(2.0, 3.0, (4, 5, 5, 8)).astype("float32")
    bn = bn_layer("bn", implementation)
    y = keras.ops.convert_to_numpy(bn(x, training=True))
    flat = x.reshape(-1, 8)
    mean, biased = flat.mean(axis=0), flat.var(axis=0)  # divided by N = 100, not N - 1
    np.testing.assert_allclose(y.reshape(-1, 8), (flat - mean) / np.sqrt(biased + 1e-5),
                               atol=1e-4)
    decay = 1 - BN_MOMENTUM
    np.testing.assert_allclose(bn.moving_mean, decay * mean, rtol=1e-5)
    np.testing.assert_allclose(bn.moving_variance, BN_MOMENTUM + decay * biased, rtol=1e-5)


@tensorflow_only
def test_fused_graph_runs_the_fused_kernel_in_training_and_inference():
    images = _images(2)
    fused, plain = FastResNet(8, "type1"), FastResNet(8, "type1", batch_norm="keras")
    bn_count = len(_bns(fused))
    for training in (True, False):
        assert _op_types(fused, images, training).count("FusedBatchNormV3") == bn_count
        assert "FusedBatchNormV3" not in _op_types(plain, images, training)


@tensorflow_only
def test_fused_kernel_takes_bfloat16_activations_without_casts():
    import tensorflow as tf
    x = tf.cast(np.random.default_rng(2).normal(size=(8, 6, 6, 16)), tf.bfloat16)
    fused, plain = (bn_layer("bn", i, dtype="mixed_bfloat16") for i in ("fused", "keras"))
    fused.build(x.shape)
    plain.build(x.shape)
    graph = tf.function(lambda v: fused(v, training=True)).get_concrete_function(x).graph
    ops = graph.get_operations()
    [kernel] = [op for op in ops if op.type == "FusedBatchNormV3"]
    assert kernel.get_attr("T") == tf.bfloat16 and kernel.get_attr("U") == tf.float32
    assert kernel.inputs[0].op.type == "Placeholder"  # the bf16 input, not a cast of it
    # Same result as Keras's float32 computation, to bfloat16's resolution (8 bits).
    y_fused, y_plain = fused(x, training=True), plain(x, training=True)
    assert y_fused.dtype == y_plain.dtype == tf.bfloat16
    np.testing.assert_allclose(np.asarray(tf.cast(y_fused, tf.float32)),
                               np.asarray(tf.cast(y_plain, tf.float32)), rtol=2 ** -7, atol=2 ** -7)
    np.testing.assert_allclose(fused.moving_mean, plain.moving_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fused.moving_variance, plain.moving_variance, rtol=1e-5)


@pytest.mark.parametrize("batch_norm", ["auto", "keras"])
def test_choice_round_trips_through_config_and_keras_files(batch_norm, tmp_path):
    model = FastResNet(8, "preact", shortcut="B", batch_norm=batch_norm)
    images = _images(4)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    model.fit(images, np.arange(4), epochs=1, verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    for clone in (loaded, type(model).from_config(model.get_config())):
        assert {bn.implementation for bn in _bns(clone)} == {batch_norm}
        assert clone.get_layer("stage2_block1").get_config()["batch_norm"] == batch_norm
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0),
                               atol=1e-6)


def test_auto_is_fused_on_tensorflow_only():
    assert resolve("auto") == ("fused" if ON_TENSORFLOW else "keras")
    assert all(bn.fused == ON_TENSORFLOW for bn in _bns(FastResNet(8)))


def test_synchronized_statistics_take_keras_path_and_are_tensorflow_only():
    if ON_TENSORFLOW:
        assert not any(bn.fused for bn in _bns(FastResNet(8, synchronized_batch_norm=True)))
    else:  # Keras's own refusal, before anything is built
        with pytest.raises(ValueError, match="synchronized=True is only supported with the "
                                             "TensorFlow backend"):
            FastResNet(8, synchronized_batch_norm=True)


def test_fused_is_refused_where_the_backend_lacks_it():
    if ON_TENSORFLOW:
        assert all(bn.fused for bn in _bns(FastResNet(8, batch_norm="fused")))
    else:
        with pytest.raises(ValueError, match=r"batch_norm='fused' runs TensorFlow's fused kernel"
                                             r".* Use batch_norm='auto'"):
            FastResNet(8, batch_norm="fused")


def test_bad_batch_norm_names_the_choices():
    with pytest.raises(ValueError, match=r"\('auto', 'fused', 'keras'\), got 'cudnn'"):
        FastResNet(8, batch_norm="cudnn")


FIXTURES = Path(__file__).parent / "fixtures"
TENSORFLOW_FIXTURE = "resnet8_type1_B_tensorflow"  # written by fixtures/make_tensorflow_fixture.py


def test_a_model_saved_on_tensorflow_predicts_the_same_on_every_backend():
    """A FastResNet-8 saved on TensorFlow with fused BN after a training step (BN statistics
    off their defaults), loaded here: CI runs this file under JAX and PyTorch too, so each
    backend loads TensorFlow's file in its own process and answers TensorFlow's
    probabilities (float32 rounding of a few thousand-term sums: far below 1e-4)."""
    expected = np.load(FIXTURES / f"{TENSORFLOW_FIXTURE}.npz")
    model = keras.saving.load_model(FIXTURES / f"{TENSORFLOW_FIXTURE}.keras")
    np.testing.assert_allclose(model.predict(expected["images"], verbose=0),
                               expected["probabilities"], atol=1e-4)


@tensorflow_only
def test_the_tensorflow_fixture_is_what_this_code_saves():
    """Every layer's config in the checked-in file equals the config this code gives the same
    model now, so the test above loads what a TensorFlow user saves today (else: run
    fixtures/make_tensorflow_fixture.py again)."""
    import sys
    sys.path.insert(0, str(FIXTURES))
    try:
        from make_tensorflow_fixture import fixture_model
    finally:
        sys.path.remove(str(FIXTURES))
    saved = keras.saving.load_model(FIXTURES / f"{TENSORFLOW_FIXTURE}.keras")
    current = fixture_model()
    assert saved.get_config() == current.get_config()
    layers = {layer.name: layer.get_config() for layer in current._flatten_layers()}
    assert {layer.name: layer.get_config() for layer in saved._flatten_layers()} == layers
    assert sum(bn.fused for bn in _bns(saved)) == len(_bns(saved)) > 0


def _with_moved_statistics(model, seed=0):
    """BN statistics and affine weights away from their defaults, where folding shows."""
    rng = np.random.default_rng(seed)
    for bn in _bns(model):
        bn.gamma.assign(rng.uniform(0.5, 2.0, bn.gamma.shape))
        bn.beta.assign(rng.normal(0.0, 0.5, bn.beta.shape))
        bn.moving_mean.assign(rng.normal(0.0, 0.5, bn.moving_mean.shape))
        bn.moving_variance.assign(rng.uniform(0.5, 2.0, bn.moving_variance.shape))
    return model


@pytest.mark.parametrize("variant, shortcut", [("v1", "B"), ("type1", "A")])
def test_a_folded_model_saved_and_loaded_predicts_as_the_unfolded_one(variant, shortcut,
                                                                      tmp_path):
    """The folded state is part of the config: a reloaded folded model must not apply BN again
    to kernels that already hold it (0.1.0's was 0.065 apart in probability)."""
    from keras_fastres import fold_batch_norms
    model = _with_moved_statistics(FastResNet(8, variant, shortcut=shortcut))
    folded = fold_batch_norms(model)
    folded.save(tmp_path / "folded.keras")
    images = _images(8)
    expected = model.predict(images, verbose=0)
    loaded = keras.saving.load_model(tmp_path / "folded.keras")
    rebuilt = folded.__class__.from_config(folded.get_config())
    rebuilt.set_weights(folded.get_weights())
    for copy in (folded, loaded, rebuilt):
        assert sum(bn.folded for bn in _bns(copy)) == sum(bn.folded for bn in _bns(folded)) > 0
        # Probabilities of a float32 network whose folded kernels differ from the unfolded
        # product by a few float32 roundings of each of ~1e3-term sums: far below 1e-5.
        np.testing.assert_allclose(copy.predict(images, verbose=0), expected, atol=1e-5)
