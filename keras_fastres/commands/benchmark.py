"""fastres-benchmark: training speed of the variants side by side in one process (`train`, the
default), or the serving speed of the exports (`inference`), the input pipeline's (`pipeline`),
fastres-serve's (`serve`), loading a folder of images (`loader`), or the report for GPU owners
(`report`).

    fastres-benchmark                                   # the README's table (= train)
    fastres-benchmark train --depths 20 --variants preact,type1 --json out.json
    fastres-benchmark train --depths 110 --variants preact,type1 --batch-norm keras,fused
    fastres-benchmark train --depths 110 --variants type1 --precisions float32,mixed_bfloat16
    KERAS_BACKEND=jax fastres-benchmark train --depths 20 --variants type1
    fastres-benchmark inference                         # ResNet-110 preact, type1
    fastres-benchmark pipeline                          # augmentation images/s, 32 and 64
    fastres-benchmark serve                             # fastres-serve requests/s, latency
    fastres-benchmark loader DIR --image-size 64 --workers 1,2   # decoding images/s
    fastres-benchmark report --json report.json         # for GPU owners

The flags of 0.3 (--inference, --pipeline, --serve, --loader DIR, --report) still select the
same benchmarks, with a deprecation line; they go in 0.5.

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
from keras_fastres.errors import summary
from keras_fastres.training.config import PRECISIONS
from keras_fastres.utils.console import (
    HelpFormatter,
    positive_integer,
    program,
    quiet_converters,
    writable_file,
)

DEPTHS = "20,56,110"
VARIANTS = "preact,type1,type2,v1"
INFERENCE_DEPTHS = "110"
INFERENCE_VARIANTS = "preact,type1"
BATCH_SIZE = 128  # the paper's
ROUNDS = 10
STEPS = 3
SUBCOMMANDS = ("train", "inference", "pipeline", "loader", "serve", "report")
# 0.3's flags and the subcommand each now names; --loader took the folder as its value.
OLD_FLAGS = {"--inference": "inference", "--pipeline": "pipeline", "--serve": "serve",
             "--report": "report", "--loader": "loader"}


def csv_list(convert=str):
    return lambda text: [convert(item) for item in text.split(",") if item]


def with_subcommand(argv):
    """`argv` with its subcommand first: as given; from one of 0.3's flags (`OLD_FLAGS`, with a
    deprecation line on stderr); else `train`. --help alone stays the program's own."""
    if argv and (argv[0] in SUBCOMMANDS or argv[0] in ("-h", "--help")):
        return argv
    for index, argument in enumerate(argv):
        flag, equals, value = argument.partition("=")
        if flag in OLD_FLAGS:
            name = OLD_FLAGS[flag]
            taken = 2 if flag == "--loader" and not equals else 1  # --loader DIR: its folder
            folder = [value] if equals else argv[index + 1:index + taken]
            rest = argv[:index] + folder + argv[index + taken:]
            print(f"warning: {flag} is deprecated and goes in 0.5; use "
                  f"'fastres-benchmark {name}{' DIR' if name == 'loader' else ''}'",
                  file=sys.stderr)
            return [name, *rest]
    return ["train", *argv]


