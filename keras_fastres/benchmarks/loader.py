"""Images/s of loading a folder of images (`data.load_image_folder`: list, decode, make upright
and RGB, resize, write the decode-once cache), the step before the first run on your own images
(`fastres-benchmark loader DIR --workers 1,2`), for each number of decoding processes."""

import os
import statistics
import tempfile
import time
from typing import Any

from keras_fastres import data
from keras_fastres.utils.console import check_positive_integers
from keras_fastres.utils.machine import describe_device


def default_workers():
    """One worker, and one per CPU: the loader's default beside a single process's speed."""
    return sorted({1, os.cpu_count() or 1})


def run_loader_benchmark(directory, image_size=32, rounds=3, progress=None, workers=None,
                         resize="stretch"):
    """For each count of `workers` (decoding processes; default `default_workers()`), the
    median images/s of `rounds` first loads of `directory`: each into an empty cache, so that
    every file is decoded. The counts are interleaved within each round (the first round also
    warms the file cache, which a real first load does not have)."""
    workers = default_workers() if workers is None else list(workers)
    check_positive_integers(rounds=rounds, **{f"workers[{i}]": w for i, w in enumerate(workers)})
    progress = progress or (lambda message: None)
    size = data.image_size_pair(image_size)
    per_round: dict[int, list[float]] = {count: [] for count in workers}
    loaded: Any = None
    for round_index in range(rounds):
        for count in workers:
            progress(f"round {round_index + 1}/{rounds}, {count} workers")
            with tempfile.TemporaryDirectory(prefix="fastres-loader-") as cache_dir:
                start = time.perf_counter()
                loaded = data.load_image_folder(directory, size, resize=resize,
                                                cache_dir=cache_dir, workers=count, max_memory=0)
                seconds = time.perf_counter() - start
            images = len(loaded.train.labels) + len(loaded.test.labels)
            per_round[count].append((images + len(loaded.skipped)) / seconds)
    results = [{"directory": str(directory), "image_size": f"{size[0]}x{size[1]}",
                "resize": resize, "workers": count,
                "images": len(loaded.train.labels) + len(loaded.test.labels),
                "skipped": len(loaded.skipped),
                "loader_images_per_second": statistics.median(per_round[count]),
                "loader_images_per_second_per_round": per_round[count],
                "speedup": statistics.median(per_round[count])
                / statistics.median(per_round[workers[0]])}
               for count in workers]
    return {"kind": "loader", "device": describe_device(), "cpus": os.cpu_count(),
            "rounds": rounds, "results": results}


COLUMNS = (("folder", "directory", "{}"), ("image size", "image_size", "{}"),
           ("workers", "workers", "{}"), ("images", "images", "{:,}"),
           ("skipped", "skipped", "{}"), ("loader images/s", "loader_images_per_second", "{:,.0f}"),
           ("x first", "speedup", "{:.2f}"))


def summary(report):
    return (f"{report['device']}; loading a folder into the cache with {report['cpus']} CPUs "
            f"(decode, upright, RGB, resize, write), median of {report['rounds']} rounds, "
            f"worker counts interleaved; x first: speed over the first row's")
