"""Training speed of the block variants side by side, their FLOPs, and the device's peak.

Every model is built in one process and warmed up; then training steps (forward, backward,
SGD update) are timed round by round, each round visiting every model once, so that a noisy
machine slows all of them alike. The reported step time is the median over rounds. On the
TensorFlow backend the step is the recipes' own (`distribute.Trainer`); on JAX and PyTorch it
is Keras's own train step (`train_on_batch`), so that the backends can be compared.

The command line is fastres-benchmark (commands/benchmark.py). The defaults there (10 rounds x
3 steps at batch 128) keep the full default run near 5 minutes on 2 CPU cores; on a GPU, raise
--rounds and --steps for tighter medians.
"""

import itertools
import statistics
import time
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_fastres import batch_norm, blocks
from keras_fastres.benchmarks.report import check_models
from keras_fastres.training.config import PRECISIONS, TrainConfig, build_and_compile
from keras_fastres.training.distribute import Trainer, make_strategy
from keras_fastres.utils.console import check_positive_integers
from keras_fastres.utils.machine import describe_device, resolve_jit_compile

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
    steps_per_execution: int = 1

    @property
    def label(self):
        per_call = self.steps_per_execution
        return (f"ResNet-{self.depth} {self.variant} {self.precision} {self.batch_norm} BN"
                f"{' XLA' if self.jit_compile else ''}"
                f"{f' {per_call} steps/call' if per_call > 1 else ''}")


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


def on_tensorflow():
    return keras.backend.backend() == "tensorflow"


def build(case, num_classes=10):
    """The case's model, built and compiled by the recipes' own code."""
    config = TrainConfig(depth=case.depth, variant=case.variant, precision=case.precision,
                         jit_compile=case.jit_compile, batch_norm=case.batch_norm)
    return build_and_compile(config, num_classes)


class TrainSteps:
    """Runs and times training steps of one model on one batch, again and again: the recipes'
    `distribute.Trainer` on TensorFlow (`steps_per_execution` steps per compiled call, the
    loss read back after each call, as the recipes do), Keras's `train_on_batch` on the other
    backends."""

    def __init__(self, case, images, labels):
        self.per_call = case.steps_per_execution
        if on_tensorflow():
            strategy = make_strategy("auto")
            with strategy.scope():
                self.model = build(case)
            trainer = Trainer(self.model, strategy, jit_compile=case.jit_compile)
            batches = iter(strategy.experimental_distribute_dataset(
                tf.data.Dataset.from_tensors((images, labels)).repeat()))
            steps = tf.constant(self.per_call)
            self._call = lambda: (trainer.train_steps(batches, steps),
                                  float(trainer.loss.result()))
        else:
            self.model = build(case)
            self._call = lambda: self.model.train_on_batch(images, labels)

    def time(self, calls):
        """Seconds per training step, over `calls` calls of `steps_per_execution` steps."""
        start = time.perf_counter()
        for _ in range(calls):
            self._call()
        return (time.perf_counter() - start) / (calls * self.per_call)


