"""The training and evaluation pipelines over a split held in memory (`splits.Split`).

Batches carry raw uint8 pixels `(batch, H, W, 3)`, which the training step casts to float32;
normalisation is a layer inside the model. Training batches get the paper's augmentation, scaled
to the image size: zero padding of H/8 and W/8 pixels (4 at CIFAR's 32), a random HxW crop, and a
horizontal flip (unless `flip=False`: digits, text, some medical images).
"""

import keras
import numpy as np
import tensorflow as tf

EXTRA_AUGMENTATIONS = ("randaugment", "mixup", "cutmix")


def mixes_labels(extra_augmentation):
    """Whether the pipeline yields one-hot labels: MixUp and CutMix blend them."""
    return bool({"mixup", "cutmix"} & set(extra_augmentation))


def check_extra_augmentation(names):
    unknown = set(names) - set(EXTRA_AUGMENTATIONS)
    if unknown:
        raise ValueError(f"extra augmentation must be taken from {EXTRA_AUGMENTATIONS}, got "
                         f"{sorted(unknown)}.")


def crop_padding(height, width):
    """(rows, columns) of zero padding before the random crop: an eighth of the image's side,
    at least 1 (CIFAR's 4 at 32x32)."""
    return max(1, height // 8), max(1, width // 8)


def test_dataset(split, batch_size, num_classes, one_hot=False):
    """The evaluation pipeline: the images as they are, in order, batched; read a batch at a
    time from a memory-mapped split (`np.memmap`), copied into TensorFlow otherwise.

    Yields `(images, labels)`: images `(batch, H, W, 3)` uint8, the raw pixels (the training
    step casts them); labels `(batch,)` int64, or one-hot float32 `(batch, num_classes)` with
    `one_hot` (as the training labels are when mixup or cutmix mixes them).
    """
    if isinstance(split.images, np.memmap):
        labels = tf.constant(split.labels)
        dataset = tf.data.Dataset.range(0, len(split.labels), batch_size).map(
            lambda start: (_read_rows(split.images, tf.range(
                start, tf.minimum(start + batch_size, len(split.labels)))),
                labels[start:start + batch_size]))
    else:
        dataset = tf.data.Dataset.from_tensor_slices((split.images, split.labels))
        dataset = dataset.batch(batch_size)
    if one_hot:
        dataset = dataset.map(lambda x, y: (x, tf.one_hot(y, num_classes)))
    return dataset.prefetch(tf.data.AUTOTUNE)


def _read_rows(images, rows):
    """The rows `rows` (a tensor) of a memory-mapped uint8 array `images` (N, H, W, 3), in that
    order, as a tensor: only these rows are read from the file."""
    read = tf.numpy_function(lambda indices: images[indices], [rows], tf.uint8, stateful=False)
    read.set_shape([None, *images.shape[1:]])
    return read


def crop_and_flip(images, offsets, flips, padding=(4, 4)):
    """The paper's augmentation on a whole batch `(n, H, W, ...)`: `padding` (rows, columns) of
    zeros on each side, the HxW window at `offsets` (n, 2) of (row, column) in
    [0, 2 * padding], mirrored where `flips` (n,) is true. Two gathers: the rows of every
    window, then its columns, read backwards for a mirrored one."""
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    pad_rows, pad_columns = padding
    padded = tf.pad(images, [[0, 0], [pad_rows, pad_rows], [pad_columns, pad_columns]]
                    + [[0, 0]] * (len(images.shape) - 3))
    rows = offsets[:, :1] + tf.range(height)
    steps = tf.range(width)
    columns = offsets[:, 1:] + tf.where(flips[:, None], width - 1 - steps, steps)
    windows = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(windows, columns, axis=2, batch_dims=1)


def pack_pixels(images):
    """uint8 `(N, H, W, 3)` as uint32 `(N, H, W)`, one element per pixel (a zero fourth byte),
    so that the crop's column gather moves one 4-byte element per pixel instead of a 3-byte
    slice: 1.1x the pipeline's speed, measured."""
    rgba = np.concatenate([images, np.zeros((*images.shape[:3], 1), np.uint8)], axis=-1)
    return np.ascontiguousarray(rgba).view(np.uint32)[..., 0]


def unpack_pixels(pixels):
    """`pack_pixels` undone on a tensor: uint32 `(..., H, W)` to uint8 `(..., H, W, 3)` by a
    bitcast; int32 (`TrainingData.device_arrays`) by shifts, which XLA compiles (it cannot
    bitcast to a smaller type). Both read the little-endian bytes pack_pixels wrote."""
    if pixels.dtype == tf.uint32:
        return tf.bitcast(pixels, tf.uint8)[..., :3]
    channels = [tf.bitwise.bitwise_and(tf.bitwise.right_shift(pixels, shift), 255)
                for shift in (0, 8, 16)]
    return tf.cast(tf.stack(channels, axis=-1), tf.uint8)


def augmentation_draws(key, count, padding=(4, 4), flip=True):
    """Crop offsets `(count, 2)` in [0, 2 * padding] and flips `(count,)` (true for about half;
    none without `flip`) for one batch, a pure function of the stateless `key` (two integers)."""
    # The device placement, compiled by XLA or not, must draw exactly what the tf.data
    # pipeline draws: Philox named (auto_select picks another generator under XLA), and
    # integers only (XLA turns random bits into floats differently).
    widest = 2 * max(padding) + 1
    offsets = tf.random.stateless_uniform([count, 2], key, 0, widest, tf.int32, alg="philox")
    if padding[0] != padding[1]:  # each axis's draw scaled to its own range
        offsets = offsets * tf.constant([2 * p + 1 for p in padding]) // widest
    flips = tf.random.stateless_uniform(
        [count], tf.random.experimental.stateless_fold_in(key, 1, alg="philox"), 0, 2,
        tf.int32, alg="philox") == 1
    return offsets, tf.logical_and(flips, flip)


def layer_seed(seed, epoch, offset):
    """A seed for a stateful Keras augmentation layer built for one epoch: a pure function of
    the run's seed and the epoch, different for each layer."""
    return (seed * 1_000_003 + epoch * 1_009 + offset) % 2 ** 31


class TrainingData:
    """The training split as one tf.data pipeline per epoch, every random draw a pure function
    of (seed, epoch, batch): a run resumed at any epoch sees what an uninterrupted run would.

    Epoch e shuffles with a permutation drawn from (seed, e) and cuts it into global batches of
    `batch_size` (the last one shorter). Batch b is augmented as the paper does (zero padding
    of an eighth of the side, a random HxW crop, a horizontal flip unless `flip` is off) with
    offsets and flips drawn from (seed, e, b) for the whole global batch; a pipeline that
    feeds some replicas of a distributed run gathers and augments only their shares of it
    (`epoch(e, first_share, shares, total_shares)`), so N replicas together see exactly the
    batch one device would. Batches are built in parallel
    (tf.data keeps their order). The optional extra augmentations (RandAugment per image,
    MixUp and CutMix per share) run after, in order, in Keras layers seeded per epoch.

    A memory-mapped split (`np.memmap`, larger than the memory budget) stays in its file: each
    share reads its rows from it and is cropped and flipped as uint8 pixels, the same pixels
    the packed in-memory path gives (both are pure gathers), so a run from disk trains exactly
    as one from memory.

    Yields `(images, labels)`: images `(share, H, W, 3)` uint8 (a quarter of float32's bytes
    through tf.data and to the device: the training step casts them), float32 in [0, 255] when
    an extra augmentation runs; labels `(share,)` int64, or one-hot float32
    `(share, num_classes)` with mixup or cutmix.
    """

    def __init__(self, split, batch_size, seed, num_classes, extra_augmentation=(), flip=True):
        check_extra_augmentation(extra_augmentation)
        self.padding, self.flip = crop_padding(*split.images.shape[1:3]), flip
        self.from_disk = isinstance(split.images, np.memmap)
        self.images = split.images if self.from_disk else None
        self.pixels = None if self.from_disk else tf.constant(pack_pixels(split.images))
        self.labels = tf.constant(split.labels)
        self.batch_size, self.seed = batch_size, seed
        self.num_classes, self.extra_augmentation = num_classes, tuple(extra_augmentation)
        self.steps_per_epoch = -(-len(split.labels) // batch_size)
        # Traced once, not once per epoch: the epoch comes in as the order and key tensors.
        self._share = tf.function(self._share_of_batch)

    def epoch_order(self, epoch):
        """The epoch's key (seed, epoch) and its permutation of the training images."""
        key = tf.constant([self.seed, epoch], tf.int64)
        return tf.random.experimental.stateless_shuffle(tf.range(len(self.labels)), seed=key), key

    def epoch(self, epoch, first_share=0, shares=1, total_shares=1):
        order, key = self.epoch_order(epoch)
        shares_here = tf.constant([first_share, shares, total_shares])
        dataset = tf.data.Dataset.range(self.steps_per_epoch * shares).map(
            lambda index: self._share(index, order, key, shares_here),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return self._extra(dataset, epoch).prefetch(tf.data.AUTOTUNE)

    def device_arrays(self):
        """The packed pixels (as int32, which every device gathers and XLA unpacks) and the
        labels, to be copied to an accelerator once; `share(...)` computes batches there."""
        if self.from_disk:
            raise ValueError("The training split is read from its memory-mapped file (larger "
                             "than the memory budget): it cannot be copied to a device; use "
                             "--data-placement host.")
        return tf.bitcast(self.pixels, tf.int32), self.labels

    def share(self, batch, order, key, part, total_shares, pixels, labels, size):
        """Share `part` of `total_shares` of global batch `batch`, which holds `size` images
        (a Python int: XLA needs static shapes), cropped and flipped with the batch's draws,
        from `pixels` and `labels` (`device_arrays`) wherever they are: the same images the
        tf.data pipeline delivers for it."""
        return self._share_of_batch(tf.cast(batch, tf.int64), order, key,
                                    tf.stack([tf.cast(part, tf.int32), 1, total_shares]),
                                    pixels, labels, size)

    def _share_of_batch(self, index, order, key, shares_here, pixels=None, labels=None,
                        size=None):
        """Element `index` of an epoch: share `first_share + index % shares` of global batch
        `index // shares`, cropped and flipped with the batch's draws. `size`, if known, is
        the batch's image count."""
        pixels = self.pixels if pixels is None else pixels
        labels = self.labels if labels is None else labels
        first_share, shares, total_shares = tf.unstack(shares_here)
        index = tf.cast(index, tf.int32)
        batch, part = index // shares, first_share + index % shares
        if size is None:
            members = order[batch * self.batch_size:(batch + 1) * self.batch_size]
        else:
            members = tf.slice(order, [batch * self.batch_size], [size])
        count = tf.shape(members)[0] if size is None else size
        start, stop = count * part // total_shares, count * (part + 1) // total_shares
        offsets, flips = augmentation_draws(
            tf.random.experimental.stateless_fold_in(key, batch, alg="philox"), count,
            self.padding, self.flip)
        members = members[start:stop]
        if pixels is None:  # from disk: uint8 pixels, cropped and flipped as they are
            return (crop_and_flip(_read_rows(self.images, members), offsets[start:stop],
                                  flips[start:stop], self.padding), tf.gather(labels, members))
        cropped = crop_and_flip(tf.gather(pixels, members), offsets[start:stop],
                                flips[start:stop], self.padding)
        return unpack_pixels(cropped), tf.gather(labels, members)

    def _extra(self, dataset, epoch):
        """RandAugment, MixUp and CutMix as asked, in order (their layers draw from a stateful
        seed generator, so a parallel map would draw in a racy order)."""
        extra = self.extra_augmentation
        if extra:
            dataset = dataset.map(lambda images, labels: (tf.cast(images, tf.float32), labels))
        if "randaugment" in extra:
            randaugment = keras.layers.RandAugment(value_range=(0, 255),
                                                   seed=layer_seed(self.seed, epoch, 3))
            dataset = dataset.map(lambda images, labels: (
                tf.map_fn(lambda image: randaugment(image, training=True), images), labels))
        if mixes_labels(extra):
            dataset = dataset.map(lambda x, y: (x, tf.one_hot(y, self.num_classes)))
        mixers = [layer(seed=layer_seed(self.seed, epoch, offset)) for offset, key, layer in (
                      (4, "mixup", keras.layers.MixUp), (5, "cutmix", keras.layers.CutMix))
                  if key in extra]
        if mixers:
            def mix(images, labels):
                batch = {"images": images, "labels": labels}
                for layer in mixers:
                    batch = layer(batch, training=True)
                return batch["images"], batch["labels"]
            dataset = dataset.map(mix)
        return dataset
