"""FastResNet is the paper's network layer for layer and parameter for parameter."""

from pathlib import Path

import keras
import numpy as np
import pytest

import keras_fastres
from keras_fastres import FastResNet, FastResNet20, FastResNet110
from keras_fastres.models import CIFAR_STATS

VARIANTS = ("v1", "preact", "type1", "type2")


def expected_trainable_parameters(depth, variant, shortcut, num_classes=10):
    """Counted from PAPER.md's equations, independently of the code under test."""
    def conv(c_in, c_out, k=3):
        return k * k * c_in * c_out  # no bias

    def bn(c):
        return 2 * c  # gamma and beta

    n = (depth - 2) // 6
    total = conv(3, 16) + (bn(16) if variant == "v1" else 0)
    c_in = 16
    for stage, filters in enumerate((16, 32, 64)):
        for index in range(n):
            total += {
                "v1": conv(c_in, filters) + bn(filters) + conv(filters, filters) + bn(filters),
                "preact": bn(c_in) + conv(c_in, filters) + bn(filters) + conv(filters, filters),
                "type1": conv(c_in, filters) + bn(filters) + conv(filters, filters),
                "type2": bn(c_in) + conv(c_in, filters) + conv(filters, filters),
            }[variant]
            if stage > 0 and index == 0 and shortcut == "B":
                total += conv(c_in, filters, k=1) + (bn(filters) if variant == "v1" else 0)
            c_in = filters
    if variant != "v1":
        total += bn(64)  # the final BN-ReLU before pooling
    return total + 64 * num_classes + num_classes


