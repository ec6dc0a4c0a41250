"""Encoded images decoded and resized inside a SavedModel (its `serving_bytes` signature) as the
training loader decodes and resizes them with Pillow (data/decoding.py), so that a client sends
a photo's file bytes and gets the classes `fastres-predict` gives.

What the loader does, in TensorFlow ops:
- JPEG, PNG, GIF (first frame), BMP and WebP to RGB (grayscale replicated, alpha dropped);
- a JPEG's EXIF orientation applied (APP1 "Exif", the TIFF header in either byte order, tag
  0x0112 of IFD0), so that a phone's sideways photo is classified upright, as Pillow's
  `exif_transpose` makes it; a JPEG without EXIF, or with a damaged EXIF block, as stored;
- a JPEG larger than the target decoded at 1/2, 1/4 or 1/8 scale by libjpeg, as Pillow's
  draft mode does (the largest scale that keeps both sides at least the target's);
- the resize mode: stretch, crop (the centred window of the target's aspect) or pad (scaled to
  fit, centred on zeros), with the bilinear filter widened by the reduction (antialiased),
  rounded to uint8.
An image whose header declares more than the loader's limit of pixels (MAX_PIXELS, 64
megapixels: a decompression bomb) is refused before it is decoded. A string that is no such
image, or a truncated one (a JPEG whose last scan has no end marker, a
PNG without its IEND chunk, a GIF without its trailer), fails naming its index in the batch.
Not done in the graph: formats other than these five (TIFF: `fastres-serve` decodes it with
the loader's code before the model), and the orientation of a PNG's or WebP's EXIF.
"""

import tensorflow as tf

from keras_fastres.data.decoding import MAX_PIXELS

MAGIC = {"JPEG": b"\xff\xd8\xff", "PNG": b"\x89PNG\r\n\x1a\n", "GIF": b"GIF8", "BMP": b"BM",
         "WEBP": b"RIFF"}
FORMATS = "JPEG, PNG, GIF, BMP or WebP"
MAX_SEGMENTS = 32  # JPEG segments searched for EXIF before the image data
MAX_ENTRIES = 256  # IFD0 entries searched for the orientation tag
ORIENTATION = 0x0112
SHORT = 3  # the TIFF type of the orientation's value


def _starts_with(data, magic):
    return tf.equal(tf.strings.substr(data, 0, len(magic)), magic)


def _byte_reader(data):
    """`read(i)`: the byte(s) of `data` at int64 index (tensor) `i`, 0 beyond either end, so
    that a damaged EXIF block reads as zeros, never out of range."""
    raw = tf.concat([tf.cast(tf.io.decode_raw(data, tf.uint8), tf.int64), [0]], axis=0)
    size = tf.shape(raw, out_type=tf.int64)[0] - 1

    def read(i):
        return tf.gather(raw, tf.where((i >= 0) & (i < size), i, size))
    return read, size


