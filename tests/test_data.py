"""Every CIFAR source on small data the test makes; the pipelines' augmentation and seeds."""

import time
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from keras_fastres import data

from conftest import write_cifar_archive


def small_split(n, num_classes, seed):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    return images, np.arange(n) % num_classes


@pytest.mark.parametrize("name, num_classes", [("cifar10", 10), ("cifar100", 100)])
@pytest.mark.parametrize("packed", [True, False])
def test_archive_source_reads_the_official_layout(tmp_path, name, num_classes, packed):
    train, test = small_split(120, num_classes, 0), small_split(30, num_classes, 1)
    path = write_cifar_archive(tmp_path, name, train, test, packed=packed)
    # The file itself, the folder holding it, and the extracted folder all work.
    for data_dir in {path, path.parent}:
        cifar = data.load_cifar(name, "archive", data_dir)
        np.testing.assert_array_equal(cifar.train.images, train[0])
        np.testing.assert_array_equal(cifar.train.labels, train[1])
        np.testing.assert_array_equal(cifar.test.images, test[0])
        assert cifar.train.images.dtype == np.uint8 and cifar.train.labels.dtype == np.int64
        assert cifar.num_classes == num_classes and len(cifar.class_names) == num_classes


def test_archive_pixels_are_decoded_channel_planes_row_major(tmp_path):
    image = np.zeros((1, 32, 32, 3), np.uint8)
    image[0, 0, 1, 0] = 200  # red, row 0, column 1
    image[0, 2, 0, 2] = 100  # blue, row 2, column 0
    path = write_cifar_archive(tmp_path, "cifar10", (image, np.array([3])), (image, np.array([4])))
    raw = np.zeros(3072, np.uint8)
    raw[1] = 200
    raw[2048 + 2 * 32] = 100
    # The writer follows the official description: 1024 red values, then green, then blue.
    assert np.array_equal(image[0].transpose(2, 0, 1).reshape(-1), raw)
    assert np.array_equal(data.load_cifar("cifar10", "archive", path).train.images, image)


def test_missing_archive_names_the_paths_tried(tmp_path):
    with pytest.raises(data.DataUnavailableError) as error:
        data.load_cifar("cifar100", "archive", tmp_path)
    message = str(error.value)
    assert str(tmp_path / "cifar-100-python.tar.gz") in message
    assert "https://www.cs.toronto.edu/~kriz/cifar.html" in message


def test_corrupt_archive_says_so(tmp_path):
    path = write_cifar_archive(tmp_path, "cifar10", small_split(20, 10, 0), small_split(10, 10, 1))
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    with pytest.raises(data.DataUnavailableError, match="incomplete or corrupt"):
        data.load_cifar("cifar10", "archive", path)


@pytest.mark.parametrize("content, what", [(b"", "an empty file"),
                                           (b"<html>not found</html>", "22 bytes of something")])
@pytest.mark.parametrize("given", ["file", "folder"])
def test_an_empty_or_junk_archive_is_named_as_such(tmp_path, content, what, given):
    path = tmp_path / "cifar-10-python.tar.gz"
    path.write_bytes(content)
    with pytest.raises(data.DataUnavailableError) as error:
        data.load_cifar("cifar10", "archive", path if given == "file" else tmp_path)
    assert str(error.value).startswith(f"{path} is not a tar.gz archive ({what}")


def test_archive_pickles_cannot_run_code(tmp_path):
    folder = write_cifar_archive(tmp_path, "cifar10", small_split(10, 10, 0),
                                 small_split(10, 10, 1), packed=False)
    import pickle
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": mock.ANY}))
    with pytest.raises(data.DataUnavailableError, match="unexpected object"):
        data.load_cifar("cifar10", "archive", folder)


