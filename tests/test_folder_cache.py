"""Photo folders as photographers have them: EXIF orientation, WebP and TIFF, linked folders,
any aspect (the resize modes); decoded once into the cache, by worker processes, and trained
from the memory-mapped cache when the set outgrows --max-memory, with the same weights."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from keras_fastres.commands.train import command as train_command
from keras_fastres.data import decoding, load_image_folder
from keras_fastres.errors import FastResWarning

from conftest import WeightRecorder


def blocks(height, width, seed=0):
    """A smooth RGB image of 4x4 flat blocks (JPEG keeps flat blocks within a few levels)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(30, 225, (4, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((width, height), Image.Resampling.NEAREST))


def photo_folder(root, classes=("cat", "dog"), per_class=12, size=(24, 20), suffix="png"):
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(blocks(*size, seed=100 * label + i)).save(root / name / f"{i}.{suffix}")
    return root


def test_a_phone_photo_stored_sideways_loads_upright_in_training_and_predict(tmp_path):
    from keras_fastres import ImagePreparation
    from keras_fastres.serving.predict import load_image

    upright = blocks(32, 48)  # wider than high, as it is shown
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # as the phone wrote
    exif = Image.Exif()
    exif[decoding.ORIENTATION] = 6  # "rotate 90 degrees clockwise to show"
    folder = photo_folder(tmp_path / "photos", size=(32, 48))
    stored.save(folder / "cat" / "phone.jpg", quality=95, subsampling=0, exif=exif)
    assert Image.open(folder / "cat" / "phone.jpg").size == (32, 48)  # stored 32 wide, 48 high
    decoded = decoding.decode_image(folder / "cat" / "phone.jpg", 32, 48)
    # Within JPEG noise (quality 95, no chroma subsampling: about 1 level) of the upright
    # image, and far from it upside down (blocks of random colours differ by ~60 levels).
    assert np.abs(decoded.astype(int) - upright).mean() < 2
    assert np.abs(decoded.astype(int) - upright[::-1, ::-1]).mean() > 20
    np.testing.assert_array_equal(load_image(folder / "cat" / "phone.jpg", ImagePreparation((32, 48))), decoded)
    loaded = load_image_folder(folder, (32, 48), validation_fraction=0.2, seed=0)
    every = np.concatenate([loaded.train.images, loaded.test.images])
    assert any(np.array_equal(image, decoded) for image in every)
    # Downscaled (a JPEG decoded at a smaller scale, asked for its stored, sideways size):
    # as the same photo stored upright.
    Image.fromarray(upright).save(tmp_path / "upright.jpg", quality=95, subsampling=0)
    small = decoding.decode_image(folder / "cat" / "phone.jpg", 8, 12).astype(int)
    reference = decoding.decode_image(tmp_path / "upright.jpg", 8, 12).astype(int)
    assert np.abs(small - reference).mean() < 2
    assert np.abs(small - reference[::-1, ::-1]).mean() > 20


def test_webp_tiff_and_other_formats_load_and_other_files_are_named(tmp_path):
    folder = photo_folder(tmp_path / "photos", per_class=3)
    pixels = blocks(24, 20, seed=7)
    Image.fromarray(pixels).save(folder / "cat" / "lossless.webp", lossless=True)
    Image.fromarray(pixels).save(folder / "cat" / "scan.tif")
    Image.fromarray(pixels).save(folder / "dog" / "old.ppm")
    (folder / "dog" / "labels.csv").write_text("not an image")
    (folder / "dog" / ".DS_Store").write_bytes(b"hidden: not named")
    for name in ("lossless.webp", "scan.tif"):
        np.testing.assert_array_equal(decoding.decode_image(folder / "cat" / name, 24, 20),
                                      pixels)
    with pytest.warns(FastResWarning, match=r"ignored 1 file of types Pillow does not read .*labels\.csv"):
        loaded = load_image_folder(folder, (24, 20), validation_fraction=0.3)
    assert len(loaded.train.labels) + len(loaded.test.labels) == 9
    assert loaded.details.ignored == [str(folder / "dog" / "labels.csv")]
    webp_only = tmp_path / "webp"
    for name in ("a", "b"):
        (webp_only / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(blocks(8, 8, i)).save(webp_only / name / f"{i}.webp")
    assert len(load_image_folder(webp_only, 8, validation_fraction=0.5).train.labels) == 2


def test_linked_folders_are_followed_once_and_a_link_loop_ends(tmp_path):
    folder = photo_folder(tmp_path / "photos", per_class=4)
    extra = photo_folder(tmp_path / "elsewhere", classes=("more",), per_class=3)
    (folder / "cat" / "linked").symlink_to(extra / "more", target_is_directory=True)
    (folder / "dog" / "loop").symlink_to(folder / "dog", target_is_directory=True)
    (folder / "dog" / "again").symlink_to(folder / "cat" / "linked", target_is_directory=True)
    loaded = load_image_folder(folder, 8, validation_fraction=0.25)
    counts = np.bincount(np.concatenate([loaded.train.labels, loaded.test.labels]))
    assert counts.tolist() == [7, 4]  # cat: 4 + 3 linked; dog: 4 (its loop and the second link
    #                                   to the linked folder read nothing twice)


def test_crop_and_pad_on_a_known_wide_image(tmp_path):
    wide = np.zeros((16, 64, 3), np.uint8)
    wide[:, :24, 0], wide[:, 24:40, 1], wide[:, 40:, 2] = 200, 200, 200  # red | green | blue
    Image.fromarray(wide).save(tmp_path / "wide.png")
    cropped = decoding.decode_image(tmp_path / "wide.png", 16, 16, resize="crop")
    np.testing.assert_array_equal(cropped, wide[:, 24:40])  # the centred square, untouched
    padded = decoding.decode_image(tmp_path / "wide.png", 16, 16, resize="pad")
    # Scaled by 1/4 to 16x4, centred: rows 6-9 hold the image, the rest is zeros.
    assert not padded[:6].any() and not padded[10:].any()
    np.testing.assert_array_equal(padded[6:10], np.asarray(
        Image.fromarray(wide).resize((16, 4), Image.Resampling.BILINEAR)))
    stretched = decoding.decode_image(tmp_path / "wide.png", 16, 16)
    np.testing.assert_array_equal(stretched, np.asarray(
        Image.fromarray(wide).resize((16, 16), Image.Resampling.BILINEAR)))
    # A tall image cropped to a wide target: the centred rows.
    Image.fromarray(wide.transpose(1, 0, 2)).save(tmp_path / "tall.png")
    np.testing.assert_array_equal(decoding.decode_image(tmp_path / "tall.png", 8, 16,
                                                        resize="crop"),
                                  wide.transpose(1, 0, 2)[28:36])
    assert decoding.odd_shape(64, 16, 16, 16) == (True, False)
    assert decoding.odd_shape(6, 6, 16, 16) == (False, True)


def test_one_image_preparation_is_followed_by_the_keras_file_predict_and_the_exports(tmp_path):
    """The model's preparation changed once (to crop) is what its .keras file keeps, what
    fastres-predict prepares by from the .keras file, the SavedModel and the ONNX model, and
    what the SavedModel's serving_bytes (TF Serving's and fastres-serve's way in) runs."""
    import keras
    import tensorflow as tf

    import keras_fastres
    from keras_fastres import ImagePreparation
    from keras_fastres.errors import DamagedFile
    from keras_fastres.serving.export import export_onnx, export_saved_model
    from keras_fastres.serving.predict import predict

    keras.utils.set_random_seed(0)
    model = keras_fastres.FastResNet(8, "type1", num_classes=3, input_shape=(16, 16, 3),
                                     normalization=((127,) * 3, (64,) * 3),
                                     class_names=["red", "green", "blue"])
    # Small logits: probabilities that move with the input (an untrained net may saturate).
    kernel, bias = model.get_layer("predictions").get_weights()
    model.get_layer("predictions").set_weights([kernel / 100, bias])
    assert model.preparation == ImagePreparation((16, 16), "stretch")
    model.preparation = ImagePreparation(16, "crop")
    assert "resize" not in model.get_config() and "preparation" not in model.get_config()
    with pytest.raises(ValueError, match=r"resize must be one of \('stretch', 'crop', 'pad'\)"):
        ImagePreparation(16, "squash")
    with pytest.raises(ValueError, match=r"model's input size 16x16"):
        model.preparation = ImagePreparation(32, "crop")
    model.save(tmp_path / "model.keras")
    assert keras.saving.load_model(tmp_path / "model.keras").preparation == model.preparation
    export_saved_model(model, tmp_path / "export", version=1)
    export_onnx(model, tmp_path / "model.onnx")

    # A wide image whose centred 16x16 window is random: crop takes exactly that window.
    wide = np.zeros((16, 64, 3), np.uint8)
    wide[:, 24:40] = np.random.default_rng(0).integers(0, 255, (16, 16, 3))
    Image.fromarray(wide).save(tmp_path / "wide.png")
    expected = model.predict(wide[None, :, 24:40].astype("float32"), verbose=0)[0]
    stretched = model.predict(np.asarray(Image.fromarray(wide).resize(
        (16, 16), Image.Resampling.BILINEAR))[None].astype("float32"), verbose=0)[0]
    assert np.abs(expected - stretched).max() > 1e-3  # the two preparations answer apart
    for source in (tmp_path / "model.keras", tmp_path / "export", tmp_path / "model.onnx"):
        [(_, ranked)] = predict(source, [tmp_path / "wide.png"], top=3)
        assert [name for name, _ in ranked] == [["red", "green", "blue"][i]
                                                for i in np.argsort(expected)[::-1]], source
        assert ranked[0][1] == pytest.approx(expected.max(), abs=1e-5), source
    serve = tf.saved_model.load(str(tmp_path / "export" / "1")).signatures["serving_bytes"]
    answer = serve(image_bytes=tf.constant([(tmp_path / "wide.png").read_bytes()]))
    np.testing.assert_allclose(answer["probabilities"].numpy()[0], expected, atol=1e-5)

    # An export whose preparation is damaged, or for another size, is refused by name.
    written = tmp_path / "export" / "1" / "assets" / "preparation.json"
    written.write_text('{"image_size": [32, 32], "resize": "crop"}')
    with pytest.raises(DamagedFile, match=r"for \(32, 32\) images, the model's input is"):
        predict(tmp_path / "export", [tmp_path / "wide.png"])
    written.write_text("crop\n")
    with pytest.raises(DamagedFile, match=r"preparation.json is not an image preparation"):
        predict(tmp_path / "export", [tmp_path / "wide.png"])


def test_the_cache_is_read_until_a_file_or_setting_changes(tmp_path, monkeypatch):
    folder = photo_folder(tmp_path / "photos")
    cache = tmp_path / "cache"
    first = load_image_folder(folder, 8, cache_dir=cache)
    assert first.details.cache == "miss"
    entries = list((cache / "folders").iterdir())
    assert len(entries) == 1 and (entries[0] / "manifest.json").is_file()

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")
    with monkeypatch.context() as patch:
        patch.setattr(decoding, "decode_files", no_decoding)
        again = load_image_folder(folder, 8, cache_dir=cache)
    assert again.details.cache == "hit"
    for a, b in ((first.train, again.train), (first.test, again.test)):
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.labels, b.labels)
    assert again.files_digest == first.files_digest

    changes = [lambda: os.utime(folder / "cat" / "0.png", ns=(1, 1)),  # touched
               lambda: Image.fromarray(blocks(24, 20, 99)).save(folder / "dog" / "new.png"),
               lambda: (folder / "cat" / "1.png").unlink()]
    for change in changes:
        change()
        assert load_image_folder(folder, 8, cache_dir=cache).details.cache == "miss"
    for other in ({"image_size": 12}, {"resize": "crop"}, {"validation_fraction": 0.5}):
        loaded = load_image_folder(folder, **{"image_size": 8, **other}, cache_dir=cache)
        assert loaded.details.cache == "miss"
    assert len(list((cache / "folders").iterdir())) == 7  # no partial entry left either

    # A damaged entry (a truncated file) is decoded again, not read.
    entry = Path(load_image_folder(folder, 8, cache_dir=cache).details.cache_entry)
    with open(entry / "images.npy", "r+b") as images:
        images.truncate(200)
    with pytest.warns(FastResWarning, match="is damaged"):
        again = load_image_folder(folder, 8, cache_dir=cache)
    assert again.details.cache == "miss" and len(again.train.labels) == len(first.train.labels)


def _manifest(edit):
    def change(entry):
        manifest = json.loads((entry / "manifest.json").read_text())
        edit(manifest)
        (entry / "manifest.json").write_text(json.dumps(manifest))
    return change


def _labels(values):
    def change(entry):
        labels = np.load(entry / "labels.npy")
        np.save(entry / "labels.npy", values(labels))
    return change


def _flip_a_byte(entry):
    with open(entry / "images.npy", "r+b") as images:
        images.seek(-100, os.SEEK_END)
        byte = images.read(1)
        images.seek(-100, os.SEEK_END)
        images.write(bytes([byte[0] ^ 0xFF]))


TAMPERINGS = {
    "missing key": (_manifest(lambda m: m.pop("far_aspect")), "missing or extra keys"),
    "float labels": (_labels(lambda labels: labels.astype(float)), "SHA-256 differs"),
    "label out of range": (_labels(lambda labels: labels + 5), "SHA-256 differs"),
    "negative label": (_labels(lambda labels: labels - 5), "SHA-256 differs"),
    "odd skipped": (_manifest(lambda m: m.update(skipped=[["one"]])), "values of the wrong kind"),
    "bytes flipped": (_flip_a_byte, "images.npy is not the file that was written"),
    "manifest removed": (lambda entry: (entry / "manifest.json").unlink(), "no manifest.json"),
    "truncated array": (lambda entry: os.truncate(entry / "images.npy", 500), "SHA-256 differs"),
    "entry a file": (lambda entry: (__import__("shutil").rmtree(entry), entry.write_text("x")),
                     "it is a file, not a folder"),
    "labels with digests redone": (None, "a label is outside the 2 classes"),
}


@pytest.mark.parametrize("tampering", TAMPERINGS)
def test_a_tampered_cache_entry_is_named_and_decoded_again(tampering, tmp_path):
    """Each way an entry is damaged or edited: one warning naming the entry and the reason,
    the folder decoded again into a new entry, and the data of a fresh cache, bit for bit."""
    from keras_fastres.data import cache as cache_module
    folder = photo_folder(tmp_path / "photos")
    cache = tmp_path / "cache"
    first = load_image_folder(folder, 8, cache_dir=cache)
    entry = Path(first.details.cache_entry)
    change, reason = TAMPERINGS[tampering]
    if change is None:  # the labels edited and the digests made to match: the range check
        _labels(lambda labels: labels + 5)(entry)
        _manifest(lambda m: m["digests"].update(
            {"labels.npy": cache_module.file_digest(entry / "labels.npy")}))(entry)
    else:
        change(entry)
    with pytest.warns(FastResWarning) as caught:
        again = load_image_folder(folder, 8, cache_dir=cache)
    damaged = [str(w.message) for w in caught if "damaged" in str(w.message)]
    assert len(damaged) == 1 and str(entry) in damaged[0] and reason in damaged[0], damaged
    assert again.details.cache == "miss" and (entry / "manifest.json").is_file()
    for a, b in ((first.train, again.train), (first.test, again.test)):
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.labels, b.labels)
    assert load_image_folder(folder, 8, cache_dir=cache).details.cache == "hit"
    assert [p.name for p in (cache / "folders").iterdir()] == [entry.name]