def exif_orientation(data):
    """The EXIF orientation (1-8) of a JPEG: its first APP1 segment holding "Exif\\0\\0", the
    TIFF header's byte order, IFD0's entry for tag 0x0112 of type SHORT. 1 when there is none or
    any part of it is damaged."""
    read, size = _byte_reader(data)
    exif = tf.constant([0x45, 0x78, 0x69, 0x66, 0, 0], tf.int64)

    def more(position, found, step):
        return ((step < MAX_SEGMENTS) & (found < 0) & (position + 4 <= size)
                & tf.equal(read(position), 0xFF) & (read(position + 1) != 0xDA)
                & (read(position + 1) != 0xD9))

    def segment(position, found, step):
        length = 256 * read(position + 2) + read(position + 3)
        is_exif = tf.equal(read(position + 1), 0xE1) & tf.reduce_all(
            tf.equal(read(position + 4 + tf.range(6, dtype=tf.int64)), exif))
        return (position + 2 + tf.maximum(length, 2), tf.where(is_exif, position + 10, found),
                step + 1)
    _, tiff, _ = tf.while_loop(more, segment, (tf.constant(2, tf.int64),
                                               tf.constant(-1, tf.int64), tf.constant(0)))
    little = tf.equal(read(tiff), 0x49) & tf.equal(read(tiff + 1), 0x49)
    big = tf.equal(read(tiff), 0x4D) & tf.equal(read(tiff + 1), 0x4D)

    def unsigned(i, width):
        digits = tf.stack([read(i + k) for k in range(width)], axis=-1)
        weights = 256 ** tf.range(width, dtype=tf.int64)
        return tf.reduce_sum(digits * tf.where(little, weights, weights[::-1]), axis=-1)
    ifd = tiff + unsigned(tiff + 4, 4)
    entries = ifd + 2 + 12 * tf.range(MAX_ENTRIES, dtype=tf.int64)
    match = ((tf.range(MAX_ENTRIES, dtype=tf.int64) < unsigned(ifd, 2))
             & tf.equal(unsigned(entries, 2), ORIENTATION)
             & tf.equal(unsigned(entries + 2, 2), SHORT))
    value = tf.reduce_max(tf.where(match, unsigned(entries + 8, 2), 0))
    valid = (tiff >= 0) & (little | big) & tf.reduce_any(match) & (value >= 1) & (value <= 8)
    return tf.where(valid, value, 1)


def upright(image, orientation):
    """`image` turned as EXIF `orientation` says it is shown (Pillow's `exif_transpose`)."""
    return tf.switch_case(orientation - 1, [
        lambda: image,
        lambda: image[:, ::-1],                              # 2: mirrored
        lambda: image[::-1, ::-1],                           # 3: rotated 180
        lambda: image[::-1],                                 # 4: flipped
        lambda: tf.transpose(image, [1, 0, 2]),              # 5: transposed
        lambda: tf.image.rot90(image, k=3),                  # 6: turned 90 clockwise
        lambda: tf.transpose(image[::-1, ::-1], [1, 0, 2]),  # 7: transversed
        lambda: tf.image.rot90(image, k=1),                  # 8: turned 90 anticlockwise
    ])


def _webp(data):
    """A WebP's first frame, RGB (alpha dropped)."""
    return tf.io.decode_webp(data)[0][:, :, :3]


def _decode_jpeg(data, height, width):
    """A JPEG decoded at Pillow's draft scale for the target size: the largest of 1/8, 1/4, 1/2
    and 1 whose divisor is not above min(columns // width, rows // height)."""
    shape = tf.io.extract_jpeg_shape(data)
    scale = tf.minimum(shape[1] // width, shape[0] // height)
    index = tf.reduce_sum(tf.cast(scale >= tf.constant([2, 4, 8]), tf.int32))  # 0..3
    # The accurate integer IDCT, as Pillow's libjpeg runs (TensorFlow's default is the fast one,
    # a few levels off at sharp edges).
    return tf.switch_case(index, [lambda ratio=ratio: tf.io.decode_jpeg(
        data, channels=3, ratio=ratio, dct_method="INTEGER_ACCURATE") for ratio in (1, 2, 4, 8)])


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
         lambda: tf.equal(tf.strings.substr(data, tf.maximum(length - 1, 0), 1), b";")),
        (_starts_with(data, MAGIC["WEBP"]), lambda: _whole_riff(data, length))],
        default=lambda: tf.constant(True))


def _whole_riff(data, length):
    """A WebP (RIFF) file holding the size its header declares, and saying WEBP."""
    halves = tf.cast(tf.io.decode_raw(tf.strings.substr(data, 4, 4), tf.uint16), tf.int64)
    declared = halves[0] + 65536 * halves[1]  # little-endian 32 bits
    return (tf.equal(tf.strings.substr(data, 8, 4), b"WEBP")
            & (declared + 8 <= tf.cast(length, tf.int64)))