@pytest.mark.parametrize("name, num_classes", [("cifar10", 10), ("cifar100", 100)])
def test_tfds_source_through_mock_data(name, num_classes, tmp_path):
    with tfds.testing.mock_data(num_examples=40), \
            mock.patch.object(data.catalog, "host_reachable", return_value=True):
        cifar = data.load_cifar(name, "tfds", tmp_path)
    assert cifar.train.images.shape == (40, 32, 32, 3) and cifar.train.images.dtype == np.uint8
    assert cifar.test.labels.shape == (40,) and cifar.test.labels.dtype == np.int64
    assert 0 <= cifar.train.labels.min() and cifar.train.labels.max() < num_classes


def test_tfds_without_network_fails_fast(tmp_path):
    start = time.perf_counter()
    with mock.patch.dict("os.environ", {"https_proxy": "", "HTTPS_PROXY": ""}), \
            mock.patch.object(data.catalog.socket, "create_connection",
                              side_effect=OSError("no route")):
        with pytest.raises(data.DataUnavailableError) as error:
            data.load_cifar("cifar10", "tfds", tmp_path)
    assert time.perf_counter() - start < 10
    assert str(tmp_path) in str(error.value) and "--source archive" in str(error.value)
    with pytest.raises(data.DataUnavailableError, match="downloading is off"):
        data.load_cifar("cifar10", "tfds", tmp_path, download=False)


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match=r"\('cifar10', 'cifar100'\), got 'cifar1000'"):
        data.load_cifar("cifar1000")
    with pytest.raises(ValueError, match=r"\('tfds', 'archive', 'synthetic'\), got 'web'"):
        data.load_cifar("cifar10", "web")


def test_synthetic_source_is_small_and_seeded():
    a, b = data.synthetic_cifar("cifar100", seed=5), data.synthetic_cifar("cifar100", seed=5)
    assert a.train.images.shape == (1024, 32, 32, 3) and a.test.images.shape == (256, 32, 32, 3)
    np.testing.assert_array_equal(a.train.images, b.train.images)
    assert a.train.labels.max() < 100


def batches(dataset):
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in dataset])
    return np.concatenate(images), np.concatenate(labels)


def test_test_pipeline_is_the_images_as_they_are_in_order():
    split = data.Split(*small_split(64, 10, 0))
    test_images, test_labels = batches(data.test_dataset(split, 16, 10))
    assert test_images.dtype == np.uint8 and test_images.shape == (64, 32, 32, 3)
    np.testing.assert_array_equal(test_images, split.images)  # no augmentation, in order
    np.testing.assert_array_equal(test_labels, split.labels)
    _, one_hot = batches(data.test_dataset(split, 16, 10, one_hot=True))
    np.testing.assert_array_equal(np.argmax(one_hot, axis=1), split.labels)


def test_training_images_are_padded_crops_possibly_mirrored():
    split = data.Split(*small_split(64, 64, 0))  # label i is image i
    train_images, train_labels = batches(data.TrainingData(split, 16, 1, 64).epoch(0))
    assert train_images.shape == (64, 32, 32, 3) and train_images.dtype == np.uint8
    assert sorted(train_labels) == list(range(64))  # each image once per epoch ...
    assert not np.array_equal(train_labels, split.labels)  # ... shuffled
    padded = np.pad(split.images, [(0, 0), (4, 4), (4, 4), (0, 0)])
    changed = 0
    for image, label in zip(train_images, train_labels):
        original = padded[label]
        assert any(np.array_equal(window, image)
                   for flipped in (original, original[:, ::-1])
                   for window in (flipped[i:i + 32, j:j + 32]
                                  for i in range(9) for j in range(9)))
        changed += not np.array_equal(image, split.images[label])
    assert changed > 48  # 1 in 162 crop/flip choices leaves an image as it was


