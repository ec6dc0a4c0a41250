"""Your own images end to end: scikit-learn's handwritten digits as a folder of PNG, JPEG, BMP and
GIF files in class folders named by words, trained through fastres-train, served with their
class names by fastres-predict and on onnxruntime, and fine-tuned on three of the classes at
another image size; a (mocked) TFDS catalog data set through the command line."""

import contextlib
import json
import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from keras_fastres.commands.export import main as export_main
from keras_fastres.commands.predict import main as predict_main
from keras_fastres.commands.train import command as train_command
from keras_fastres.data import DataUnavailableError

# Sorted, the class folders are not in digit order: label i is not digit i.
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TRAIN_DIGITS = 1400  # of scikit-learn's 1,797


def png_header(width, height):
    """A PNG that declares width x height RGB pixels and holds none (a decompression bomb's
    header)."""
    def chunk(kind, content):
        return (struct.pack(">I", len(content)) + kind + content
                + struct.pack(">I", zlib.crc32(kind + content)))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0,
                                                              0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def digits_folder(root, split=True, classes=WORDS, size=16):
    """The digits as 16x16 images in root/{train,test}/<word>/ (split) or root/<word>/, saved
    in turn as grayscale PNG, RGB JPEG, RGB BMP, palette GIF and RGBA PNG."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.images))
    for rank, index in enumerate(order):
        word = WORDS[digits.target[index]]
        if word not in classes:
            continue
        folder = root / ("train" if rank < TRAIN_DIGITS else "test") if split else root
        (folder / word).mkdir(parents=True, exist_ok=True)
        pixels = np.round(digits.images[index] * (255 / 16)).astype(np.uint8)
        image = Image.fromarray(pixels, "L").resize((size, size), Image.Resampling.BILINEAR)
        kind = rank % 5
        name = folder / word / f"{index}.{('png', 'jpg', 'bmp', 'gif', 'png')[kind]}"
        if kind == 0:
            image.save(name)
        elif kind in (1, 2):
            image.convert("RGB").save(name, **({"quality": 95} if kind == 1 else {}))
        elif kind == 3:
            image.convert("P").save(name)
        else:
            image.convert("RGBA").save(name)
    return root


def test_digits_in_a_folder_train_export_predict_and_fine_tune(digits_run, tmp_path, capsys):
    """The session's digits run (conftest.digits_run: fastres-train on the digits folder, with
    a text file, a damaged PNG and a bomb's header among its images); then predict, ONNX and a
    fine-tune from it."""
    import keras
    import onnxruntime

    import keras_fastres  # noqa: F401 (registers the model)

    root, run = digits_run
    err = (run.parent / "train.err").read_text()
    metrics = json.loads((run / "metrics.json").read_text())
    # A silent bug in labels, class order, normalisation or augmentation keeps it far above.
    assert metrics["test_error"] <= 0.10, metrics["test_error"]
    assert metrics["class_names"] == sorted(WORDS) and metrics["dataset"] == "digits"
    assert (metrics["train_images"], metrics["test_images"]) == (TRAIN_DIGITS, 397)
    assert metrics["skipped_images"] == 2 and len(metrics["skipped_files"]) == 2
    warning = [line for line in err.splitlines() if line.startswith("warning: skipped")]
    assert len(warning) == 1 and "broken.png" in warning[0] and "bomb.png" in warning[0]
    assert "10000x10000 pixels" in warning[0] and "notes.txt" not in warning[0]
    ignored = [line for line in err.splitlines() if line.startswith("warning: ignored")]
    assert len(ignored) == 1 and "ignored 1 file of types Pillow does not read" in ignored[0]
    assert "notes.txt" in ignored[0]
    model = keras.saving.load_model(run / "model.keras")
    assert model.class_names == sorted(WORDS) and model.input_shape == (None, 16, 16, 3)
    mean, std = model.get_config()["normalization"]
    # The digits' own statistics (grey, mostly black), not CIFAR's (mean ~120 on each channel).
    assert mean == pytest.approx([mean[0]] * 3) and 0 < mean[0] < 100 and std[0] > 50

    # fastres-predict names the classes with the folder names, as the model ranks them.
    files = sorted((root / "test").rglob("*.*"))[::10]
    assert predict_main([str(run / "export"), *map(str, files), "--top", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    printed = [re.match(r".*: (\w+) [\d.]+%, \w+ [\d.]+%$", line).group(1) for line in lines]
    from keras_fastres import ImagePreparation
    from keras_fastres.serving.predict import load_image
    pixels = np.stack([load_image(path, ImagePreparation(16)) for path in files])
    ranked = model.predict(pixels.astype("float32"), verbose=0).argmax(axis=1)
    assert printed == [sorted(WORDS)[i] for i in ranked]
    assert np.mean([name == path.parent.name for name, path in zip(printed, files)]) >= 0.8
    # The SavedModel itself: the names as its asset and the top class's name as an output.
    import tensorflow as tf
    saved = tf.saved_model.load(str(run / "export" / "1"))
    answer = saved.signatures["serving_default"](images=tf.constant(pixels))
    assert [name.decode() for name in answer["class_name"].numpy()] == printed
    assert (run / "export" / "1" / "assets" / "class_names.txt").read_text().split() == sorted(WORDS)

    # The ONNX model: the same classes on onnxruntime, the names in its metadata.
    assert export_main(["--model", str(run), "--export-dir", str(tmp_path / "onnx"),
                        "--format", "onnx"]) == 0
    session = onnxruntime.InferenceSession(str(tmp_path / "onnx" / "1" / "model.onnx"),
                                           providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["class_names"]) == sorted(WORDS)
    classes = session.run(["classes"], {"images": pixels})[0]
    np.testing.assert_array_equal(classes, ranked)

    # Fine-tuning on three classes at 12x12: every convolution loads, the classifier is new.
    three = digits_folder(tmp_path / "three", split=False, classes=("one", "four", "seven"),
                          size=12)
    tuned = tmp_path / "tuned"
    code = train_command(["--data", str(three), "--no-flip", "--image-size", "12", "--depth",
                          "8", "--epochs", "2", "--batch-size", "64", "--learning-rate", "0.01",
                          "--seed", "0", "--init-from", str(run), "--output-dir", str(tuned)])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "the classifier replaced (10 -> 3 classes, newly initialised)" in out.out
    metrics = json.loads((tuned / "metrics.json").read_text())
    assert metrics["class_names"] == ["four", "one", "seven"] and metrics["test_error"] <= 0.10
    source = model.get_layer("stage2_block1").get_weights()[0]
    tuned_weights = keras.saving.load_model(tuned / "model.keras").get_layer(
        "stage2_block1").get_weights()[0]
    assert np.corrcoef(source.ravel(), tuned_weights.ravel())[0, 1] > 0.9


def class_folders(root, counts, size=(8, 8), suffix="png"):
    """root/<class>/<i>.<suffix>: `counts` {class: image count} of random RGB images."""
    rng = np.random.default_rng(0)
    for name, count in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(
                root / name / f"{i}.{suffix}")
    return root


def two_splits(root, train, test):
    class_folders(root / "train", train)
    class_folders(root / "test", test)
    return root


@pytest.mark.parametrize("make, extra, message", [
    (lambda root: root.mkdir(), [], "holds no class folders"),
    (lambda root: class_folders(root, {"cat": 3}), [], r"a single class folder \(cat\)"),
    (lambda root: class_folders(root, {"cat": 3, "dog": 0}), [],
     "Class 'dog' .* has no training images"),
    (lambda root: two_splits(root, {"cat": 2, "dog": 2}, {"cat": 1, "cow": 1}), [],
     "Test class 'cow' .* is not a training class; the training classes are .*: cat, dog"),
    (lambda root: class_folders(root, {"cat": 4, "dog": 4}), ["--cache-dir", "/dev/null"],
     "The cache dir cannot be made: /dev/null is a file, not a folder; pass a --cache-dir "
     "that is a folder"),
    (lambda root: class_folders(root, {"cat": 2, "dog": 2}), ["--dataset", "cifar100"],
     "data and dataset are two data sets"),
    (lambda root: class_folders(root, {"cat": 2, "dog": 2}), ["--image-size", "3"],
     "each at least 4"),
    (lambda root: class_folders(root, {"cat": 2, "dog": 2}), ["--validation-fraction", "1"],
     "validation_fraction must be between 0 and 1"),
    (lambda root: class_folders(root, {"cat": 2, "dog": 2}), ["--init-from", "/no/run"],
     "init_from /no/run does not exist"),
    (lambda root: None, [], "is not a folder"),
    (lambda root: class_folders(root, {"cat": 1, "dog": 1}), [], "leaves no test image"),
])
def test_each_bad_folder_is_one_line_before_any_training(make, extra, message, tmp_path,
                                                          capsys):
    make(tmp_path / "images")
    code = train_command(["--data", str(tmp_path / "images"), *extra, "--output-dir",
                          str(tmp_path / "run")])
    error = capsys.readouterr().err
    assert code in (1, 2) and re.search(message, error), error
    assert error.startswith("error: ") and error.count("\n") == 1, error
    assert not (tmp_path / "run").exists()


def test_fine_tuning_another_network_is_refused_naming_what_differs(tmp_path, capsys):
    from keras_fastres import FastResNet

    FastResNet(14, "type1", input_shape=(8, 8, 3)).save(tmp_path / "other.keras")
    class_folders(tmp_path / "images", {"cat": 4, "dog": 4})
    code = train_command(["--data", str(tmp_path / "images"), "--image-size", "8", "--depth", "8",
                          "--epochs", "1", "--init-from", str(tmp_path / "other.keras"), "--output-dir",
                          str(tmp_path / "run")])
    error = capsys.readouterr().err
    assert code == 2 and "differs from this run's ResNet-8 type1 (depth 14 here 8)" in error, error
    assert "same --depth, --variant and --shortcut" in error and error.count("\n") == 1
    # Refused before the folder is decoded: no cache entry holds it.
    for manifest in Path(os.environ["KERAS_FASTRES_CACHE"]).glob("folders/*/manifest.json"):
        try:
            held = manifest.read_text()
        except FileNotFoundError:  # another test worker's entry, published or removed meanwhile
            continue
        assert str(tmp_path / "images") not in held


@contextlib.contextmanager
def online(splits=()):
    """As with a network: every download host reachable, and TFDS's published split metadata
    `splits` (none: unpublished)."""
    from unittest import mock

    from keras_fastres.data import catalog
    with mock.patch.object(catalog, "host_reachable", return_value=True), \
            mock.patch.object(catalog, "published_splits", return_value=set(splits)):
        yield


def test_a_tfds_set_is_checked_before_any_download(tmp_path, monkeypatch):
    """A text data set, an unreachable host, a split the published metadata lacks: each is one
    line before TFDS downloads or writes anything (it used to retry for minutes first)."""
    import tensorflow_datasets as tfds

    from keras_fastres.data import catalog, load_catalog

    def no_download(*args, **kwargs):
        raise AssertionError("downloaded before the checks")
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_download)
    data_dir = tmp_path / "tfds"
    with online(), pytest.raises(DataUnavailableError,
                                 match="'imdb_reviews' is not an image classification"):
        load_catalog("imdb_reviews", str(data_dir))
    reached = []
    monkeypatch.setattr(catalog, "host_reachable", lambda host: reached.append(host) or False)
    monkeypatch.delenv("https_proxy", raising=False)
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    with pytest.raises(DataUnavailableError) as offline:
        load_catalog("mnist", str(data_dir))
    assert str(offline.value) == (
        f"TFDS data set 'mnist' is not prepared in {data_dir / 'mnist' / '3.0.1'} and "
        f"storage.googleapis.com cannot be reached to download it. Connect this machine to the "
        f"network, or prepare the data set where there is one and pass its folder with "
        f"--data-dir.")
    assert reached == ["storage.googleapis.com"]  # mnist's host, from its checksums file
    with online({"train", "test"}), pytest.raises(DataUnavailableError) as split:
        load_catalog("mnist", str(data_dir), train_split="nope")
    assert str(split.value) == ("TFDS data set 'mnist' has no split 'nope' (--train-split); it "
                                "has ['test', 'train'].")
    assert not any(data_dir.rglob("*.*")), "no file written"


def test_the_published_split_metadata_is_read_when_it_can_be(monkeypatch):
    """dataset_info.json as TFDS publishes it (the DatasetInfo proto as JSON)."""
    import io

    import tensorflow_datasets as tfds

    from keras_fastres.data import catalog
    builder = tfds.builder("mnist")
    asked = []

    def urlopen(url, timeout):
        asked.append(url)
        return io.BytesIO(json.dumps({"name": "mnist", "splits": [
            {"name": "test", "numBytes": "3150056", "shardLengths": ["10000"]},
            {"name": "train", "numBytes": "18920109", "shardLengths": ["60000"]}]}).encode())
    monkeypatch.setattr(catalog.urllib.request, "urlopen", urlopen)
    monkeypatch.setattr(catalog, "host_reachable", lambda host: True)
    assert catalog.published_splits(builder) == {"train", "test"}
    assert asked == ["https://storage.googleapis.com/tfds-data/dataset_info/mnist/3.0.1/"
                     "dataset_info.json"]
    monkeypatch.setattr(catalog.urllib.request, "urlopen",
                        lambda url, timeout: io.BytesIO(b"<html>not found</html>"))
    assert catalog.published_splits(builder) == set()  # checked after preparing, as before
    monkeypatch.setattr(catalog, "host_reachable", lambda host: False)
    monkeypatch.delenv("https_proxy", raising=False)
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    assert catalog.published_splits(builder) == set()


def test_a_tfds_catalog_data_set_trains_through_the_command_line(tmp_path, capsys):
    """fashion_mnist (grayscale 28x28, ten named classes), mocked: RGB at its own size."""
    import keras
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=24), online():
        code = train_command(["--dataset", "tfds:fashion_mnist", "--image-size", "28", "--depth",
                              "8", "--epochs", "1", "--batch-size", "12", "--data-dir",
                              str(tmp_path / "tfds"), "--output-dir", str(tmp_path / "run")])
    out = capsys.readouterr()
    assert code == 0, out.err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["dataset"] == "tfds:fashion_mnist" and metrics["train_images"] == 24
    assert metrics["class_names"][:2] == ["T-shirt/top", "Trouser"]
    model = keras.saving.load_model(tmp_path / "run" / "model.keras")
    assert model.input_shape == (None, 28, 28, 3) and model.class_names[-1] == "Ankle boot"


def test_an_unknown_tfds_name_is_one_line(tmp_path, capsys):
    code = train_command(["--dataset", "tfds:no_such_set", "--output-dir", str(tmp_path / "r")])
    error = capsys.readouterr().err
    assert code == 1 and "TFDS has no data set named 'no_such_set'" in error
    assert error.count("\n") == 1


def test_every_format_and_mode_decodes_to_the_same_rgb_pixels(tmp_path):
    from keras_fastres.data.folder import decode_image

    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (6, 10), dtype=np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    Image.fromarray(grey, "L").save(tmp_path / "grey.png")
    Image.fromarray(rgb).save(tmp_path / "rgb.bmp")
    rgba = np.concatenate([rgb, np.full((6, 10, 1), 7, np.uint8)], axis=-1)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    frames = [Image.fromarray(grey, "L").convert("P"), Image.new("P", (10, 6), 3)]
    frames[0].save(tmp_path / "animated.gif", save_all=True, append_images=frames[1:])
    for name in ("grey.png", "rgb.bmp", "alpha.png", "animated.gif"):  # GIF: its first frame
        np.testing.assert_array_equal(decode_image(tmp_path / name, 6, 10), rgb, err_msg=name)
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "sixteen_bits.png")
    np.testing.assert_array_equal(decode_image(tmp_path / "sixteen_bits.png", 6, 10), rgb)
    Image.fromarray(rgb).save(tmp_path / "photo.jpg", quality=100)
    assert np.abs(decode_image(tmp_path / "photo.jpg", 6, 10).astype(int) - rgb).max() <= 8
    # Resized with antialiasing: a checkerboard of single pixels, shrunk 4x, averages to grey.
    board = (np.indices((32, 32)).sum(axis=0) % 2 * 255).astype(np.uint8)
    Image.fromarray(board, "L").save(tmp_path / "board.png")
    assert np.abs(decode_image(tmp_path / "board.png", 8, 8).astype(int) - 128).max() <= 2
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "bomb.png").write_bytes(png_header(10_000, 10_000))
    (tmp_path / "huge_bomb.png").write_bytes(png_header(20_000, 20_000))  # refused by Pillow
    for name, reason in (("empty.jpg", "cannot identify image file"),
                         ("bomb.png", "declares 10000x10000 pixels"),
                         ("huge_bomb.png", "could be decompression bomb")):
        with pytest.raises(ValueError, match=reason):
            decode_image(tmp_path / name, 8, 8)


def test_the_hold_out_is_stratified_seeded_and_keeps_every_class_in_training():
    from keras_fastres.data.splits import holdout

    labels = np.repeat([0, 1, 2], [50, 20, 1])
    train, test = holdout(labels, 0.1, seed=0)
    assert np.bincount(labels[test], minlength=3).tolist() == [5, 2, 0]
    assert sorted([*train, *test]) == list(range(len(labels)))
    assert np.array_equal(holdout(labels, 0.1, seed=0)[1], test)  # a pure function
    assert not np.array_equal(holdout(labels, 0.1, seed=1)[1], test)


def test_a_folder_with_train_and_test_keeps_its_splits_and_names(tmp_path):
    from keras_fastres import load_image_folder

    two_splits(tmp_path, {"b_cat": 3, "a_dog": 2}, {"b_cat": 1})
    (tmp_path / "train" / ".hidden").mkdir()  # not a class
    loaded = load_image_folder(tmp_path, image_size=(12, 8))
    assert loaded.class_names == ("a_dog", "b_cat")
    assert loaded.train.images.shape == (5, 12, 8, 3) and loaded.train.images.dtype == np.uint8
    assert loaded.train.labels.tolist() == [0, 0, 1, 1, 1] and loaded.test.labels.tolist() == [1]
    assert loaded.train.labels.dtype == np.int64 and loaded.skipped == []


def test_the_crop_pads_an_eighth_of_each_side_and_no_flip_flips_nothing():
    import tensorflow as tf

    from keras_fastres.data import Split, TrainingData, augmentation_draws

    offsets, flips = augmentation_draws(tf.constant([1, 2], tf.int64), 4000, (2, 8))
    assert offsets[:, 0].numpy().max() == 4 and offsets[:, 1].numpy().max() == 16
    assert offsets.numpy().min() == 0 and 0.4 < flips.numpy().mean() < 0.6
    assert not augmentation_draws(tf.constant([1, 2], tf.int64), 100, flip=False)[1].numpy().any()
    # CIFAR's draws are those of the previous release: offsets in [0, 8] on both axes.
    cifar, _ = augmentation_draws(tf.constant([1, 2], tf.int64), 4000)
    assert cifar.numpy().max() == 8
    # A 16x64 image: pads 2 and 8; without flips every crop is a shifted copy of the image.
    image = np.arange(16 * 64 * 3).reshape(1, 16, 64, 3) % 251
    split = Split(np.repeat(image, 8, axis=0).astype(np.uint8), np.arange(8) % 2)
    pipeline = TrainingData(split, 8, 0, 2, flip=False)
    assert pipeline.padding == (2, 8)
    crops, _ = next(iter(pipeline.epoch(0)))
    padded = np.pad(image[0], ((2, 2), (8, 8), (0, 0)))
    for crop in crops.numpy():
        assert any(np.array_equal(crop, padded[r:r + 16, c:c + 64])
                   for r in range(5) for c in range(17))


def test_a_run_resumes_only_on_the_same_files(tmp_path, monkeypatch, capsys):
    from keras_fastres.training.backup import Backup

    images = class_folders(tmp_path / "images", {"cat": 6, "dog": 6})
    args = ["--data", str(images), "--image-size", "8", "--depth", "8", "--epochs", "3",
            "--batch-size", "4", "--output-dir", str(tmp_path / "run")]
    save = Backup.on_epoch_end

    def killed_after_first_epoch(self, epoch, logs=None):
        save(self, epoch, logs)
        raise KeyboardInterrupt
    monkeypatch.setattr(Backup, "on_epoch_end", killed_after_first_epoch)
    assert train_command(args) == 130
    monkeypatch.setattr(Backup, "on_epoch_end", save)
    class_folders(tmp_path / "more", {"dog": 1})
    (tmp_path / "more" / "dog" / "0.png").rename(images / "dog" / "new.png")
    capsys.readouterr()
    assert train_command(args) == 2
    error = capsys.readouterr().err
    assert "holds an unfinished run of another experiment (data_files" in error
    (images / "dog" / "new.png").unlink()
    # A file rewritten under its name (other pixels, another modification time) is other data;
    # the same bytes and time back, the same data.
    first = images / "cat" / "0.png"
    original, stamp = first.read_bytes(), first.stat()
    first.write_bytes((images / "cat" / "1.png").read_bytes())
    assert train_command(args) == 2
    assert "another experiment (data_content" in capsys.readouterr().err
    first.write_bytes(original)
    os.utime(first, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert train_command(args) == 0
    assert "Resuming" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--image-size", "64", "--synthetic"], "image_size is for --data and tfds:NAME"),
    (["--dataset", "imagenet"], r"or tfds:NAME .*got 'imagenet'; for a folder .* --data DIR"),
    (["--dataset", "tfds:mnist", "--source", "archive", "--data-dir", "/tmp"],
     "source 'archive' is for CIFAR"),
    (["--data", "/tmp", "--data-dir", "/tmp"], "--data reads its own folder: drop --data-dir"),
])
def test_data_options_for_another_source_are_refused(args, message, tmp_path, capsys):
    assert train_command([*args, "--output-dir", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err
    assert re.search(message, error) and error.count("\n") == 1, error


def test_a_tfds_set_without_a_test_split_holds_one_out(tmp_path, capsys, caplog):
    """eurosat/rgb has only "train" (its split metadata stood in for: the mock has none)."""
    caplog.set_level("INFO", logger="keras_fastres")
    from unittest import mock

    import tensorflow_datasets as tfds

    from keras_fastres.data import load_catalog

    only_train = mock.patch.object(tfds.core.DatasetInfo, "splits",
                                   new_callable=mock.PropertyMock,
                                   return_value={"train": mock.MagicMock(num_bytes=0)})
    with tfds.testing.mock_data(num_examples=40), only_train, online():
        loaded = load_catalog("eurosat/rgb", str(tmp_path), image_size=(16, 16))
        assert (len(loaded.train.labels), len(loaded.test.labels)) == (
            40 - len(loaded.test.labels), len(loaded.test.labels))
        assert 1 <= len(loaded.test.labels) <= 10 and loaded.train.images.shape[1:] == (16, 16, 3)
        assert loaded.class_names[0] == "AnnualCrop"
        assert "has no 'test' split: holding out 10%" in caplog.text  # logged, not printed
        assert capsys.readouterr().out == ""
        with pytest.raises(Exception, match=r"no split 'validation' \(--test-split\); it has "
                                            r"\['train'\]"):
            load_catalog("eurosat/rgb", str(tmp_path), test_split="validation")


def test_a_damaged_file_is_a_warning_and_the_loader_prints_nothing(tmp_path, capsys, caplog):
    """As a library: the skipped file is a FastResWarning, the decoding start and end are log
    records (INFO), and nothing reaches stdout or stderr (the commands print them)."""
    from keras_fastres import load_image_folder
    from keras_fastres.errors import FastResWarning
    caplog.set_level("INFO", logger="keras_fastres")
    class_folders(tmp_path, {"a": 4, "b": 4})
    (tmp_path / "a" / "broken.png").write_bytes(b"not a png")
    seen = []
    with pytest.warns(FastResWarning, match=r"skipped 1 of 9 image files .*broken\.png"):
        loaded = load_image_folder(tmp_path, 8, progress=lambda done, total: seen.append(
            (done, total)))
    assert len(loaded.train.labels) + len(loaded.test.labels) == 8
    assert capsys.readouterr() == ("", "")
    assert f"Decoding {tmp_path}: 9 files into the cache " in caplog.text
    assert "done in" in caplog.text
    assert seen and seen[-1] == (9, 9) and all(total == 9 for _, total in seen)
