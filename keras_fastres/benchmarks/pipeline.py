"""Images/s of the training input pipeline alone (`data.TrainingData`: shuffle, pad, crop,
flip, uint8 batches), over random uint8 images in memory: CIFAR's 32x32 and, beside it, larger
images of your own (64x64 by default)."""

import statistics
import time

import numpy as np
import tensorflow as tf

from keras_fastres import data
from keras_fastres.utils.console import check_positive_integers
from keras_fastres.utils.machine import describe_device

EPOCH_IMAGES = 50_000  # one CIFAR training epoch
IMAGE_SIZES = (32, 64)


def run_pipeline_benchmark(batch_size=128, rounds=3, images=EPOCH_IMAGES,
                           image_sizes=IMAGE_SIZES, progress=None):
    """For each square image size, the median images/s of `rounds` epochs after one warm-up
    epoch, building each epoch's dataset included; returns the report. `images_delivered`
    counts the images the timed epochs actually yielded (each epoch's count in
    `images_delivered_per_round`), and the speed is that count over the time."""
    check_positive_integers(batch_size=batch_size, rounds=rounds, images=images)
    progress = progress or (lambda message: None)
    rng = np.random.default_rng(0)
    results = []
    for size in image_sizes:
        data.image_size_pair(size)
        split = data.Split(rng.integers(0, 256, (images, size, size, 3), dtype=np.uint8),
                           rng.integers(0, 10, images))
        pipeline = data.TrainingData(split, batch_size, 0, 10)
        per_epoch, delivered = [], []
        for epoch in range(rounds + 1):
            progress(f"{size}x{size}: epoch {epoch}/{rounds}"
                     + (" (warm-up)" if epoch == 0 else ""))
            start = time.perf_counter()
            count = sum(int(batch.shape[0]) for batch, _ in pipeline.epoch(epoch))
            if epoch:
                per_epoch.append(count / (time.perf_counter() - start))
                delivered.append(count)
        results.append({"image_size": size, "batch_size": batch_size, "images": images,
                        "images_delivered": delivered[-1],
                        "images_delivered_per_round": delivered,
                        "pipeline_images_per_second": statistics.median(per_epoch),
                        "pipeline_images_per_second_per_round": per_epoch})
    return {"kind": "pipeline", "device": describe_device(), "tensorflow": tf.__version__,
            "batch_size": batch_size, "rounds": rounds, "results": results}


COLUMNS = (("image size", "image_size", lambda size: f"{size}x{size}"),
           ("batch", "batch_size", "{}"), ("images per epoch", "images_delivered", "{}"),
           ("pipeline images/s", "pipeline_images_per_second", "{:.0f}"))


def summary(report):
    return (f"{report['device']}; TensorFlow {report['tensorflow']}; the training pipeline "
            f"alone (crop, flip, shuffle), median of {report['rounds']} epochs")