def test_crop_and_flip_takes_the_window_asked_for():
    images = small_split(3, 10, 2)[0]
    offsets = np.array([[0, 8], [4, 4], [8, 1]], np.int32)
    flips = np.array([False, True, True])
    out = data.crop_and_flip(images, offsets, flips).numpy()
    padded = np.pad(images, [(0, 0), (4, 4), (4, 4), (0, 0)])
    for k, ((row, column), flip) in enumerate(zip(offsets, flips)):
        window = padded[k, row:row + 32, column:column + 32]
        np.testing.assert_array_equal(out[k], window[:, ::-1] if flip else window)


def test_crops_cover_all_81_offsets_and_flip_about_half():
    draws = [data.augmentation_draws(tf.constant([3, batch], tf.int64), 128)
             for batch in range(40)]
    offsets = np.concatenate([o.numpy() for o, _ in draws])  # 5,120 draws
    flips = np.concatenate([f.numpy() for _, f in draws])
    assert offsets.min() == 0 and offsets.max() == 8
    assert len({tuple(o) for o in offsets}) == 81
    counts = np.unique(offsets[:, 0] * 9 + offsets[:, 1], return_counts=True)[1]
    assert counts.min() > 5120 / 81 / 2  # roughly uniform
    assert 0.46 < flips.mean() < 0.54


def test_every_draw_is_a_function_of_seed_epoch_and_batch():
    split = data.Split(*small_split(48, 10, 0))
    pipeline = data.TrainingData(split, 16, 7, 10)
    epoch1, again = batches(pipeline.epoch(1)), batches(data.TrainingData(split, 16, 7, 10).epoch(1))
    for a, b in zip(epoch1, again):
        np.testing.assert_array_equal(a, b)  # another pipeline, the same epoch: the same data
    assert not np.array_equal(epoch1[1], batches(pipeline.epoch(2))[1])  # epochs differ
    assert not np.array_equal(epoch1[1], batches(data.TrainingData(split, 16, 8, 10).epoch(1))[1])


def test_shares_are_disjoint_and_cover_each_global_batch():
    split = data.Split(*small_split(100, 100, 0))  # label i is image i
    pipeline = data.TrainingData(split, 32, 4, 100)
    whole = [(x.numpy(), y.numpy()) for x, y in pipeline.epoch(0)]
    assert [len(y) for _, y in whole] == [32, 32, 32, 4]
    # Three replicas: one pipeline for replica 0, one for replicas 1 and 2 (a second worker).
    first = [(x.numpy(), y.numpy()) for x, y in pipeline.epoch(0, 0, 1, 3)]
    second = [(x.numpy(), y.numpy()) for x, y in pipeline.epoch(0, 1, 2, 3)]
    for batch, (images, labels) in enumerate(whole):
        shares = [first[batch], second[2 * batch], second[2 * batch + 1]]
        share_labels = [set(y.tolist()) for _, y in shares]
        assert all(not (a & b) for a in share_labels for b in share_labels if a is not b)
        np.testing.assert_array_equal(np.concatenate([y for _, y in shares]), labels)
        np.testing.assert_array_equal(np.concatenate([x for x, _ in shares]), images)


def test_mixing_augmentations_give_one_hot_labels_and_stay_seeded():
    split = data.Split(*small_split(32, 10, 0))

    def first_batch(seed):
        pipeline = data.TrainingData(split, 16, seed, 10, extra_augmentation=("mixup",
                                                                              "randaugment"))
        return next(iter(pipeline.epoch(0)))
    images, labels = first_batch(0)
    assert images.shape == (16, 32, 32, 3) and images.dtype == np.float32
    assert labels.shape == (16, 10)
    np.testing.assert_allclose(np.sum(labels, axis=1), 1.0, atol=1e-5)
    assert np.any((labels > 0) & (labels < 1))  # mixed
    again, _ = first_batch(0)
    np.testing.assert_array_equal(images, again)
    with pytest.raises(ValueError, match="extra augmentation must be taken from"):
        data.TrainingData(split, 16, 0, 10, extra_augmentation=("autoaugment",))
