"""Images/s of loading a folder of images into memory (`data.load_image_folder`: list, decode,
convert to RGB, resize), the step before training on your own images
(`fastres-benchmark --loader DIR`)."""

import os
import statistics
import time

from keras_fastres import data
from keras_fastres.console import check_positive_integers
from keras_fastres.machine import describe_device


def run_loader_benchmark(directory, image_size=32, rounds=3, progress=None):
    """The median images/s of `rounds` loads of `directory` (each load decodes every file
    again; the first round also warms the file cache, as a real first load does not have)."""
    check_positive_integers(rounds=rounds)
    progress = progress or (lambda message: None)
    size = data.image_size_pair(image_size)
    per_round, count = [], 0
    for round_index in range(rounds):
        progress(f"round {round_index + 1}/{rounds}")
        start = time.perf_counter()
        loaded = data.load_image_folder(directory, size)
        count = len(loaded.train.labels) + len(loaded.test.labels)
        per_round.append(count / (time.perf_counter() - start))
    result = {"directory": str(directory), "image_size": f"{size[0]}x{size[1]}",
              "images": count, "skipped": len(loaded.skipped),
              "loader_images_per_second": statistics.median(per_round),
              "loader_images_per_second_per_round": per_round}
    return {"kind": "loader", "device": describe_device(), "cpus": os.cpu_count(),
            "rounds": rounds, "results": [result]}


COLUMNS = (("folder", "directory", "{}"), ("image size", "image_size", "{}"),
           ("images", "images", "{:,}"), ("skipped", "skipped", "{}"),
           ("loader images/s", "loader_images_per_second", "{:,.0f}"))


def summary(report):
    return (f"{report['device']}; loading a folder into memory with {report['cpus']} CPUs "
            f"(decode, RGB, resize), median of {report['rounds']} rounds")
