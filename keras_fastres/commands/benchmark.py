"""fastres-benchmark: training speed of the variants side by side in one process, or the
serving speed of the exports (--inference), the input pipeline's (--pipeline), or loading a
folder of images (--loader).

    fastres-benchmark                                   # the README's table
    fastres-benchmark --depths 20 --variants preact,type1 --json out.json
    fastres-benchmark --depths 110 --variants preact,type1 --batch-norm keras,fused
    fastres-benchmark --depths 110 --variants type1 --precisions float32,mixed_bfloat16
    KERAS_BACKEND=jax fastres-benchmark --depths 20 --variants type1
    fastres-benchmark --inference                       # ResNet-110 preact, type1
    fastres-benchmark --pipeline                        # augmentation images/s, 32 and 64
    fastres-benchmark --serve                           # fastres-serve requests/s, latency
    fastres-benchmark --loader DIR --image-size 64 --workers 1,2   # decoding images/s

Under KERAS_BACKEND=jax or torch the models train with Keras's own train step on that backend.
"""

import argparse
import json
import logging
import sys
from pathlib import Path

import tensorflow as tf

from keras_fastres import batch_norm
from keras_fastres.benchmarks import accelerator, inference, loader, pipeline, serve, training
from keras_fastres.benchmarks.report import format_markdown, format_table
from keras_fastres.commands.output import print_progress, run_command
from keras_fastres.config import PRECISIONS
from keras_fastres.console import HelpFormatter, positive_integer, program, writable_file
from keras_fastres.errors import summary

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
    parser = argparse.ArgumentParser(
        prog=program("keras_fastres.commands.benchmark"), formatter_class=HelpFormatter,
        description="Training speed of the block variants side by side in one process, with "
                    "FLOPs and the device's matmul peak; or the serving speed of the exports "
                    "(--inference), the input pipeline's (--pipeline), or loading a folder of "
                    "images (--loader).")
    parser.add_argument("--depths", type=csv_list(int), default=None,
                        help=f"comma-separated (default: {DEPTHS}; with --inference "
                             f"{INFERENCE_DEPTHS})")
    parser.add_argument("--variants", type=csv_list(), default=None,
                        help=f"comma-separated (default: {VARIANTS}; with --inference "
                             f"{INFERENCE_VARIANTS})")
    parser.add_argument("--inference", action="store_true",
                        help="time the exported models serving instead of training (needs "
                             "the onnx extra); --rounds applies, --steps, --precisions, "
                             "--batch-norm and --jit-compile do not")
    parser.add_argument("--report", action="store_true",
                        help="the report for GPU owners: training speed of preact and type1 at "
                             "depths 20 and 110 in float32 and the device's fast mixed "
                             "precision, XLA off and on, 1 vs 16 steps per call, data on the "
                             "host vs the device; about 10 minutes on one GPU (with --json, "
                             "also FILE.md)")
    parser.add_argument("--quick", action="store_true",
                        help="with --report: the same at depth 8, one round (a smoke test)")
    parser.add_argument("--pipeline", action="store_true",
                        help="time the training input pipeline alone (one epoch of 50,000 "
                             "random 32x32 images per round, then of 64x64 ones; --batch-size "
                             "and --rounds apply)")
    parser.add_argument("--serve", action="store_true",
                        help="time fastres-serve (needs the serve extra): requests/s and "
                             "latency of a ResNet-20 type1 SavedModel under 1 and 8 concurrent "
                             "clients (--rounds applies)")
    parser.add_argument("--loader", metavar="DIR",
                        help="time a first load of a folder of images into the cache (as "
                             "fastres-train --data DIR; --image-size, --workers and --rounds "
                             "apply)")
    parser.add_argument("--workers", type=csv_list(positive_integer), default=None,
                        help="with --loader: comma-separated counts of decoding processes, "
                             "timed side by side (default: 1 and one per CPU)")
    parser.add_argument("--image-size", type=positive_integer, default=32,
                        help="with --loader: the size images are resized to")
    parser.add_argument("--batch-size", type=positive_integer, default=BATCH_SIZE,
                        help="images per step")
    parser.add_argument("--rounds", type=positive_integer, default=ROUNDS,
                        help="each round times every model once; the median is reported")
    parser.add_argument("--steps", type=positive_integer, default=STEPS,
                        help="timed steps per round")
    parser.add_argument("--precisions", type=csv_list(), default="float32",
                        help=f"any of {','.join(PRECISIONS)}")
    parser.add_argument("--batch-norm", type=csv_list(), default="auto",
                        help=f"any of {','.join(batch_norm.IMPLEMENTATIONS)}; auto: the "
                             f"models' default (TensorFlow's fused kernel on TensorFlow, "
                             f"Keras's elsewhere)")
    parser.add_argument("--steps-per-execution", type=csv_list(int), default="1",
                        help="training steps per compiled call, comma-separated (e.g. 1,16: "
                             "compared in one process); --steps counts calls")
    parser.add_argument("--jit-compile", choices=("auto", "on", "off", "both"), default="auto",
                        help="XLA; auto: as the recipes (on with GPUs, off on CPUs)")
    parser.add_argument("--json", metavar="FILE", type=writable_file,
                        help="also write the full report as JSON (checked before the run)")
    parser.add_argument("--markdown", action="store_true",
                        help="print a Markdown table instead of a text one")
    args = parser.parse_args(argv)
    args.depths = args.depths or csv_list(int)(INFERENCE_DEPTHS if args.inference else DEPTHS)
    args.variants = args.variants or csv_list()(INFERENCE_VARIANTS if args.inference
                                                else VARIANTS)
    tf.get_logger().setLevel("ERROR")  # one traced train function per model is expected
    if args.quick and not args.report:
        parser.error("--quick goes with --report")
    if args.report and args.json and Path(args.json).suffix == ".md":
        parser.error(f"--json {args.json}: with --report the Markdown copy is written beside it "
                     f"with the suffix .md, over the JSON; give a name such as report.json")
    if args.workers and not args.loader:
        parser.error("--workers goes with --loader")
    if args.loader and not Path(args.loader).is_dir():
        parser.error(f"--loader: {args.loader} is not a folder; give a folder of class folders "
                     f"(DIR/<class>/<images>)")
    return run_command(lambda: benchmark(args), log_level=logging.WARNING)


