"""Training speed of the block variants side by side, their FLOPs, and the device's peak.

Every model is built in one process and warmed up; then training steps (forward, backward,
SGD update) are timed round by round, each round visiting every model once, so that a noisy
machine slows all of them alike. The reported step time is the median over rounds. On the
TensorFlow backend the step is the recipes' own (`distribute.Trainer`); on JAX and PyTorch it
is Keras's own train step (`train_on_batch`), so that the backends can be compared.

Command line (`fastres-benchmark`, `python recipes/benchmark.py`, `python -m
keras_fastres.benchmark`):

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
import itertools
import json
import statistics
import sys
import time
from dataclasses import dataclass

import numpy as np
import keras
import tensorflow as tf

from keras import ops

from keras_fastres import batch_norm, blocks, data, models
from keras_fastres.console import (HelpFormatter, check_positive_integers, positive_integer,
                                   program, writable_file)
from keras_fastres.distribute import Trainer, make_strategy
from keras_fastres.training import (PRECISIONS, TrainConfig, build_and_compile, describe_device,
                                   resolve_jit_compile)

COMPUTE_DTYPES = {"float32": "float32", "mixed_float16": "float16",
                  "mixed_bfloat16": "bfloat16"}
EPOCH_IMAGES = 50_000  # one CIFAR training epoch
# A training step does the forward convolution and dense work three times over: forward,
# gradient with respect to the input, gradient with respect to the weights.
TRAIN_TO_FORWARD = 3


@dataclass(frozen=True)
class Case:
    depth: int
    variant: str
    precision: str = "float32"
    jit_compile: bool = False
    batch_norm: str = "fused"

    @property
    def label(self):
        return (f"ResNet-{self.depth} {self.variant} {self.precision} {self.batch_norm} BN"
                f"{' XLA' if self.jit_compile else ''}")


def forward_multiply_adds(model):
    """Multiply-adds of one image's forward pass through every convolution and dense layer,
    from the kernels' shapes and the output sizes (batch norm, ReLU and sums not counted)."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, blocks.ResidualBlock):
            kernels = [sub.kernel for sub in (getattr(layer, name, None) for name in
                       ("conv1", "conv2", "projection")) if sub is not None]
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            kernels = [layer.kernel]
        else:
            continue
        # Every convolution of a block writes at the block's output resolution.
        positions = int(np.prod(layer.output.shape[1:-1])) if len(layer.output.shape) == 4 else 1
        total += sum(positions * int(np.prod(kernel.shape)) for kernel in kernels)
    return total


def train_flops_per_image(model):
    """2 FLOPs per multiply-add, three passes per training step."""
    return 2 * TRAIN_TO_FORWARD * forward_multiply_adds(model)


def matmul_peak(precision="float32", size=2048, rounds=5, repeats=4):
    """GFLOP/s of large square matmuls in the precision's compute dtype, on this backend and
    device."""
    dtype = COMPUTE_DTYPES[precision]
    # Entries in [0, 1/size): each product keeps values bounded. The products are chained so
    # that none can be merged or skipped.
    a = ops.cast(keras.random.uniform((size, size), seed=1), dtype)
    b = ops.cast(keras.random.uniform((size, size), seed=2) / size, dtype)

    def products():
        x = a
        for _ in range(repeats):
            x = ops.matmul(x, b)
        return float(ops.convert_to_numpy(ops.sum(ops.cast(x, "float32"))))

    products()  # warm up
    seconds = []
    for _ in range(rounds):
        start = time.perf_counter()
        products()
        seconds.append(time.perf_counter() - start)
    return 2 * size ** 3 * repeats / statistics.median(seconds) / 1e9


def check_models(depths, variants):
    """A ValueError for a depth that is not 6n + 2 or an unknown variant, naming the choices."""
    for depth in depths:
        models.blocks_per_stage(depth)
    unknown = [v for v in variants if v not in models.BLOCKS]
    if unknown:
        raise ValueError(f"variants must be taken from {sorted(models.BLOCKS)}, got {unknown}.")


def on_tensorflow():
    return keras.backend.backend() == "tensorflow"


def build(case, num_classes=10):
    """The case's model, built and compiled by the recipes' own code."""
    config = TrainConfig(depth=case.depth, variant=case.variant, precision=case.precision,
                         jit_compile=case.jit_compile, batch_norm=case.batch_norm)
    return build_and_compile(config, num_classes)


