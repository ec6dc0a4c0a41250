"""Measures the training-path decision (docs/design.md): the package's loop
(`keras_fastres.training.distribute.Trainer`, what the recipes run) beside Keras's own
`model.fit`, on the same model, data, seed and callbacks (the paper's schedule and the epoch
timer), one device, data fed from tf.data.

    python recipes/training_loop.py --depth 20 --images 2048 --rounds 5

Each round trains a fresh model for two epochs with each loop, in turns (which goes first
alternates), and takes the second epoch's seconds (the first also builds the graph), its
input pipeline's construction included for both; the report is the median of the rounds, and
whether the two loops ended with identical weights.
"""

import argparse
import json
import statistics
import sys
import time

import keras
import numpy as np

from keras_fastres import data
from keras_fastres.callbacks import EpochTimer, paper_schedule
from keras_fastres.training.config import TrainConfig, build_and_compile
from keras_fastres.training.distribute import Trainer, make_strategy

EPOCHS = 2


def trained(loop, split, depth, batch_size, seed):
    """(weights, second epoch's seconds) of a fresh model trained by `loop` ("trainer", "fit")."""
    strategy = make_strategy("auto")
    keras.utils.set_random_seed(seed)
    with strategy.scope():
        model = build_and_compile(TrainConfig(depth=depth), 10)
    train = data.TrainingData(split.train, batch_size, seed, 10)
    timer = EpochTimer(len(split.train.labels))
    callbacks = [paper_schedule(EPOCHS), timer]
    if loop == "trainer":
        Trainer(model, strategy).fit(train, data.test_dataset(split.test, batch_size, 10),
                                     EPOCHS, callbacks=callbacks, verbose=0)
        return model.get_weights(), timer.epoch_seconds[-1]
    for epoch in range(EPOCHS):  # the same batches: TrainingData's epoch `epoch`
        # Timed from before its data is built, as the Trainer's epoch (which builds it).
        start = time.perf_counter()
        model.fit(train.epoch(epoch, 0, 1, 1), epochs=epoch + 1, initial_epoch=epoch,
                  shuffle=False, callbacks=callbacks, verbose=0)
        took = time.perf_counter() - start
    return model.get_weights(), took


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    split = data.synthetic_cifar("cifar10", args.images, 256, seed=0)
    seconds = {"trainer": [], "fit": []}
    identical = []
    for round_ in range(args.rounds):
        order = ("trainer", "fit") if round_ % 2 == 0 else ("fit", "trainer")
        weights = {}
        for loop in order:
            weights[loop], took = trained(loop, split, args.depth, args.batch_size, seed=0)
            seconds[loop].append(took)
        identical.append(all(np.array_equal(a, b)
                             for a, b in zip(weights["trainer"], weights["fit"], strict=True)))
    report = {
        "depth": args.depth, "images": args.images, "batch_size": args.batch_size,
        "rounds": args.rounds,
        "trainer_epoch_seconds": statistics.median(seconds["trainer"]),
        "fit_epoch_seconds": statistics.median(seconds["fit"]),
        "fit_over_trainer": statistics.median(
            f / t for f, t in zip(seconds["fit"], seconds["trainer"])),
        "identical_weights": all(identical),
        "rounds_seconds": {loop: [round(s, 3) for s in seconds[loop]] for loop in seconds}}
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