def trainable_parameters(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def weight_names(model, suffix):
    return [w.path for w in model.weights if w.path.endswith(suffix)]


@pytest.mark.parametrize("depth, reference", [(20, 269_722), (56, 853_018), (110, 1_727_962)])
def test_v1_option_a_matches_the_reference_cifar_resnets(depth, reference):
    assert trainable_parameters(FastResNet(depth, "v1", shortcut="A")) == reference


# The count is linear in n past n = 2 (each further block of a stage repeats the second), so
# n = 1 (the stride-2 blocks alone), n = 2 (a repeated block) and n = 3 (the paper's 20) cover
# every term; the published 20/56/110 references above check the deep ones.
@pytest.mark.parametrize("shortcut", ["A", "B"])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("depth", [8, 14, 20])
def test_trainable_parameters_follow_the_equations(depth, variant, shortcut):
    model = FastResNet(depth, variant, shortcut=shortcut)
    assert trainable_parameters(model) == expected_trainable_parameters(depth, variant, shortcut)


def test_hundred_classes_changes_only_the_classifier():
    model = FastResNet(20, num_classes=100)
    assert trainable_parameters(model) == expected_trainable_parameters(20, "type1", "A", 100)
    assert model.output_shape == (None, 100)


@pytest.mark.parametrize("variant, block_bns, other_bns", [
    ("v1", 2, 1),      # two per block; the stem's BN-ReLU
    ("preact", 2, 1),  # two per block; the final BN-ReLU
    ("type1", 1, 1),   # first BN-ReLU removed
    ("type2", 1, 1),   # second BN-ReLU removed
])
@pytest.mark.parametrize("depth", [8, 20])
def test_batch_normalization_layers_per_variant(depth, variant, block_bns, other_bns):
    n = (depth - 2) // 6
    gammas = weight_names(FastResNet(depth, variant), "/gamma")
    assert len(gammas) == 3 * n * block_bns + other_bns
    assert len([g for g in gammas if g.startswith("stage")]) == 3 * n * block_bns


def test_type1_has_half_the_block_batch_norms_of_preact():
    def block_bns(variant):
        return [g for g in weight_names(FastResNet(14, variant), "/gamma") if g.startswith("stage")]
    assert 2 * len(block_bns("type1")) == len(block_bns("preact")) == 2 * 6


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("depth", [8, 20])
def test_depth_counts_the_weighted_layers(depth, variant):
    model = FastResNet(depth, variant)
    kernels = [w for w in model.trainable_weights if w.path.endswith("/kernel")]
    three_by_three = [k for k in kernels if tuple(k.shape[:2]) == (3, 3)]
    assert len(three_by_three) + 1 == depth  # plus the classifier
    assert {tuple(k.shape) for k in kernels if len(k.shape) == 2} == {(64, 10)}


def test_stage_shapes_and_strides():
    model = FastResNet(20)
    shapes = {layer.name: layer.output.shape for layer in model.layers}
    assert shapes["stage1_block3"] == (None, 32, 32, 16)
    assert shapes["stage2_block1"] == (None, 16, 16, 32)
    assert shapes["stage3_block1"] == (None, 8, 8, 64)
    assert model.output_shape == (None, 10)
    assert FastResNet(20, include_top=False).output_shape == (None, 8, 8, 64)


def test_aliases():
    model = FastResNet110()
    assert model.name == "resnet110_type1"
    assert len([layer for layer in model.layers if layer.name.startswith("stage")]) == 54
    assert trainable_parameters(model) == expected_trainable_parameters(110, "type1", "A")
    assert FastResNet20("preact").name == "resnet20_preact"


def test_each_alias_builds_its_depth(monkeypatch):
    """What each alias asks FastResNet for (recorded, not built: 668 and 1202 are large)."""
    from keras_fastres import models
    asked = []
    monkeypatch.setattr(models, "FastResNet", lambda *args, **kwargs: asked.append(
        (args, kwargs)))
    for depth in (20, 32, 44, 56, 110, 668, 1202):
        getattr(keras_fastres, f"FastResNet{depth}")()
        getattr(keras_fastres, f"FastResNet{depth}")("preact", num_classes=100)
    assert asked == [call for depth in (20, 32, 44, 56, 110, 668, 1202) for call in (
        ((depth, "type1"), {}), ((depth, "preact"), {"num_classes": 100}))]


@pytest.mark.slow
def test_resnet1202_size():
    v1 = trainable_parameters(FastResNet(1202, "v1"))
    assert v1 == expected_trainable_parameters(1202, "v1", "A")
    assert round(v1 / 1e6, 1) == 19.4  # the reference CIFAR ResNet-1202
    assert trainable_parameters(FastResNet(1202)) == expected_trainable_parameters(1202, "type1", "A")


def test_normalization_uses_training_set_statistics():
    mean, std = CIFAR_STATS["cifar10"]
    normalise = FastResNet(20, "type1").get_layer("normalization")
    pixels = np.array([[[mean, np.add(mean, std)]]], "float32")
    np.testing.assert_allclose(normalise(pixels)[0, 0], [[0, 0, 0], [1, 1, 1]], atol=1e-5)
    # "auto" picks the CIFAR-100 statistics for a 100-class model.
    mean100, _ = CIFAR_STATS["cifar100"]
    normalise100 = FastResNet(20, num_classes=100).get_layer("normalization")
    np.testing.assert_allclose(normalise100(np.array([[[mean100]]], "float32")), 0, atol=1e-5)
    assert "normalization" not in [layer.name for layer in FastResNet(20, normalization=None).layers]


def test_weight_decay_gradient_is_weight_decay_times_w():
    model = FastResNet(20, weight_decay=1e-4)
    kernels = [w for w in model.trainable_weights if w.path.endswith("/kernel")]
    penalty = float(numpy(keras.ops.sum(model.losses)))
    # d/dw (wd / 2 * w^2) = wd * w
    expected = sum(1e-4 / 2 * float(np.sum(np.square(k.numpy()))) for k in kernels)
    np.testing.assert_allclose(penalty, expected, rtol=1e-5)
    assert len(model.losses) == 20  # 19 convolutions and the classifier, no BN parameters
    assert FastResNet(20, weight_decay=0).losses == []


def numpy(x):
    """NumPy values of a model's output on any backend (PyTorch's carry gradients)."""
    return keras.ops.convert_to_numpy(x)


def _images(batch=4, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (batch, 32, 32, 3)).astype("float32")


@pytest.mark.parametrize("variant", VARIANTS)
def test_keras_file_round_trip_gives_identical_outputs(variant, tmp_path):
    model = FastResNet(8, variant, shortcut="B", drop_path_rate=0.2)
    images = _images()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    model.fit(images, np.arange(4), epochs=1, verbose=0)  # move BN statistics off their defaults
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(model.predict(images, verbose=0), loaded.predict(images, verbose=0))
    assert loaded.get_layer("stage3_block1").get_config() == model.get_layer("stage3_block1").get_config()


ARGUMENTS = {"depth": 8, "variant": "v1", "num_classes": 7, "input_shape": [24, 24, 1],
             "shortcut": "B", "drop_path_rate": 0.1, "include_top": True, "weight_decay": 5e-4,
             "normalization": [[33.0], [78.5]], "classifier_activation": None,
             "synchronized_batch_norm": False, "batch_norm": "keras",
             "dtype": "mixed_bfloat16",
             "class_names": ["ant", "bee", "cat", "dog", "eel", "fox", "gnu"]}


def test_the_model_remembers_its_arguments(tmp_path):
    model = FastResNet(**{**ARGUMENTS, "input_shape": (24, 24, 1),
                          "normalization": ((33,), (78.5,))})
    assert model.get_config() == {**ARGUMENTS, "name": "resnet8_v1", "trainable": True}
    assert (model.depth, model.variant, model.class_names) == (8, "v1", ARGUMENTS["class_names"])
    assert model.get_layer("stage1_block1").compute_dtype == "bfloat16"
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert type(loaded) is FastResNet and loaded.get_config() == model.get_config()
    assert loaded.get_layer("stage1_block1").compute_dtype == "bfloat16"
    images = np.random.default_rng(0).uniform(0, 255, (2, 24, 24, 1)).astype("float32")
    np.testing.assert_array_equal(numpy(loaded(images)), numpy(model(images)))


def test_defaults_and_aliases_are_recorded_too():
    config = FastResNet20().get_config()
    assert config == {
        "depth": 20, "variant": "type1", "num_classes": 10, "input_shape": [32, 32, 3],
        "shortcut": "A", "drop_path_rate": 0.0, "include_top": True, "weight_decay": 1e-4,
        "normalization": "auto", "classifier_activation": "softmax",
        "synchronized_batch_norm": False, "batch_norm": "auto",
        "dtype": keras.config.dtype_policy().name, "class_names": None,
        "name": "resnet20_type1",
        "trainable": True}
    assert type(FastResNet.from_config(config)) is FastResNet


def test_a_config_of_release_0_3_with_a_resize_mode_gives_the_model_that_preparation():
    """0.3 kept the resize mode in the network's config; such a config (a .keras file of 0.3)
    still builds the model, with the mode in its preparation, and its config no longer has it."""
    from keras_fastres import ImagePreparation
    config = {**FastResNet(8, input_shape=(24, 20, 3)).get_config(), "resize": "pad"}
    model = FastResNet.from_config(config)
    assert model.preparation == ImagePreparation((24, 20), "pad")
    assert "resize" not in model.get_config()


def test_a_keras_file_of_release_0_1_0_still_loads():
    """Written by 0.1.0, where FastResNet returned a plain functional model (depth 8, preact,
    shortcut B, one training step so that the BN statistics are not their defaults)."""
    fixtures = Path(__file__).parent / "fixtures"
    model = keras.saving.load_model(fixtures / "resnet8_preact_B_0.1.0.keras")
    expected = np.load(fixtures / "resnet8_preact_B_0.1.0.npz")
    assert trainable_parameters(model) == expected_trainable_parameters(8, "preact", "B")
    np.testing.assert_allclose(
        numpy(model(expected["images"].astype("float32"), training=False)),
        expected["probabilities"], atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_config_round_trip_gives_identical_outputs(variant):
    model = FastResNet(8, variant, num_classes=100, shortcut="B")
    clone = type(model).from_config(model.get_config())
    clone.set_weights(model.get_weights())
    images = _images()
    np.testing.assert_array_equal(numpy(model(images, training=False)),
                                  numpy(clone(images, training=False)))
    assert clone.get_config() == model.get_config()


def test_stochastic_depth_changes_training_outputs_only():
    images = _images(8)
    plain = FastResNet(20, drop_path_rate=0.0)
    dropping = FastResNet(20, drop_path_rate=0.5)
    dropping.set_weights(plain.get_weights())
    inference = numpy(dropping(images, training=False))
    np.testing.assert_array_equal(inference, numpy(dropping(images, training=False)))
    np.testing.assert_allclose(inference, numpy(plain(images, training=False)), atol=1e-6)
    # Without it, training mode is deterministic too (BN uses the batch statistics).
    np.testing.assert_array_equal(numpy(plain(images, training=True)),
                                  numpy(plain(images, training=True)))
    assert not np.allclose(numpy(dropping(images, training=True)),
                           numpy(dropping(images, training=True)))


def test_stochastic_depth_decays_linearly_over_depth():
    model = FastResNet(20, drop_path_rate=0.5)
    rates = [layer.drop_path_rate for layer in model.layers if layer.name.startswith("stage")]
    np.testing.assert_allclose(rates, [0.5 * block / 9 for block in range(1, 10)])


def test_any_input_size_the_stages_can_halve():
    model = FastResNet(8, input_shape=(None, None, 3))
    assert model(np.zeros((2, 40, 24, 3), "float32")).shape == (2, 10)
    grey = FastResNet(8, input_shape=(28, 28, 1), normalization=((33.3,), (78.6,)))
    assert grey.output_shape == (None, 10)


def test_auto_normalization_warns_for_a_class_count_cifar_does_not_have():
    with pytest.warns(UserWarning, match=r"num_classes=5, normalization='auto'\) standardises "
                                         r"its input with CIFAR-10's mean and std"):
        FastResNet(8, num_classes=5)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FastResNet(8, num_classes=100)
        FastResNet(8, num_classes=5, normalization=((120.0, 120.0, 120.0), (60.0, 60.0, 60.0)))


@pytest.mark.parametrize("kwargs, message", [
    ({"depth": 21}, r"6n \+ 2 .*20, 32, 44, 56, 110.*got 21"),
    ({"depth": 2}, r"6n \+ 2 with n >= 1"),
    ({"depth": "110"}, r"6n \+ 2"),
    ({"variant": "fast"}, r"\['preact', 'type1', 'type2', 'v1'\], got 'fast'"),
    ({"shortcut": "C"}, r"\('A', 'B'\), got 'C'"),
    ({"num_classes": 1}, r"num_classes must be an integer >= 2, got 1"),
    ({"drop_path_rate": 1.5}, r"drop_path_rate must be in \[0, 1\)"),
    ({"weight_decay": -1}, r"weight_decay must be a number >= 0 .*got -1"),
    ({"weight_decay": "1e-4"}, r"weight_decay must be a number >= 0 .*got '1e-4'"),
    ({"input_shape": (32, 32)}, r"\(height, width, channels\)"),
    ({"input_shape": (2, 32, 3)}, r"None or integers >= 4"),
    ({"input_shape": (32, 32, 1)}, r"1 channels but the normalization statistics have 3"),
    ({"normalization": "imagenet"}, r"'auto', one of \['cifar10', 'cifar100'\]"),
    ({"normalization": (1.0, 2.0)}, r"\(mean, std\) pair of per-channel sequences"),
    ({"class_names": ["cat", "dog"]}, r"2 names for num_classes=10"),
    ({"class_names": "cat dog", "num_classes": 2}, r"list of non-empty one-line strings"),
    ({"class_names": ["cat", "two\nlines"], "num_classes": 2}, r"one-line strings"),
])
def test_bad_arguments_fail_fast_naming_the_valid_choices(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FastResNet(**{"depth": 20, **kwargs})


@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="synchronized BN is TensorFlow's; test_batch_norm checks the refusal")
def test_synchronized_batch_norm_reaches_every_bn_and_round_trips():
    model = FastResNet(8, "v1", shortcut="B", synchronized_batch_norm=True)
    bns = [layer for block in model.layers for layer in
           ([block] if isinstance(block, keras.layers.BatchNormalization) else
            [getattr(block, name) for name in ("bn1", "bn2", "projection_bn")
             if getattr(block, name, None) is not None])]
    assert len(bns) == 1 + 3 * 2 + 2  # stem, two per block, two projections
    assert all(bn.synchronized for bn in bns)
    clone = type(model).from_config(model.get_config())
    assert clone.get_layer("stage2_block1").projection_bn.synchronized
    assert not FastResNet(8).get_layer("stage1_block1").bn.synchronized
