"""Measures training from disk (the README's "Your own images" numbers): a folder of synthetic
64x64 JPEG photos whose decoded size is 5x --max-memory trains from the memory-mapped cache,
beside the same folder trained from memory and a folder a tenth its size.

    python recipes/from_disk.py --images 20000 --work /tmp/from-disk

Each run is a fastres-train process of its own, its peak anonymous memory (RssAnon in
/proc/PID/status, sampled every 20 ms: the cache's mapped pages are not anonymous) recorded;
the two runs of the large folder must end with bit-identical weights.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = 10


def make_folder(root, count, size, seed=0):
    """`count` JPEG photos in CLASSES class folders: smooth random colours (an 8x8 image
    enlarged) with noise, the class shifting the mean colour."""
    rng = np.random.default_rng(seed)
    for index in range(count):
        label = index % CLASSES
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 200, (8, 8, 3)) + 5 * label
        image = Image.fromarray(base.astype(np.uint8)).resize((size, size),
                                                              Image.Resampling.BILINEAR)
        noisy = np.asarray(image, np.int16) + rng.integers(-10, 11, (size, size, 3))
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(
            folder / f"{index}.jpg", quality=90)
    return root


def peak_anonymous_memory(command):
    """(exit status, peak RssAnon in bytes, seconds) of `command`, sampled every 20 ms."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    peak = 0
    while process.poll() is None:
        try:
            status = Path(f"/proc/{process.pid}/status").read_text()
            anonymous = next(int(line.split()[1]) for line in status.splitlines()
                             if line.startswith("RssAnon:"))
            peak = max(peak, anonymous * 1024)
        except (OSError, StopIteration):
            pass
        time.sleep(0.02)
    if process.returncode:
        sys.exit(f"{' '.join(command)} failed: {process.stderr.read()[-2000:]}")
    return peak, time.perf_counter() - start


def final_weights(run_dir):
    import keras

    import keras_fastres  # noqa: F401 (registers the model)
    return keras.saving.load_model(run_dir / "model.keras").get_weights()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="from-disk-"))
    large, small = work / f"photos-{args.images}", work / f"photos-{args.images // 10}"
    for folder, count in ((large, args.images), (small, args.images // 10)):
        if not folder.exists():
            make_folder(folder, count, args.size)
    decoded = args.images * args.size * args.size * 3
    budget = decoded / 5 / 2 ** 30  # GiB
    train = [sys.executable, "-m", "keras_fastres.commands.train", "--image-size",
             str(args.size), "--depth", "8", "--epochs", "2", "--batch-size", "128", "--seed",
             "0", "--cache-dir", str(work / "cache")]
    runs = {"small, from memory": [*train, "--data", str(small)],
            "large, from disk": [*train, "--data", str(large), "--max-memory", str(budget)],
            "large, from memory": [*train, "--data", str(large)]}
    report = {"images": args.images, "size": args.size, "decoded_bytes": decoded,
              "max_memory_gib": budget, "runs": {}}
    for name, command in runs.items():
        run_dir = work / name.replace(", ", "-").replace(" ", "-")
        peak, seconds = peak_anonymous_memory([*command, "--output-dir", str(run_dir)])
        report["runs"][name] = {"peak_rss_anon_mb": peak / 2 ** 20, "seconds": seconds,
                                "test_error": json.loads(
                                    (run_dir / "metrics.json").read_text())["test_error"]}
        print(f"{name}: peak RssAnon {peak / 2 ** 20:.0f} MB, {seconds:.0f} s", flush=True)
    disk = final_weights(work / "large-from-disk")
    memory = final_weights(work / "large-from-memory")
    report["bit_identical"] = all(np.array_equal(a, b) for a, b in zip(disk, memory, strict=True))
    report["disk_minus_small_mb"] = (report["runs"]["large, from disk"]["peak_rss_anon_mb"]
                                     - report["runs"]["small, from memory"]["peak_rss_anon_mb"])
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