def benchmark(args):
    """Runs the benchmark `args` ask for and prints its table (and writes --json)."""
    if args.report:
        print(f"The report{' (quick)' if args.quick else ''}: training speed, steps per call "
              f"and data placement on this device.", file=sys.stderr)
        report = accelerator.run_report(args.quick, progress=print_progress)
    elif args.serve:
        print(f"Benchmarking fastres-serve: 1 and 8 clients, {args.rounds} rounds.",
              file=sys.stderr)
        report = serve.run_serve_benchmark(rounds=args.rounds, progress=print_progress)
    elif args.loader:
        print(f"Benchmarking loading {args.loader} at {args.image_size}x{args.image_size}: "
              f"{args.rounds} rounds.", file=sys.stderr)
        report = loader.run_loader_benchmark(args.loader, args.image_size, args.rounds,
                                             progress=print_progress, workers=args.workers)
    elif args.pipeline:
        print(f"Benchmarking the training pipeline: batch {args.batch_size}, {args.rounds} "
              f"epochs of 50,000 images at 32x32, then 64x64.", file=sys.stderr)
        report = pipeline.run_pipeline_benchmark(args.batch_size, args.rounds,
                                                 progress=print_progress)
    elif args.inference:
        print(f"Benchmarking serving: depths {args.depths}, variants {args.variants}, "
              f"batch {args.batch_size} and batch 1, {args.rounds} rounds.", file=sys.stderr)
        report = inference.run_inference_benchmark(
            args.depths, args.variants, args.batch_size, args.rounds, progress=print_progress)
    else:
        jit = {"auto": [None], "on": [True], "off": [False],
               "both": [False, True]}[args.jit_compile]
        print(f"Benchmarking depths {args.depths}, variants {args.variants}, precisions "
              f"{args.precisions}, BN {args.batch_norm}, XLA {args.jit_compile}: batch "
              f"{args.batch_size}, {args.rounds} rounds x {args.steps} timed steps per "
              f"model.", file=sys.stderr)
        report = training.run_benchmark(
            args.depths, args.variants, args.batch_size, args.rounds, args.steps,
            precisions=args.precisions, jit_compile=jit, batch_norms=args.batch_norm,
            steps_per_execution=args.steps_per_execution, progress=print_progress)
    print(file=sys.stderr)
    if report["kind"] == "report":
        text = accelerator.format_report(report)
    else:
        layout = {"training": training, "inference": inference, "pipeline": pipeline,
                  "loader": loader, "serve": serve}[report["kind"]]
        text = (format_markdown if args.markdown else format_table)(
            report, layout.COLUMNS, layout.summary(report))
    print(text)
    if args.json:
        written = [(Path(args.json), json.dumps(report, indent=2))]
        if report["kind"] == "report":
            written.append((Path(args.json).with_suffix(".md"), text + "\n"))
        for path, content in written:
            try:
                path.write_text(content)
            except OSError as error:  # a full disk, a folder removed meanwhile: name the file
                raise OSError(f"Could not write {path}: {summary(error)}; the table is "
                              f"above.") from None


if __name__ == "__main__":
    sys.exit(main())
