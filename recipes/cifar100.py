"""CIFAR-100 with the paper's recipe (Table 2).

    python recipes/cifar100.py --depth 110 --variant type1    # FastResNet-110
    python recipes/cifar100.py --depth 110 --variant preact   # its pre-activation baseline
    python recipes/cifar100.py --compare runs/cifar100-resnet110-preact runs/cifar100-resnet110-type1

Writes history.csv, metrics.json, error_curve.png (and with --export a SavedModel) under runs/.
Killed runs continue from their last finished epoch when the same command is run again.
"""

import os
import sys

# A command: TensorFlow's C++ start-up logs stay quiet (TF_CPP_MIN_LOG_LEVEL=0 shows them).
os.environ.setdefault("KERAS_FASTRES_COMMAND", "1")

from keras_fastres.commands.train import main  # noqa: E402
from keras_fastres.training.config import TrainConfig  # noqa: E402

PAPER = TrainConfig(
    dataset="cifar100",
    depth=110,
    variant="type1",
    epochs=160,            # learning rate 0.1, then 0.01 from epoch 81, 0.001 from epoch 121
    batch_size=128,
    learning_rate=0.1,
    momentum=0.9,          # Nesterov
    weight_decay=1e-4,
)

if __name__ == "__main__":
    sys.exit(main(PAPER))
