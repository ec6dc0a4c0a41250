"""The paper's speed comparison on this machine: training-step time of every block variant,
side by side in one process, with FLOPs and the fraction of the device's matmul peak; or, with
the subcommand `inference`, the serving speed of the exported models (SavedModel with BNs folded
and not, ONNX on onnxruntime); or, with `pipeline`, the training input pipeline alone.

    python recipes/benchmark.py                  # the README's table
    python recipes/benchmark.py --help           # every option; more examples in
                                                 # keras_fastres/commands/benchmark.py

The same program is installed as `fastres-benchmark`.
"""

import os
import sys

# A command: TensorFlow's C++ start-up logs stay quiet (TF_CPP_MIN_LOG_LEVEL=0 shows them).
os.environ.setdefault("KERAS_FASTRES_COMMAND", "1")

from keras_fastres.commands.benchmark import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