def run_benchmark(depths=(20, 56, 110), variants=("preact", "type1", "type2", "v1"),
                  batch_size=128, rounds=10, steps=3, warmup_steps=2, precisions=("float32",),
                  jit_compile=(None,), batch_norms=("auto",), steps_per_execution=(1,),
                  progress=None):
    """Times every (depth, variant, precision, XLA, BN, steps per call) case interleaved;
    returns the report. `steps` is the number of timed calls per round.

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
    check_positive_integers(batch_size=batch_size, rounds=rounds, steps=steps,
                            **{f"steps_per_execution {n}": n for n in steps_per_execution})
    if not on_tensorflow() and set(steps_per_execution) != {1}:
        raise ValueError("steps_per_execution other than 1 is timed on the TensorFlow "
                         "backend only (the recipes' training loop).")
    progress = progress or (lambda message: None)
    # None: as the recipes choose on TensorFlow (XLA on GPUs only); Keras's own default on the
    # other backends (JAX always compiles with XLA, PyTorch runs eagerly).
    default = (resolve_jit_compile(None) if on_tensorflow()
               else keras.backend.backend() == "jax")
    jit_compile = sorted({default if j is None else j for j in jit_compile})
    cases = [Case(*values) for values in itertools.product(
        depths, variants, precisions, jit_compile,
        sorted({batch_norm.resolve(b) for b in batch_norms}, reverse=True),
        sorted(set(steps_per_execution)))]

    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (batch_size, 32, 32, 3)).astype("float32")
    labels = rng.integers(0, 10, batch_size)
    for precision in precisions:
        progress(f"warming up the {precision} matmul peak")
        matmul_peak(precision, rounds=1)

    built = {}
    for index, case in enumerate(cases, 1):
        progress(f"building and warming up {index}/{len(cases)}: {case.label}")
        built[case] = TrainSteps(case, images, labels)
        built[case].time(warmup_steps)

    # The peak is measured in every round too, interleaved with the models: measured once on
    # a machine that was busy at that moment, it made the models look faster than the peak.
    seconds: dict[Case, list[float]] = {case: [] for case in cases}
    peak_rounds: dict[str, list[float]] = {precision: [] for precision in precisions}
    for round_index in range(1, rounds + 1):
        for precision in precisions:
            progress(f"round {round_index}/{rounds}: the {precision} matmul peak")
            peak_rounds[precision].append(matmul_peak(precision, rounds=1))
        for index, case in enumerate(cases, 1):
            progress(f"round {round_index}/{rounds}, {index}/{len(cases)}: {case.label}")
            seconds[case].append(built[case].time(steps))

    peaks = {precision: statistics.median(values) for precision, values in peak_rounds.items()}
    results = []
    for case in cases:
        step = statistics.median(seconds[case])
        flops = train_flops_per_image(built[case].model)
        results.append({
            "depth": case.depth, "variant": case.variant, "precision": case.precision,
            "jit_compile": case.jit_compile, "batch_norm": case.batch_norm,
            "steps_per_execution": case.steps_per_execution, "step_seconds": step,
            "step_seconds_per_round": seconds[case],
            "images_per_second": batch_size / step,
            "epoch_seconds": step * EPOCH_IMAGES / batch_size,
            "train_gflop_per_image": flops / 1e9,
            "achieved_gflops": flops * batch_size / step / 1e9,
            "peak_fraction": flops * batch_size / step / 1e9 / peaks[case.precision],
        })
    for result in results:
        baseline = next((r for r in results if r["variant"] == "preact" and all(
            r[k] == result[k] for k in ("depth", "precision", "jit_compile", "batch_norm",
                                        "steps_per_execution"))),
            None)
        result["ratio_to_preact"] = (result["step_seconds"] / baseline["step_seconds"]
                                     if baseline else None)
    return {"kind": "training", "device": describe_device(), "backend": keras.backend.backend(),
            "tensorflow": tf.__version__, "keras": keras.__version__, "batch_size": batch_size,
            "rounds": rounds, "steps_per_round": steps, "matmul_peak_gflops": peaks,
            "matmul_peak_gflops_per_round": peak_rounds,
            "peak_disturbed": any(r["peak_fraction"] > 1 for r in results), "results": results}


# (title, result key, format) of the report's table (benchmarks.report).
COLUMNS = (
    ("depth", "depth", "{}"), ("variant", "variant", "{}"),
    ("precision", "precision", "{}"), ("BN", "batch_norm", "{}"),
    ("XLA", "jit_compile", "{}"), ("steps/call", "steps_per_execution", "{}"),
    ("step ms", "step_seconds", lambda seconds: f"{1000 * seconds:.1f}"),
    ("images/s", "images_per_second", "{:.0f}"),
    ("s/epoch", "epoch_seconds", "{:.1f}"), ("vs preact", "ratio_to_preact", "{:.3f}"),
    ("GFLOP/img", "train_gflop_per_image", "{:.3f}"),
    ("GFLOP/s", "achieved_gflops", "{:.1f}"), ("of peak", "peak_fraction", "{:.1%}"))


def summary(report):
    peaks = ", ".join(
        f"{precision} {gflops:.1f} GFLOP/s ({min(spread):.0f}-{max(spread):.0f} over the rounds)"
        for (precision, gflops), spread in zip(report["matmul_peak_gflops"].items(),
                                               report["matmul_peak_gflops_per_round"].values()))
    text = (f"{report['device']}; Keras {report['keras']} on {report['backend']}, TensorFlow "
            f"{report['tensorflow']}; batch {report['batch_size']}, median of "
            f"{report['rounds']} rounds x {report['steps_per_round']} steps; matmul peak, median "
            f"of the rounds: {peaks}")
    if report["peak_disturbed"]:
        text += ("\nWARNING: a model ran above the measured matmul peak, so the peak measurement "
                 "was disturbed (other work on the machine?): the 'of peak' column is not "
                 "meaningful; run again on a quiet machine, with more --rounds.")
    return text
