"""Encoded images decoded and resized inside a SavedModel (its `serving_bytes` signature) as the
training loader decodes and resizes them with Pillow (data/decoding.py), so that a client sends
a photo's file bytes and gets the classes `fastres-predict` gives.

What the loader does, in TensorFlow ops:
- JPEG, PNG, GIF (first frame) and BMP to RGB (grayscale replicated, alpha dropped);
- a JPEG larger than the target decoded at 1/2, 1/4 or 1/8 scale by libjpeg, as Pillow's
  draft mode does (the largest scale that keeps both sides at least the target's);
- the resize mode: stretch, crop (the centred window of the target's aspect) or pad (scaled to
  fit, centred on zeros), with the bilinear filter widened by the reduction (antialiased),
  rounded to uint8.
A string that is no such image, or a truncated one (a JPEG whose last scan has no end marker, a
PNG without its IEND chunk, a GIF without its trailer), fails naming its index in the batch.
Not done in the graph: EXIF orientation (a phone's sideways JPEG is classified as stored: send
upright images), and formats other than these four.
"""

import tensorflow as tf

MAGIC = {"JPEG": b"\xff\xd8\xff", "PNG": b"\x89PNG\r\n\x1a\n", "GIF": b"GIF8", "BMP": b"BM"}


def _starts_with(data, magic):
    return tf.equal(tf.strings.substr(data, 0, len(magic)), magic)


def _decode_jpeg(data, height, width):
    """A JPEG decoded at Pillow's draft scale for the target size: the largest of 1/8, 1/4, 1/2
    and 1 whose divisor is not above min(columns // width, rows // height)."""
    shape = tf.io.extract_jpeg_shape(data)
    scale = tf.minimum(shape[1] // width, shape[0] // height)
    index = tf.reduce_sum(tf.cast(scale >= tf.constant([2, 4, 8]), tf.int32))  # 0..3
    return tf.switch_case(index, [lambda ratio=ratio: tf.io.decode_jpeg(data, channels=3,
                                                                        ratio=ratio)
                                  for ratio in (1, 2, 4, 8)])


def _contains(data, marker):
    return tf.size(tf.strings.split(data, sep=marker)) > 1


def _complete(data):
    """Whether an image file ends as its format says: a JPEG's last scan (after its last SOS
    marker) followed by the end-of-image marker, a PNG's IEND chunk at its end, a GIF's
    trailer byte. (A decoder's own error for a truncated file does not say which image of the
    batch it was.)"""
    length = tf.strings.length(data)
    jpeg_tail = tf.strings.split(data, sep=b"\xff\xda")[-1]
    return tf.case([
        (_starts_with(data, MAGIC["JPEG"]), lambda: _contains(jpeg_tail, b"\xff\xd9")),
        (_starts_with(data, MAGIC["PNG"]),
         lambda: tf.equal(tf.strings.substr(data, tf.maximum(length - 8, 0), 4), b"IEND")),
        (_starts_with(data, MAGIC["GIF"]),
         lambda: tf.equal(tf.strings.substr(data, tf.maximum(length - 1, 0), 1), b";"))],
        default=lambda: tf.constant(True))


def decode_one(data, index, height, width, resize):
    """uint8 [height, width, 3] of one encoded image `data` (a scalar string), or an error
    naming `index` when it is not one of the four formats, or is a truncated one."""
    known = tf.reduce_any(tf.stack([_starts_with(data, magic) for magic in MAGIC.values()]))
    check = tf.debugging.Assert(known, [tf.strings.format(
        "image_bytes[{}] is not a JPEG, PNG, GIF or BMP image (send the bytes of the file, "
        "base64 in JSON)", index)])
    with tf.control_dependencies([check]):
        whole = tf.debugging.Assert(_complete(data), [tf.strings.format(
            "image_bytes[{}] is a truncated or damaged image file (it does not end as its "
            "format requires)", index)])
    with tf.control_dependencies([check, whole]):
        image = tf.cond(_starts_with(data, MAGIC["JPEG"]),
                        lambda: _decode_jpeg(data, height, width),
                        lambda: tf.io.decode_image(data, channels=3, expand_animations=False))
    return resize_like_training(image, height, width, resize)


def resize_like_training(image, height, width, resize):
    """uint8 [height, width, 3] of a uint8 [rows, columns, 3] image, as
    data/decoding.py's `_resize` makes it (Pillow's bilinear, antialiased, rounded)."""
    image.set_shape([None, None, 3])
    rows, columns = tf.shape(image)[0], tf.shape(image)[1]
    if resize == "crop":
        wide = columns * height > rows * width
        kept_columns = tf.maximum(1, tf.cast(tf.round(
            tf.cast(rows, tf.float64) * width / height), tf.int32))
        kept_rows = tf.maximum(1, tf.cast(tf.round(
            tf.cast(columns, tf.float64) * height / width), tf.int32))
        image = tf.cond(
            wide, lambda: image[:, (columns - kept_columns) // 2:][:, :kept_columns],
            lambda: tf.cond(columns * height < rows * width,
                            lambda: image[(rows - kept_rows) // 2:][:kept_rows], lambda: image))
    elif resize == "pad":
        scale = tf.minimum(width / tf.cast(columns, tf.float64), height / tf.cast(rows, tf.float64))
        inner_columns = tf.maximum(1, tf.cast(tf.round(tf.cast(columns, tf.float64) * scale),
                                              tf.int32))
        inner_rows = tf.maximum(1, tf.cast(tf.round(tf.cast(rows, tf.float64) * scale),
                                           tf.int32))
        same_aspect = tf.equal(columns * height, rows * width)
        inner = _scaled(image, inner_rows, inner_columns)
        top, left = (height - inner_rows) // 2, (width - inner_columns) // 2
        padded = tf.pad(inner, [[top, height - inner_rows - top],
                                [left, width - inner_columns - left], [0, 0]])
        return tf.cond(same_aspect, lambda: _scaled(image, height, width),
                       lambda: tf.ensure_shape(padded, [height, width, 3]))
    return tf.ensure_shape(_scaled(image, height, width), [height, width, 3])


def _scaled(image, rows, columns):
    """`image` at rows x columns by the antialiased bilinear filter, rounded to uint8; the
    image itself when it has that size already (as Pillow skips the resize)."""
    same = tf.logical_and(tf.equal(tf.shape(image)[0], rows), tf.equal(tf.shape(image)[1], columns))

    def scale():
        resized = tf.image.resize(tf.cast(image, tf.float32), tf.stack([rows, columns]),
                                  method="bilinear", antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)
    return tf.cond(same, lambda: image, scale)


def decode_batch(image_bytes, height, width, resize):
    """uint8 [N, height, width, 3] of the encoded images `image_bytes` (string [N])."""
    count = tf.shape(image_bytes)[0]
    return tf.map_fn(lambda item: decode_one(item[0], item[1], height, width, resize),
                     (image_bytes, tf.range(count)),
                     fn_output_signature=tf.TensorSpec([height, width, 3], tf.uint8))