class TrainSteps:
    """Runs and times training steps of one model on one batch, again and again: the recipes'
    `distribute.Trainer` on TensorFlow, Keras's `train_on_batch` on the other backends."""

    def __init__(self, case, images, labels):
        if on_tensorflow():
            strategy = make_strategy("auto")
            with strategy.scope():
                self.model = build(case)
            trainer = Trainer(self.model, strategy, jit_compile=case.jit_compile)
            batches = iter(strategy.experimental_distribute_dataset(
                tf.data.Dataset.from_tensors((images, labels)).repeat()))
            self._step = lambda: trainer.train_step(next(batches))
            self._wait = lambda: float(trainer.loss.result())
        else:
            self.model = build(case)
            self._step = lambda: self.model.train_on_batch(images, labels)
            self._wait = lambda: None  # train_on_batch returns its logs as numbers

    def time(self, steps):
        """Seconds per training step, over `steps` steps."""
        start = time.perf_counter()
        for _ in range(steps):
            self._step()
        self._wait()
        return (time.perf_counter() - start) / steps


def run_benchmark(depths=(20, 56, 110), variants=("preact", "type1", "type2", "v1"),
                  batch_size=128, rounds=10, steps=3, warmup_steps=2, precisions=("float32",),
                  jit_compile=(None,), batch_norms=("auto",), progress=None):
    """Times every (depth, variant, precision, XLA, BN) case interleaved; returns the report.

    `jit_compile` holds True, False and/or None (as the recipes choose: XLA on GPUs only; on
    JAX and PyTorch, None is Keras's own default). `batch_norms` holds "auto", "fused" and/or
    "keras" (see `keras_fastres.batch_norm`); results name the one that ran.
    `progress`, if given, is called with a one-line status while the benchmark runs.
    """
    check_models(depths, variants)
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown:
        raise ValueError(f"precisions must be taken from {PRECISIONS}, got {unknown}.")
    for implementation in batch_norms:
        batch_norm.check_implementation(implementation)
    check_positive_integers(batch_size=batch_size, rounds=rounds, steps=steps)
    progress = progress or (lambda message: None)
    # None: as the recipes choose on TensorFlow (XLA on GPUs only); Keras's own default on the
    # other backends (JAX always compiles with XLA, PyTorch runs eagerly).
    default = (resolve_jit_compile(None) if on_tensorflow()
               else keras.backend.backend() == "jax")
    jit_compile = sorted({default if j is None else j for j in jit_compile})
    cases = [Case(*values) for values in itertools.product(
        depths, variants, precisions, jit_compile,
        sorted({batch_norm.resolve(b) for b in batch_norms}, reverse=True))]

    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (batch_size, 32, 32, 3)).astype("float32")
    labels = rng.integers(0, 10, batch_size)
    peaks = {}
    for precision in precisions:
        progress(f"measuring the {precision} matmul peak")
        peaks[precision] = matmul_peak(precision)

    built = {}
    for index, case in enumerate(cases, 1):
        progress(f"building and warming up {index}/{len(cases)}: {case.label}")
        built[case] = TrainSteps(case, images, labels)
        built[case].time(warmup_steps)

    seconds = {case: [] for case in cases}
    for round_index in range(1, rounds + 1):
        for index, case in enumerate(cases, 1):
            progress(f"round {round_index}/{rounds}, {index}/{len(cases)}: {case.label}")
            seconds[case].append(built[case].time(steps))

    results = []
    for case in cases:
        step = statistics.median(seconds[case])
        flops = train_flops_per_image(built[case].model)
        results.append({
            "depth": case.depth, "variant": case.variant, "precision": case.precision,
            "jit_compile": case.jit_compile, "batch_norm": case.batch_norm,
            "step_seconds": step,
            "step_seconds_per_round": seconds[case],
            "images_per_second": batch_size / step,
            "epoch_seconds": step * EPOCH_IMAGES / batch_size,
            "train_gflop_per_image": flops / 1e9,
            "achieved_gflops": flops * batch_size / step / 1e9,
            "peak_fraction": flops * batch_size / step / 1e9 / peaks[case.precision],
        })
    for result in results:
        baseline = next((r for r in results if r["variant"] == "preact" and all(
            r[k] == result[k] for k in ("depth", "precision", "jit_compile", "batch_norm"))),
            None)
        result["ratio_to_preact"] = (result["step_seconds"] / baseline["step_seconds"]
                                     if baseline else None)
    return {"kind": "training", "device": describe_device(), "backend": keras.backend.backend(),
            "tensorflow": tf.__version__, "keras": keras.__version__, "batch_size": batch_size,
            "rounds": rounds, "steps_per_round": steps, "matmul_peak_gflops": peaks,
            "results": results}