def declared_pixels(data):
    """The pixel count (int64) an image file's header declares, read before decoding: a JPEG's
    frame, a PNG's IHDR, a GIF's screen, a BMP's header, a WebP's VP8X, VP8 or VP8L header; 0
    for anything else."""
    read, _ = _byte_reader(data)

    def number(at, width, little=True):
        return sum(read(tf.constant(at + k, tf.int64)) * 256 ** (k if little else width - 1 - k)
                   for k in range(width))

    def bmp():
        rows = number(22, 4)
        return number(18, 4) * tf.where(rows >= 2 ** 31, 2 ** 32 - rows, rows)  # top-down: < 0

    def webp():
        chunk, bits = tf.strings.substr(data, 12, 4), number(21, 4)
        return tf.case([
            (tf.equal(chunk, b"VP8X"), lambda: (number(24, 3) + 1) * (number(27, 3) + 1)),
            (tf.equal(chunk, b"VP8 "),
             lambda: tf.bitwise.bitwise_and(number(26, 2), 0x3FFF)
             * tf.bitwise.bitwise_and(number(28, 2), 0x3FFF)),
            (tf.equal(chunk, b"VP8L"),
             lambda: (tf.bitwise.bitwise_and(bits, 0x3FFF) + 1)
             * (tf.bitwise.bitwise_and(tf.bitwise.right_shift(bits, 14), 0x3FFF) + 1))],
            default=lambda: tf.constant(0, tf.int64))
    return tf.case([
        (_starts_with(data, MAGIC["JPEG"]),
         lambda: tf.reduce_prod(tf.io.extract_jpeg_shape(data, tf.int64)[:2])),
        (_starts_with(data, MAGIC["PNG"]), lambda: number(16, 4, False) * number(20, 4, False)),
        (_starts_with(data, MAGIC["GIF"]), lambda: number(6, 2) * number(8, 2)),
        (_starts_with(data, MAGIC["BMP"]), bmp),
        (_starts_with(data, MAGIC["WEBP"]), webp)],
        default=lambda: tf.constant(0, tf.int64))


def decode_one(data, index, height, width, resize):
    """uint8 [height, width, 3] of one encoded image `data` (a scalar string), or an error
    naming `index` when it is not one of the four formats, or is a truncated one."""
    known = tf.reduce_any(tf.stack([_starts_with(data, magic) for magic in MAGIC.values()]))
    check = tf.debugging.Assert(known, [tf.strings.format(
        "image_bytes[{}] is not a " + FORMATS + " image (send the bytes of the file, base64 "
        "in JSON)", index)])
    with tf.control_dependencies([check]):
        whole = tf.debugging.Assert(_complete(data), [tf.strings.format(
            "image_bytes[{}] is a truncated or damaged image file (it does not end as its "
            "format requires)", index)])
    with tf.control_dependencies([check, whole]):
        pixels = declared_pixels(data)
        bounded = tf.debugging.Assert(pixels <= MAX_PIXELS, [tf.strings.format(
            "image_bytes[{}] declares {} pixels, more than the limit of " + f"{MAX_PIXELS:,}"
            + " (8192x8192)", (index, pixels))])
    with tf.control_dependencies([check, whole, bounded]):
        jpeg = _starts_with(data, MAGIC["JPEG"])
        orientation = tf.cond(jpeg, lambda: exif_orientation(data),
                              lambda: tf.constant(1, tf.int64))
        # Drafted for the size it is stored at: a sideways photo's rows are its shown columns.
        image = tf.case([
            (jpeg & (orientation >= 5), lambda: _decode_jpeg(data, width, height)),
            (jpeg, lambda: _decode_jpeg(data, height, width)),
            (_starts_with(data, MAGIC["WEBP"]), lambda: _webp(data))],
            default=lambda: tf.io.decode_image(data, channels=3, expand_animations=False))
        image = upright(image, tf.cast(orientation, tf.int32))
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
