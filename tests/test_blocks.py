"""Each block computes its equation (PAPER.md), its shortcut options and stochastic depth."""

import numpy as np
import pytest
from keras import ops

from keras_fastres import PreactBlock, Type1Block, Type2Block, V1Block
from keras_fastres.blocks import BLOCKS


def relu(x):
    return ops.relu(x)


def numpy(x):
    """NumPy values of a layer's output on any backend (PyTorch's carry gradients)."""
    return ops.convert_to_numpy(x)


# The paper's equations, written with the block's own sublayers in inference mode.
EQUATIONS = {
    "v1": lambda b, x, s: relu(s + b.bn2(b.conv2(relu(b.bn1(b.conv1(x)))))),
    "preact": lambda b, x, s: s + b.conv2(relu(b.bn2(b.conv1(relu(b.bn1(x)))))),
    "type1": lambda b, x, s: s + b.conv2(relu(b.bn(b.conv1(x)))),
    "type2": lambda b, x, s: s + b.conv2(b.conv1(relu(b.bn(x)))),
}
# Variants whose blocks have sublayers of the same names, so each equation runs on the other.
SIBLING = {"v1": "preact", "preact": "v1", "type1": "type2", "type2": "type1"}


def randomise_batch_norms(block, rng):
    """Non-trivial BN statistics, so that a misplaced BN changes the output."""
    for weight in block.weights:
        name = weight.path.rsplit("/", 1)[-1]
        if name in ("gamma", "moving_variance"):
            weight.assign(rng.uniform(0.5, 2.0, weight.shape).astype("float32"))
        elif name in ("beta", "moving_mean"):
            weight.assign(rng.normal(0, 0.5, weight.shape).astype("float32"))


@pytest.mark.parametrize("variant", sorted(BLOCKS))
def test_block_computes_the_papers_equation(variant):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 8, 8, 16)).astype("float32")
    block = BLOCKS[variant](16)
    block.build(x.shape)
    randomise_batch_norms(block, rng)
    x = ops.convert_to_tensor(x)
    expected = numpy(EQUATIONS[variant](block, x, x))
    np.testing.assert_allclose(numpy(block(x, training=False)), expected, rtol=1e-5, atol=1e-5)
    # The sibling variant's equation on the same sublayers gives something else.
    sibling = numpy(EQUATIONS[SIBLING[variant]](block, x, x))
    assert not np.allclose(numpy(block(x, training=False)), sibling, atol=1e-3)


def test_option_a_shortcut_subsamples_and_zero_pads():
    x = np.random.default_rng(1).normal(size=(2, 8, 8, 16)).astype("float32")
    block = Type1Block(32, strides=2, shortcut="A")
    block.build(x.shape)
    block.conv2.kernel.assign(np.zeros(block.conv2.kernel.shape, "float32"))
    y = numpy(block(x, training=False))
    assert y.shape == (2, 4, 4, 32)
    np.testing.assert_array_equal(y[..., :16], x[:, ::2, ::2, :])
    np.testing.assert_array_equal(y[..., 16:], 0.0)
    assert not block.weights[0].path.endswith("projection/kernel")


@pytest.mark.parametrize("block_class, projection_weights", [
    (V1Block, 16 * 32 + 2 * 32 + 2 * 32),  # 1x1 kernel, BN gamma/beta + moving mean/variance
    (PreactBlock, 16 * 32),
    (Type1Block, 16 * 32),
    (Type2Block, 16 * 32),
])
def test_option_b_projects_with_a_1x1_convolution(block_class, projection_weights):
    block_a, block_b = block_class(32, strides=2, shortcut="A"), block_class(32, strides=2, shortcut="B")
    block_a.build((None, 8, 8, 16))
    block_b.build((None, 8, 8, 16))
    assert block_b.count_params() - block_a.count_params() == projection_weights
    assert tuple(block_b.projection.kernel.shape) == (1, 1, 16, 32)


def test_option_a_refuses_to_drop_channels():
    with pytest.raises(ValueError, match="shortcut='B'"):
        Type1Block(16, strides=2, shortcut="A").build((None, 8, 8, 32))


@pytest.mark.parametrize("variant", sorted(BLOCKS))
def test_block_config_round_trip(variant):
    block = BLOCKS[variant](32, strides=2, shortcut="B", drop_path_rate=0.25,
                            weight_decay=5e-4, name="b")
    config = block.get_config()
    clone = BLOCKS[variant].from_config(config)
    assert clone.get_config() == config
    assert {k: config[k] for k in ("filters", "strides", "shortcut", "drop_path_rate",
                                   "weight_decay")} == {
        "filters": 32, "strides": 2, "shortcut": "B", "drop_path_rate": 0.25,
        "weight_decay": 5e-4}


def test_drop_path_drops_whole_residual_branches_per_sample():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(64, 4, 4, 16)).astype("float32")
    block = Type1Block(16, drop_path_rate=0.5)
    block.build(x.shape)
    residual = numpy(block(x, training=True)) - x
    # Each sample's branch is dropped (0) or kept and scaled by 1 / (1 - 0.5). BN uses batch
    # statistics in training, so the kept branch is the equation's branch in training mode.
    branch = numpy(block.conv2(relu(block.bn(block.conv1(x), training=True))))
    dropped = np.all(np.abs(residual) < 1e-6, axis=(1, 2, 3))
    kept = np.all(np.abs(residual - 2.0 * branch) < 1e-4, axis=(1, 2, 3))
    assert np.all(dropped | kept)
    assert 10 < dropped.sum() < 54  # about half of 64 samples
    # Inference is the deterministic full block, the same on every call.
    first, second = numpy(block(x, training=False)), numpy(block(x, training=False))
    np.testing.assert_array_equal(first, second)
    x = ops.convert_to_tensor(x)
    np.testing.assert_allclose(first, numpy(EQUATIONS["type1"](block, x, x)), atol=1e-5)


def test_block_arguments_are_checked():
    with pytest.raises(ValueError, match=r"\('A', 'B'\)"):
        Type1Block(16, shortcut="C")
    with pytest.raises(ValueError, match="strides must be 1 or 2"):
        Type1Block(16, strides=3)
    with pytest.raises(ValueError, match=r"drop_path_rate must be in \[0, 1\)"):
        Type1Block(16, drop_path_rate=1.0)