def build_parser():
    """The argument parser: one subcommand per benchmark, each with only its options."""
    top = argparse.ArgumentParser(
        prog=program("keras_fastres.commands.benchmark"), formatter_class=HelpFormatter,
        description="Training speed of the block variants side by side in one process, with "
                    "FLOPs and the device's matmul peak (train, the default); the serving "
                    "speed of the exports (inference); the input pipeline's (pipeline); "
                    "fastres-serve's (serve); loading a folder of images (loader); or the "
                    "report for GPU owners (report). 'fastres-benchmark SUBCOMMAND --help' "
                    "lists each one's options.")
    subcommands = top.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")

    def add(name, help):
        return subcommands.add_parser(name, help=help, description=help,
                                      formatter_class=HelpFormatter)

    def rounds(command):
        command.add_argument("--rounds", type=positive_integer, default=ROUNDS,
                             help="each round times every model once; the median is reported")

    def batch_size(command):
        command.add_argument("--batch-size", type=positive_integer, default=BATCH_SIZE,
                             help="images per step")

    def output(command):
        command.add_argument("--json", metavar="FILE", type=writable_file,
                             help="also write the full report as JSON (checked before the run)")
        command.add_argument("--markdown", action="store_true",
                             help="print a Markdown table instead of a text one")

    train = add("train", "training speed of the block variants side by side in one process")
    train.add_argument("--depths", type=csv_list(int), default=DEPTHS, help="comma-separated")
    train.add_argument("--variants", type=csv_list(), default=VARIANTS, help="comma-separated")
    batch_size(train)
    rounds(train)
    train.add_argument("--steps", type=positive_integer, default=STEPS,
                       help="timed steps per round")
    train.add_argument("--precisions", type=csv_list(), default="float32",
                       help=f"any of {','.join(PRECISIONS)}")
    train.add_argument("--batch-norm", type=csv_list(), default="auto",
                       help=f"any of {','.join(batch_norm.IMPLEMENTATIONS)}; auto: the models' "
                            f"default (TensorFlow's fused kernel on TensorFlow, Keras's "
                            f"elsewhere)")
    train.add_argument("--steps-per-execution", type=csv_list(int), default="1",
                       help="training steps per compiled call, comma-separated (e.g. 1,16: "
                            "compared in one process); --steps counts calls")
    train.add_argument("--jit-compile", choices=("auto", "on", "off", "both"), default="auto",
                       help="XLA; auto: as the recipes (on with GPUs, off on CPUs)")
    output(train)

    served = add("inference", "serving speed of the exported models (needs the onnx extra)")
    served.add_argument("--depths", type=csv_list(int), default=INFERENCE_DEPTHS,
                        help="comma-separated")
    served.add_argument("--variants", type=csv_list(), default=INFERENCE_VARIANTS,
                        help="comma-separated")
    batch_size(served)
    rounds(served)
    output(served)

    augmentation = add("pipeline", "the training input pipeline alone: one epoch of 50,000 "
                                   "random 32x32 images per round, then of 64x64 ones")
    batch_size(augmentation)
    rounds(augmentation)
    output(augmentation)

    loading = add("loader", "a first load of a folder of images into the cache, as "
                            "fastres-train --data DIR")
    loading.add_argument("folder", metavar="DIR", help="a folder of class folders")
    loading.add_argument("--workers", type=csv_list(positive_integer), default=None,
                         help="comma-separated counts of decoding processes, timed side by "
                              "side (default: 1 and one per CPU)")
    loading.add_argument("--image-size", type=positive_integer, default=32,
                         help="the size images are resized to")
    rounds(loading)
    output(loading)

    server = add("serve", "fastres-serve (needs the serve extra): requests/s and latency of a "
                          "ResNet-20 type1 SavedModel under 1, 8 and 32 concurrent clients, "
                          "batching on and off")
    rounds(server)
    output(server)

    gpu = add("report", "the report for GPU owners: training speed of preact and type1 at "
                        "depths 20 and 110 in float32 and the device's fast mixed precision, "
                        "XLA off and on, 1 vs 16 steps per call, data on the host vs the "
                        "device; about 10 minutes on one GPU (with --json, also FILE.md)")
    gpu.add_argument("--quick", action="store_true",
                     help="the same at depth 8, one round (a smoke test)")
    gpu.add_argument("--json", metavar="FILE", type=writable_file,
                     help="also write the report as JSON, and as Markdown in FILE with .md")
    return top


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = build_parser()
    args = commands.parse_args(with_subcommand(argv))
    tf.get_logger().setLevel("ERROR")  # one traced train function per model is expected
    if args.subcommand == "report" and args.json and Path(args.json).suffix == ".md":
        commands.error(f"--json {args.json}: the report's Markdown copy is written beside it "
                       f"with the suffix .md, over the JSON; give a name such as report.json")
    if args.subcommand == "loader" and not Path(args.folder).is_dir():
        commands.error(f"loader: {args.folder} is not a folder; give a folder of class folders "
                       f"(DIR/<class>/<images>)")
    return run_command(lambda: benchmark(args), log_level=logging.WARNING)


def benchmark(args):
    """Runs the benchmark `args` ask for and prints its table (and writes --json)."""
    if args.subcommand == "report":
        print(f"The report{' (quick)' if args.quick else ''}: training speed, steps per call "
              f"and data placement on this device.", file=sys.stderr)
        report = accelerator.run_report(args.quick, progress=print_progress)
    elif args.subcommand == "serve":
        print(f"Benchmarking fastres-serve: batching on and off, 1, 8 and 32 clients, "
              f"{args.rounds} rounds.",
              file=sys.stderr)
        report = serve.run_serve_benchmark(rounds=args.rounds, progress=print_progress)
    elif args.subcommand == "loader":
        print(f"Benchmarking loading {args.folder} at {args.image_size}x{args.image_size}: "
              f"{args.rounds} rounds.", file=sys.stderr)
        report = loader.run_loader_benchmark(args.folder, args.image_size, args.rounds,
                                             progress=print_progress, workers=args.workers)
    elif args.subcommand == "pipeline":
        print(f"Benchmarking the training pipeline: batch {args.batch_size}, {args.rounds} "
              f"epochs of 50,000 images at 32x32, then 64x64.", file=sys.stderr)
        report = pipeline.run_pipeline_benchmark(args.batch_size, args.rounds,
                                                 progress=print_progress)
    elif args.subcommand == "inference":
        print(f"Benchmarking serving: depths {args.depths}, variants {args.variants}, "
              f"batch {args.batch_size} and batch 1, {args.rounds} rounds.", file=sys.stderr)
        with quiet_converters():
            report = inference.run_inference_benchmark(
                args.depths, args.variants, args.batch_size, args.rounds,
                progress=print_progress)
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