def run_pipeline_benchmark(batch_size=128, rounds=3, images=EPOCH_IMAGES, progress=None):
    """Images/s of the training input pipeline alone (`data.TrainingData`: shuffle, pad, crop,
    flip, uint8 batches) over random CIFAR-shaped uint8 data in memory: the median of
    `rounds` epochs after one warm-up epoch. Returns the report."""
    check_positive_integers(batch_size=batch_size, rounds=rounds, images=images)
    progress = progress or (lambda message: None)
    rng = np.random.default_rng(0)
    split = data.Split(rng.integers(0, 256, (images, 32, 32, 3), dtype=np.uint8),
                       rng.integers(0, 10, images))
    pipeline = data.TrainingData(split, batch_size, 0, 10)
    per_epoch = []
    for epoch in range(rounds + 1):
        progress(f"epoch {epoch}/{rounds}" + (" (warm-up)" if epoch == 0 else ""))
        start = time.perf_counter()
        count = sum(int(labels.shape[0]) for _, labels in pipeline.epoch(epoch))
        if epoch:
            per_epoch.append(count / (time.perf_counter() - start))
    result = {"batch_size": batch_size, "images": images,
              "pipeline_images_per_second": statistics.median(per_epoch),
              "pipeline_images_per_second_per_round": per_epoch}
    return {"kind": "pipeline", "device": describe_device(), "tensorflow": tf.__version__,
            "batch_size": batch_size, "rounds": rounds, "results": [result]}


# (title, key, format) of the table's columns, by the report's kind.
COLUMNS = {
    "training": (
        ("depth", "depth", "{}"), ("variant", "variant", "{}"),
        ("precision", "precision", "{}"), ("BN", "batch_norm", "{}"),
        ("XLA", "jit_compile", "{}"),
        ("step ms", "step_seconds", "{:.1f}"), ("images/s", "images_per_second", "{:.0f}"),
        ("s/epoch", "epoch_seconds", "{:.1f}"), ("vs preact", "ratio_to_preact", "{:.3f}"),
        ("GFLOP/img", "train_gflop_per_image", "{:.3f}"),
        ("GFLOP/s", "achieved_gflops", "{:.1f}"), ("of peak", "peak_fraction", "{:.1%}")),
    "inference": (
        ("depth", "depth", "{}"), ("variant", "variant", "{}"), ("runtime", "runtime", "{}"),
        ("BN folded", "folded", "{}"), ("images/s", "images_per_second", "{:.0f}"),
        ("vs unfolded", "ratio_to_unfolded", "{:.3f}"),
        ("batch-1 p50 ms", "latency_ms_p50", "{:.2f}"),
        ("batch-1 p99 ms", "latency_ms_p99", "{:.2f}")),
    "pipeline": (
        ("batch", "batch_size", "{}"), ("images per epoch", "images", "{}"),
        ("pipeline images/s", "pipeline_images_per_second", "{:.0f}")),
}


def table_rows(report):
    columns = COLUMNS[report["kind"]]
    rows = []
    for result in report["results"]:
        row = []
        for _, key, spec in columns:
            value = result[key] * 1000 if key == "step_seconds" else result[key]
            row.append("-" if value is None else spec.format(value))
        rows.append(row)
    return [title for title, _, _ in columns], rows


def format_table(report):
    """The report as an aligned plain-text table, with the machine and the peaks."""
    header, rows = table_rows(report)
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(row, widths))
             for row in [header, *rows]]
    return "\n".join([_summary(report), *lines])


def format_markdown(report):
    header, rows = table_rows(report)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join([_summary(report), "", *lines])


def _summary(report):
    if report["kind"] == "pipeline":
        return (f"{report['device']}; TensorFlow {report['tensorflow']}; the training "
                f"pipeline alone (crop, flip, shuffle), median of {report['rounds']} epochs")
    if report["kind"] == "inference":
        return (f"{report['device']}; TensorFlow {report['tensorflow']}, onnxruntime "
                f"{report['onnxruntime']}; throughput at batch {report['batch_size']} "
                f"(median of {report['rounds']} rounds), batch-1 latency over "
                f"{report['rounds']} rounds x {report['latency_calls']} calls")
    peaks = ", ".join(f"{p} {g:.1f} GFLOP/s" for p, g in report["matmul_peak_gflops"].items())
    return (f"{report['device']}; Keras {report['keras']} on {report['backend']}, TensorFlow "
            f"{report['tensorflow']}; "
            f"batch {report['batch_size']}, median of {report['rounds']} rounds x "
            f"{report['steps_per_round']} steps; matmul peak: {peaks}")


def print_progress(message):
    print(f"\r\033[K{message}" if sys.stderr.isatty() else message, end="" if sys.stderr.isatty()
          else "\n", file=sys.stderr, flush=True)


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
        prog=program("keras_fastres.benchmark"), formatter_class=HelpFormatter,
        description="Training speed of the block variants side by side in one process, with "
                    "FLOPs and the device's matmul peak; or the serving speed of the exports "
                    "(--inference), or the input pipeline's (--pipeline).")
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
    parser.add_argument("--pipeline", action="store_true",
                        help="time the training input pipeline alone (one epoch of CIFAR-shaped "
                             "data per round; --batch-size and --rounds apply)")
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