def test_a_run_on_a_tampered_cache_trains_a_fresh_caches_weights(tmp_path, monkeypatch, capsys):
    folder = photo_folder(tmp_path / "photos", per_class=10, size=(20, 20))
    recorded = WeightRecorder(monkeypatch)
    args = ["--data", str(folder), "--image-size", "8", "--depth", "8", "--epochs", "1",
            "--batch-size", "8", "--seed", "3", "--cache-dir", str(tmp_path / "cache")]
    assert train_command([*args, "--output-dir", str(tmp_path / "fresh")]) == 0
    entry, = (tmp_path / "cache" / "folders").iterdir()
    _flip_a_byte(entry)
    assert train_command([*args, "--output-dir", str(tmp_path / "tampered")]) == 0
    err = capsys.readouterr().err
    assert f"warning: the cache entry {entry} is damaged (images.npy is not the file" in err
    assert "Traceback" not in err
    for a, b in zip(*recorded.final, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("where", ["a file", "read-only"])
def test_a_cache_dir_that_cannot_hold_entries_is_one_line(where, tmp_path, capsys, monkeypatch):
    folder = photo_folder(tmp_path / "photos")
    cache = tmp_path / "cache"
    if where == "a file":
        cache.write_text("not a folder")
        expected = f"error: The cache dir cannot be made: {cache} is a file, not a folder"
    else:
        (cache / "folders").mkdir(parents=True)
        (cache / "folders").chmod(0o555)
        if os.access(cache / "folders", os.W_OK):  # root writes anyway: refused as the
            import tempfile  # kernel refuses another user

            def refused(*args, **kwargs):
                raise PermissionError(13, "Permission denied")
            monkeypatch.setattr(tempfile, "mkdtemp", refused)
        expected = (f"error: Cannot write the decoded images to the cache {cache / 'folders'} "
                    f"(Permission denied); pass a writable --cache-dir.")
    code = train_command(["--data", str(folder), "--image-size", "8", "--cache-dir", str(cache),
                          "--cache-only"])
    err = capsys.readouterr().err
    assert code == 1 and err.strip().startswith(expected) and err.count("\n") == 1, err
    assert not list(tmp_path.rglob(".incomplete-*"))


def test_a_disk_that_fills_during_the_fill_is_one_line(tmp_path, monkeypatch):
    """The images' file is reserved on the disk before decoding: a disk without that room
    fails there with ENOSPC (not a decoding worker's SIGBUS later), said as the disk filling."""
    import errno

    from keras_fastres.data import DataUnavailableError
    from keras_fastres.data import cache as cache_module
    folder = photo_folder(tmp_path / "photos")

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(cache_module.os, "posix_fallocate", full)
    with pytest.raises(DataUnavailableError, match=r"The disk of the cache .* filled while the "
                                                   r"decoded images were written \(4.5 KiB "
                                                   r"needed, .* free now\); pass a --cache-dir"):
        load_image_folder(folder, 8, cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache" / "folders").iterdir()) == []


def test_a_cache_without_room_is_refused_before_decoding(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from keras_fastres.data import DataUnavailableError
    folder = photo_folder(tmp_path / "photos")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 ** 6, 10 ** 6 - 100, 100))
    with pytest.raises(DataUnavailableError, match=r"The decoded images take 4.5 KiB and the "
                                                   r"cache .* has 100 bytes free; pass a "
                                                   r"--cache-dir with room"):
        load_image_folder(folder, 8, cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache" / "folders").iterdir()) == []


def test_an_interrupted_decoding_leaves_no_entry_and_stops_its_workers(tmp_path, monkeypatch):
    folder = photo_folder(tmp_path / "photos", per_class=2 * decoding.CHUNK)
    cache = tmp_path / "cache"

    def interrupted(done, total):
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        load_image_folder(folder, 8, cache_dir=cache, workers=2, progress=interrupted)
    assert list((cache / "folders").iterdir()) == []  # nothing published, nothing partial
    assert not [pid for pid in os.listdir("/proc") if pid.isdigit() and _is_worker(pid)]
    # In this process: the first failure stops the decoding at once.
    calls = []

    def failing(path, *args):
        calls.append(path)
        raise KeyboardInterrupt
    monkeypatch.setattr(decoding, "_decode", failing)
    with pytest.raises(KeyboardInterrupt):
        load_image_folder(folder, 8, cache_dir=cache, workers=0)
    assert len(calls) == 1 and list((cache / "folders").iterdir()) == []


def _is_worker(pid):
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    parent = int(next(line.split()[1] for line in status.splitlines()
                      if line.startswith("PPid:")))
    return parent == os.getpid() and b"decoding.py" in command


def test_worker_processes_decode_what_this_process_decodes(tmp_path):
    folder = photo_folder(tmp_path / "photos", per_class=150, size=(40, 30), suffix="jpg")
    (folder / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a whole JPEG")
    seen = []
    with pytest.warns(FastResWarning, match="broken.jpg"):
        inside = load_image_folder(folder, 16, cache_dir=tmp_path / "one", workers=0)
    with pytest.warns(FastResWarning, match="broken.jpg"):
        workers = load_image_folder(folder, 16, cache_dir=tmp_path / "two", workers=2,
                                    progress=lambda done, total: seen.append((done, total)))
    for a, b in ((inside.train, workers.train), (inside.test, workers.test)):
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.labels, b.labels)
    assert inside.details.skipped == workers.details.skipped
    assert seen[-1] == (301, 301) and [done for done, _ in seen] == sorted(
        done for done, _ in seen)


def test_the_load_summary_and_a_class_with_few_images(tmp_path, capsys):
    folder = photo_folder(tmp_path / "photos", classes=("many", "few"), per_class=12)
    for i in range(5, 12):
        (folder / "few" / f"{i}.png").unlink()
    Image.fromarray(blocks(8, 80)).save(folder / "many" / "panorama.png")
    run = tmp_path / "run"
    args = ["--data", str(folder), "--image-size", "8", "--depth", "8", "--epochs", "1",
            "--batch-size", "8", "--seed", "0", "--resize", "pad", "--output-dir", str(run)]
    assert train_command(args) == 0
    out = capsys.readouterr()
    assert "warning: 1 classes have fewer than 10 training images: few (4)" in out.err
    assert f"Data: folder:{folder} (cache miss: " in out.out
    assert "2 classes, train/test images: few 4/1, many 12/1" in out.out
    assert "16 training and 2 test images of 8x8, resize pad" in out.out
    assert "1 images 2x or more off the size's aspect" in out.out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["data_summary"]["classes"] == {"few": [4, 1], "many": [12, 1]}
    assert metrics["data_summary"]["cache"] == "miss" and metrics["data_summary"]["resize"] == "pad"
    assert len(metrics["data_summary"]["normalization"]["mean"]) == 3
    assert metrics["resize"] == "pad"
    assert not {"synthetic_size", "train_split", "test_split", "source"} & set(metrics)


def test_cache_only_fills_the_cache_that_training_then_reads(tmp_path, capsys):
    folder = photo_folder(tmp_path / "photos")
    cache = tmp_path / "cache"
    common = ["--data", str(folder), "--image-size", "8", "--cache-dir", str(cache)]
    assert train_command([*common, "--cache-only"]) == 0
    out = capsys.readouterr().out
    assert "22 training and 2 test images now in the cache: " in out
    assert not Path("runs").joinpath("photos-resnet110-type1").exists()
    assert train_command([*common, "--cache-only"]) == 0
    assert "were already in the cache" in capsys.readouterr().out
    assert train_command(["--cache-only", "--output-dir", str(tmp_path / "x")]) == 2
    assert "cache_only is for --data DIR" in capsys.readouterr().err


def test_runs_from_the_cache_and_from_disk_train_as_the_first_run(tmp_path, monkeypatch, capsys):
    """The first run decodes; the second reads the cache; the third, with a memory budget
    smaller than the set, trains from the memory-mapped cache: the same weights, bit for bit."""
    folder = photo_folder(tmp_path / "photos", per_class=20, size=(20, 20))
    recorded = WeightRecorder(monkeypatch)
    args = ["--data", str(folder), "--image-size", "16", "--depth", "8", "--epochs", "2",
            "--batch-size", "8", "--seed", "3"]
    for name, extra in (("first", []), ("cached", []), ("disk", ["--max-memory", "1e-5"])):
        assert train_command([*args, *extra, "--output-dir", str(tmp_path / name)]) == 0
        out = capsys.readouterr().out
        assert ("cache miss" if name == "first" else "cache hit") in out
        assert ("read from disk a batch at a time" in out) == (name == "disk")
    first, *others = recorded.final
    for other in others:
        for a, b in zip(first, other, strict=True):
            np.testing.assert_array_equal(a, b)
    assert max(np.abs(a - b).max() for a, b in zip(first, recorded.initial[0])) > 1e-3
    metrics = [json.loads((tmp_path / name / "metrics.json").read_text())
               for name in ("first", "disk")]
    assert metrics[0]["test_error"] == metrics[1]["test_error"]
    assert metrics[1]["data_summary"]["from_disk"] and not metrics[0]["data_summary"]["from_disk"]


def test_a_fifo_and_an_unreadable_folder_are_named_and_nothing_blocks(tmp_path, monkeypatch):
    """A FIFO named like an image would block the decoder forever: only regular files are
    read; a folder that cannot be listed is named, not dropped without a word."""
    folder = photo_folder(tmp_path / "photos", per_class=6)
    os.mkfifo(folder / "cat" / "x.png")
    (folder / "dog" / "locked").mkdir()
    Image.fromarray(blocks(24, 20)).save(folder / "dog" / "locked" / "hidden.png")
    scandir = os.scandir

    def refused(path):
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)
    monkeypatch.setattr(os, "scandir", refused)
    with pytest.warns(FastResWarning, match=r"could not read 2 folders or files: .*x\.png \(not "
                                            r"a regular file\); .*locked \(Permission denied\)"):
        loaded = load_image_folder(folder, 8, validation_fraction=0.2)
    assert len(loaded.train.labels) + len(loaded.test.labels) == 12


@pytest.mark.parametrize("names, message", [
    (("cat", "dog\rwolf"), r"has a line break in its name \('dog\\rwolf'\)"),
    (("cat", "dog\u2028wolf"), r"has a line break in its name"),
    (("cat", "dog\x0cwolf"), r"has a line break in its name"),
    (("caf\u00e9", "cafe\u0301"), r"are the same name written with different Unicode"),
])
def test_class_names_are_one_line_and_one_spelling(names, message, tmp_path):
    from keras_fastres.data import DataUnavailableError
    folder = photo_folder(tmp_path / "photos", classes=names, per_class=2)
    with pytest.raises(DataUnavailableError, match=message):
        load_image_folder(folder, 8, validation_fraction=0.5)
    assert not (tmp_path / "cache").exists()


def test_a_class_named_train_beside_other_classes_is_refused_as_ambiguous(tmp_path):
    from keras_fastres.data import DataUnavailableError
    folder = photo_folder(tmp_path / "photos", classes=("bus", "car"), per_class=2)
    photo_folder(folder / "train", classes=("day", "night"), per_class=2)
    with pytest.raises(DataUnavailableError, match=r"holds a train/ folder beside other folders "
                                                   r"\(bus, car\): is it the train/test layout or "
                                                   r"a class named so\?"):
        load_image_folder(folder, 8)


def test_a_link_to_the_data_folder_itself_is_no_class_of_every_image(tmp_path, capsys):
    folder = photo_folder(tmp_path / "photos", per_class=4)
    (folder / "zz_self").symlink_to(folder, target_is_directory=True)
    assert train_command(["--data", str(folder), "--image-size", "8", "--output-dir",
                          str(tmp_path / "run")]) == 1
    error = capsys.readouterr().err
    assert "Class 'zz_self'" in error and "has no training images" in error
    assert error.count("\n") == 1


@pytest.mark.parametrize("where", ["inside", "around"])
def test_output_and_data_folders_never_overlap(where, tmp_path, capsys):
    folder = photo_folder(tmp_path / "photos", per_class=4)
    output = folder / "cat" / "run" if where == "inside" else tmp_path
    assert train_command(["--data", str(folder), "--image-size", "8", "--output-dir",
                          str(output)]) == 2
    error = capsys.readouterr().err
    assert ("is inside the data folder" if where == "inside" else
            "is inside the output directory") in error and error.count("\n") == 1
    assert not (folder / "cat" / "run").exists()


def test_a_slow_reader_never_waits_for_a_worker_that_waits_for_it(tmp_path, monkeypatch):
    """A worker's two reports can arrive in one read when this process is slow (a loaded
    machine): both must be taken, or each side waits for the other forever (seen once, as a
    training that never started). One-file chunks and a sleeping progress callback make it
    happen every time."""
    import threading
    import time

    folder = photo_folder(tmp_path / "photos", per_class=10)
    monkeypatch.setattr(decoding, "CHUNK", 1)
    done = []

    def slow(count, total):
        time.sleep(0.05)
    loader = threading.Thread(target=lambda: done.append(load_image_folder(
        folder, 8, cache_dir=tmp_path / "cache", workers=1, progress=slow)))
    loader.start()
    loader.join(timeout=120)
    assert done and len(done[0].train.labels) + len(done[0].test.labels) == 20
