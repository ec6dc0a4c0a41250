"""The paper's speed comparison on this machine: training-step time of every block variant,
side by side in one process, with FLOPs and the fraction of the device's matmul peak; or, with
--inference, the serving speed of the exported models (SavedModel with BNs folded and not,
ONNX on onnxruntime); or, with --pipeline, the training input pipeline alone.

    python recipes/benchmark.py                                   # the README's table
    python recipes/benchmark.py --depths 20 --variants preact,type1 --json out.json
    python recipes/benchmark.py --depths 110 --variants preact,type1 --batch-norm keras,fused
    python recipes/benchmark.py --depths 110 --variants type1 \
        --precisions float32,mixed_bfloat16,mixed_float16
    KERAS_BACKEND=jax python recipes/benchmark.py --depths 20 --variants type1
    python recipes/benchmark.py --inference                       # ResNet-110 preact, type1
    python recipes/benchmark.py --pipeline                        # augmentation images/s

Under KERAS_BACKEND=jax or torch the models train with Keras's own train step on that backend.
The defaults (10 rounds x 3 steps at batch 128) keep the full default run near 5 minutes on 2
CPU cores; on a GPU, raise --rounds and --steps for tighter medians.
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads: quiet C++ logs

import tensorflow as tf  # noqa: E402

from keras_fastres.batch_norm import IMPLEMENTATIONS  # noqa: E402
from keras_fastres.benchmark import (PRECISIONS, format_markdown, format_table,  # noqa: E402
                                     print_progress, run_benchmark, run_pipeline_benchmark)

DEPTHS = "20,56,110"
VARIANTS = "preact,type1,type2,v1"
INFERENCE_DEPTHS = "110"
INFERENCE_VARIANTS = "preact,type1"
BATCH_SIZE = 128  # the paper's
ROUNDS = 10
STEPS = 3


def csv_list(convert=str):
    return lambda text: [convert(item) for item in text.split(",") if item]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--depths", type=csv_list(int), default=None,
                        help=f"default: {DEPTHS}; with --inference {INFERENCE_DEPTHS}")
    parser.add_argument("--variants", type=csv_list(), default=None,
                        help=f"default: {VARIANTS}; with --inference {INFERENCE_VARIANTS}")
    parser.add_argument("--inference", action="store_true",
                        help="time the exported models serving instead of training (needs "
                             "the onnx extra); --rounds applies, --steps, --precisions, "
                             "--batch-norm and --jit-compile do not")
    parser.add_argument("--pipeline", action="store_true",
                        help="time the training input pipeline alone (one epoch of CIFAR-shaped "
                             "data per round; --batch-size and --rounds apply)")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--steps", type=int, default=STEPS, help="timed steps per round")
    parser.add_argument("--precisions", type=csv_list(), default="float32",
                        help=f"any of {','.join(PRECISIONS)}")
    parser.add_argument("--batch-norm", type=csv_list(), default="auto",
                        help=f"any of {','.join(IMPLEMENTATIONS)}; auto: the models' default "
                             f"(TensorFlow's fused kernel on TensorFlow, Keras's elsewhere)")
    parser.add_argument("--jit-compile", choices=("auto", "on", "off", "both"), default="auto",
                        help="XLA; auto: as the recipes (on with GPUs, off on CPUs)")
    parser.add_argument("--json", metavar="FILE", help="write the full report as JSON")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args(argv)
    args.depths = args.depths or csv_list(int)(INFERENCE_DEPTHS if args.inference else DEPTHS)
    args.variants = args.variants or csv_list()(INFERENCE_VARIANTS if args.inference
                                                else VARIANTS)
    tf.get_logger().setLevel("ERROR")  # one traced train function per model is expected
    try:
        if args.pipeline:
            print(f"Benchmarking the training pipeline: batch {args.batch_size}, {args.rounds} "
                  f"epochs of 50,000 images.", file=sys.stderr)
            report = run_pipeline_benchmark(args.batch_size, args.rounds, progress=print_progress)
        elif args.inference:
            from keras_fastres.inference_benchmark import run_inference_benchmark
            print(f"Benchmarking serving: depths {args.depths}, variants {args.variants}, "
                  f"batch {args.batch_size} and batch 1, {args.rounds} rounds.", file=sys.stderr)
            report = run_inference_benchmark(args.depths, args.variants, args.batch_size,
                                             args.rounds, progress=print_progress)
        else:
            jit = {"auto": [None], "on": [True], "off": [False],
                   "both": [False, True]}[args.jit_compile]
            print(f"Benchmarking depths {args.depths}, variants {args.variants}, precisions "
                  f"{args.precisions}, BN {args.batch_norm}, XLA {args.jit_compile}: batch "
                  f"{args.batch_size}, {args.rounds} rounds x {args.steps} timed steps per "
                  f"model.", file=sys.stderr)
            report = run_benchmark(args.depths, args.variants, args.batch_size, args.rounds,
                                   args.steps, precisions=args.precisions, jit_compile=jit,
                                   batch_norms=args.batch_norm, progress=print_progress)
    except (ValueError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(file=sys.stderr)
    print(format_markdown(report) if args.markdown else format_table(report))
    if args.json:
        with open(args.json, "w") as file:
            json.dump(report, file, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
