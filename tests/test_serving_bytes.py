"""The SavedModel's serving_bytes signature: encoded image files in, decoded and resized in the
graph as the training loader does with Pillow, the classes fastres-predict gives out."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_fastres.data.decoding import decode_image
from keras_fastres.serving.decode import decode_batch

from conftest import serving_bytes_without_keras


def photos(folder, count=30):
    """`count` JPEG and PNG crops of scikit-learn's two sample photos (427x640), of many
    sizes and aspects."""
    from sklearn.datasets import load_sample_images

    sources = load_sample_images().images
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        source = sources[index % 2]
        rows, columns = source.shape[:2]
        top, left = rng.integers(0, rows // 3), rng.integers(0, columns // 3)
        crop = Image.fromarray(source[top:top + rng.integers(rows // 3, 2 * rows // 3),
                                      left:left + rng.integers(columns // 3, 2 * columns // 3)])
        if index % 3 == 0:
            crop = crop.resize((crop.width // 2 + 7, crop.height // 2 + 3))
        path = folder / f"{index}.{'jpg' if index % 2 else 'png'}"
        crop.save(path, **({"quality": 90} if index % 2 else {}))
        paths.append(path)
    return paths


@pytest.mark.parametrize("resize", ["stretch", "crop", "pad"])
def test_the_graph_resizes_as_the_loader_within_one_level(resize, tmp_path):
    """Pillow and TensorFlow share the filter (a triangle widened by the reduction) and
    libjpeg's scaled decoding and accurate IDCT; they differ in rounding (Pillow's fixed point).
    Measured: a mean of 0.08-0.13 levels, no image above 0.20."""
    paths = photos(tmp_path)
    for size in ((64, 64), (32, 48)):
        loader = np.stack([decode_image(path, *size, resize=resize) for path in paths])
        graph = decode_batch(tf.constant([path.read_bytes() for path in paths]), *size,
                             resize).numpy()
        difference = np.abs(loader.astype(int) - graph)
        assert difference.mean() <= 1.0 and difference.reshape(len(paths), -1).mean(1).max() <= 1.5


def test_serving_bytes_gives_predicts_classes_without_keras_or_this_package(digits_run,
                                                                            tmp_path):
    """The digits model on 30 digits enlarged to sizes other than its 16x16 and saved as JPEG
    (five of the ten stored sideways or upside down with their EXIF orientation 3, 6 or 8, as
    phones write them), PNG and WebP, sent as file bytes to the SavedModel in a process where Keras
    and this package cannot be imported: the classes fastres-predict gives, for 29 or more."""
    from keras_fastres.serving.predict import predict

    root, run = digits_run
    sources = sorted((root / "test").rglob("*.png"))[:30]
    turned = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90,
              8: Image.Transpose.ROTATE_270}  # stored so that the orientation shows it upright
    files = []
    for index, source in enumerate(sources):
        size = (16 + 7 * (index % 5), 16 + 5 * (index % 7))
        image = Image.open(source).convert("RGB").resize(size, Image.Resampling.BICUBIC)
        path = tmp_path / f"{index}.{('png', 'jpg', 'webp')[index % 3]}"
        if index % 3 == 1 and index % 2:
            orientation = (3, 6, 8)[index % 9 // 3]
            exif = Image.Exif()
            exif[0x0112] = orientation
            image.transpose(turned[orientation]).save(path, quality=95, exif=exif)
        else:
            image.save(path)
        files.append(path)
    expected = [classes[0][0] for _, classes in predict(run / "export", files, top=1)]
    process = serving_bytes_without_keras(run / "export" / "1", files)
    out, err = process.communicate(timeout=180)
    assert process.returncode == 0, err[-2000:]
    served = out.split()
    assert len(served) == 30
    assert sum(a == b for a, b in zip(served, expected)) >= 29, (served, expected)


def test_a_string_that_is_no_image_is_named_by_its_index(tmp_path):
    from keras_fastres import FastResNet
    from keras_fastres.serving.export import export_saved_model

    export = export_saved_model(FastResNet(8, num_classes=3, class_names=["a", "b", "c"],
                                           normalization=None), tmp_path / "serving")
    serve = tf.saved_model.load(str(export)).signatures["serving_bytes"]
    good = photos(tmp_path / "photos", 2)
    images = [path.read_bytes() for path in good]
    answer = serve(image_bytes=tf.constant(images))
    assert answer["probabilities"].shape == (2, 3) and answer["class_name"].shape == (2,)
    assert serve(image_bytes=tf.constant([], tf.string))["classes"].shape == (0,)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"image_bytes\[1\] is not a JPEG, PNG, GIF, BMP or WebP image"):
        serve(image_bytes=tf.constant([images[0], b"garbage, not an image", images[1]]))
    for index, image in enumerate(images):  # a PNG, then a JPEG, each cut short
        batch = list(images)
        batch[index] = image[:len(image) // 2]
        with pytest.raises(tf.errors.InvalidArgumentError,
                           match=rf"image_bytes\[{index}\] is a truncated or damaged image"):
            serve(image_bytes=tf.constant(batch))
    # Bytes after a JPEG's end (some cameras append a trailer) are no truncation.
    assert serve(image_bytes=tf.constant([images[1] + b"trailer"]))["classes"].shape == (1,)


def blocks(rows, columns, seed=0):
    """Random colour blocks of 4x4 pixels: each orientation of them is far from the others."""
    small = np.random.default_rng(seed).integers(0, 256, (rows // 4, columns // 4, 3))
    return np.kron(small, np.ones((4, 4, 1))).astype(np.uint8)


def exif_app1(orientation, big_endian):
    """An APP1 segment holding a TIFF header in either byte order and IFD0 with one entry: the
    orientation (tag 0x0112, SHORT, one value)."""
    import struct
    order = ">" if big_endian else "<"
    tiff = ((b"MM" if big_endian else b"II") + struct.pack(order + "HI", 42, 8)
            + struct.pack(order + "H", 1) + struct.pack(order + "HHIHH", 0x0112, 3, 1,
                                                         orientation, 0)
            + struct.pack(order + "I", 0))
    body = b"Exif\x00\x00" + tiff
    return b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body


@pytest.mark.parametrize("big_endian", [False, True])
def test_the_graph_turns_a_jpeg_upright_by_its_exif_orientation_as_the_loader(big_endian,
                                                                              tmp_path):
    """Each of the eight orientations, in both byte orders, with an APP0 segment before the
    EXIF one (as cameras write): the graph's pixels are the loader's (Pillow's exif_transpose),
    within JPEG rounding, and far from the image as stored."""
    import io
    stored = blocks(24, 40)
    plain = io.BytesIO()
    Image.fromarray(stored).save(plain, "JPEG", quality=95, subsampling=0)
    jpeg = plain.getvalue()
    assert jpeg[2:4] == b"\xff\xe0"  # JFIF's APP0 first
    app0_end = 4 + int.from_bytes(jpeg[4:6], "big")
    for orientation in range(1, 9):
        path = tmp_path / f"{orientation}.jpg"
        path.write_bytes(jpeg[:app0_end] + exif_app1(orientation, big_endian) + jpeg[app0_end:])
        sideways = orientation >= 5
        size = (40, 24) if sideways else (24, 40)
        loader = decode_image(path, *size).astype(int)
        graph = decode_batch(tf.constant([path.read_bytes()]), *size, "stretch").numpy()[0]
        assert np.abs(loader - graph).mean() <= 1.0, orientation
        if orientation > 1:  # turned: not the image as stored
            as_stored = np.asarray(Image.fromarray(stored).resize(size[::-1])).astype(int)
            assert np.abs(as_stored - graph).mean() > 20, orientation


def test_a_damaged_exif_block_decodes_the_jpeg_as_stored(tmp_path):
    """IFD0 pointing past the end, a truncated APP1, an orientation of 9: the image as stored."""
    import io
    stored = blocks(24, 40, seed=1)
    plain = io.BytesIO()
    Image.fromarray(stored).save(plain, "JPEG", quality=95, subsampling=0)
    jpeg = plain.getvalue()
    good = exif_app1(6, big_endian=False)
    damaged = [good[:18] + b"\xff\xff\x00\x00" + good[22:],  # IFD0 offset far beyond the end
               good.replace(b"\x12\x01\x03\x00", b"\x12\x01\x04\x00"),  # the value not a SHORT
               exif_app1(9, big_endian=False)]  # no such orientation
    expected = decode_batch(tf.constant([jpeg]), 24, 40, "stretch").numpy()[0]
    for app1 in damaged:
        graph = decode_batch(tf.constant([jpeg[:2] + app1 + jpeg[2:]]), 24, 40,
                             "stretch").numpy()[0]
        np.testing.assert_array_equal(graph, expected)


def test_webp_is_decoded_in_the_graph_as_the_loader(tmp_path):
    pixels = blocks(32, 48, seed=2)
    path = tmp_path / "photo.webp"
    Image.fromarray(pixels).convert("RGBA").save(path, "WEBP", lossless=True)
    graph = decode_batch(tf.constant([path.read_bytes()]), 16, 24, "crop").numpy()[0]
    loader = decode_image(path, 16, 24, resize="crop").astype(int)
    assert np.abs(loader - graph).mean() <= 1.0
    truncated = path.read_bytes()[:-10]
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"image_bytes\[0\] is a truncated"):
        decode_batch(tf.constant([truncated]), 16, 24, "crop")
