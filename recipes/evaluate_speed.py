"""Measures fastres-evaluate against fastres-predict (issue 34's bound: evaluating at most 1.5x
the time of predicting the same images with the same export): a folder of synthetic 64x64 PNG
photos in 10 classes and a ResNet-20 SavedModel exported at 64x64, both in `--work`.

    python recipes/evaluate_speed.py --images 10000 --work /tmp/evaluate-speed

Each round runs `serving.predict.predict` on every file and `evaluate` on the folder, in turns
(which goes first alternates); the report is the median of the rounds' seconds and of their
ratio, and the peak resident memory of this process.
"""

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = 10


def make_folder(root, count, size=64, seed=0):
    rng = np.random.default_rng(seed)
    for index in range(count):
        folder = root / f"class{index % CLASSES}"
        folder.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 255, (8, 8, 3)).astype(np.uint8)
        Image.fromarray(base).resize((size, size), Image.Resampling.BILINEAR).save(
            folder / f"{index}.png")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, required=True)
    args = parser.parse_args(argv)
    from keras_fastres import FastResNet
    from keras_fastres.evaluation import evaluate
    from keras_fastres.serving.export import export_saved_model
    from keras_fastres.serving.predict import predict

    folder = args.work / "photos"
    if not folder.exists():
        make_folder(folder, args.images)
    export = args.work / "export"
    if not export.exists():
        model = FastResNet(20, num_classes=CLASSES, input_shape=(64, 64, 3),
                           class_names=[f"class{i}" for i in range(CLASSES)])
        export_saved_model(model, export, version=1)
    files = sorted(folder.rglob("*.png"))
    seconds = {"predict": [], "evaluate": []}
    for round_ in range(args.rounds):
        order = ("predict", "evaluate") if round_ % 2 == 0 else ("evaluate", "predict")
        for what in order:
            start = time.perf_counter()
            if what == "predict":
                predict(export, files, top=1)
            else:
                evaluate(export, folder)
            seconds[what].append(time.perf_counter() - start)
    report = {
        "images": len(files), "rounds": args.rounds,
        "predict_seconds": statistics.median(seconds["predict"]),
        "evaluate_seconds": statistics.median(seconds["evaluate"]),
        "evaluate_over_predict": statistics.median(
            e / p for e, p in zip(seconds["evaluate"], seconds["predict"])),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
