"""The one place that turns a configuration into a compiled model and a resumable training run.

A run writes into its output directory:
    history.csv      one row per epoch (callbacks.HistoryCSV)
    metrics.json     test error, seconds per epoch, images/s, the configuration, versions, device
    error_curve.png  train and test error per epoch, like the paper's figures 6-8
    model.keras      the trained model (keras.saving.load_model after `import keras_fastres`)
    export/1/        with `export`: a SavedModel for serving (keras_fastres.export)
    tensorboard/     TensorBoard logs
    backup/          the last two finished epochs while the run is unfinished (backup.Backup):
                     running the same command again continues from the newest one
Training runs in distribute.Trainer under a tf.distribute strategy (one device by default);
only the chief writes these outputs.
"""

import argparse
import contextlib
import dataclasses
import fcntl
import json
import math
import os
import platform
import random
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from keras_fastres import batch_norm, blocks, callbacks, data, distribute, files, models, plots
from keras_fastres.backup import Backup
from keras_fastres.console import (HelpFormatter, check_positive_integers, positive_integer,
                                   program)
from keras_fastres.export import export_saved_model, require_tensorflow_backend

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
PAPER_BATCH_SIZE = 128  # the reference for --lr-scaling linear


@dataclass
class TrainConfig:
    """One experiment. The defaults are the paper's recipe (He et al.'s ResNet setup)."""

    dataset: str = "cifar10"
    depth: int = 110
    variant: str = "type1"
    shortcut: str = "A"
    epochs: int = 160
    batch_size: int = 128
    learning_rate: float = 0.1  # divided by 10 at 50% and 75% of the epochs
    momentum: float = 0.9  # Nesterov
    weight_decay: float = 1e-4
    drop_path_rate: float = 0.0
    extra_augmentation: tuple = ()
    source: str = "tfds"
    data_dir: str | None = None
    seed: int | None = None
    output_dir: str | None = None
    export: bool = False
    precision: str = "float32"  # or "mixed_float16" (with loss scaling), "mixed_bfloat16"
    batch_norm: str = "auto"  # "auto": TensorFlow's fused kernel (batch_norm.py), or "keras"
    jit_compile: bool | None = None  # None: XLA on GPUs, off on CPUs (slower there, measured)
    strategy: str = "auto"  # see distribute.make_strategy
    cpu_replicas: int | None = None  # "mirrored" over that many logical CPU devices
    lr_scaling: str | None = None  # "linear": learning_rate * batch_size / 128
    synthetic_size: tuple = (1024, 256)
    verbose: int | None = None  # None: a progress bar on a terminal, one line per epoch otherwise

    def run_dir(self):
        if self.output_dir:
            return Path(self.output_dir)
        source = "-synthetic" if self.source == "synthetic" else ""
        seed = f"-seed{self.seed}" if self.seed is not None else ""
        return Path("runs") / f"{self.dataset}{source}-resnet{self.depth}-{self.variant}{seed}"


class RunFailed(RuntimeError):
    """Training stopped without a usable model (the loss became NaN)."""


def check_config(config):
    """The training arguments' errors, before any data is read (the model checks its own)."""
    require_tensorflow_backend("Training with the recipes")
    data.check_dataset(config.dataset)
    data.check_extra_augmentation(config.extra_augmentation)
    data.check_source(config.source)
    batch_norm.check_implementation(config.batch_norm)
    models.blocks_per_stage(config.depth)
    blocks.check_weight_decay(config.weight_decay)
    check_positive_integers(epochs=config.epochs, batch_size=config.batch_size)
    if not config.learning_rate > 0:
        raise ValueError(f"learning_rate must be positive, got {config.learning_rate!r}.")
    if config.source == "archive" and not config.data_dir:
        raise ValueError("source 'archive' needs data_dir: the cifar-*-python.tar.gz file or "
                         "the folder holding it.")
    if config.strategy not in distribute.STRATEGIES:
        raise ValueError(f"strategy must be one of {distribute.STRATEGIES}, got "
                         f"{config.strategy!r}.")
    if config.lr_scaling not in (None, "linear"):
        raise ValueError(f"lr_scaling must be None or 'linear', got {config.lr_scaling!r}.")
    if config.data_dir and config.source != "tfds" and not Path(config.data_dir).exists():
        raise ValueError(f"data_dir {config.data_dir} does not exist.")
    check_output_dir(config.run_dir())
    check_not_finished(config.run_dir())


def check_output_dir(run_dir):
    """A ValueError when `run_dir` is a file or cannot be created (checked before any work)."""
    existing = next(path for path in (run_dir, *run_dir.parents) if path.exists())
    if not existing.is_dir():
        raise ValueError(f"The output directory {run_dir} cannot be created: {existing} is a "
                         f"file. Pass another --output-dir.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"The output directory {run_dir} cannot be created: no permission to "
                         f"write in {existing}. Pass another --output-dir.")


def check_not_finished(run_dir):
    if (run_dir / "metrics.json").exists() and not (run_dir / "backup").exists():
        raise ValueError(f"{run_dir} already holds a finished run; pass another output "
                         f"directory or delete it to train again.")


@contextlib.contextmanager
def run_lock(run_dir):
    """Holds `run_dir/.lock` for the whole run, so that two processes never train into one
    directory: a second is refused at once, naming the holder's PID. The lock is an advisory
    flock, which the operating system releases when its process ends, so a killed run leaves
    no stale lock. A run that fails before writing anything leaves no directory behind."""
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / ".lock"
    try:
        with open(path, "a+") as file:
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                file.seek(0)
                holder = file.read().strip() or "unknown"
                raise ValueError(
                    f"Another process (PID {holder}) is training in {run_dir}; wait for it to "
                    f"end, or pass another --output-dir.") from None
            file.seek(0)
            file.truncate()
            file.write(f"{os.getpid()}\n")
            file.flush()
            yield
    finally:
        if created and [p.name for p in run_dir.iterdir()] == [".lock"]:
            shutil.rmtree(run_dir, ignore_errors=True)


def resolve_jit_compile(jit_compile):
    """XLA as asked, or by default on GPUs only: on CPUs TensorFlow's XLA convolutions were
    1.4x slower than its oneDNN graph kernels (ResNet-20 training steps, benchmark.py)."""
    if jit_compile is None:
        return bool(tf.config.list_physical_devices("GPU"))
    return jit_compile


def build_and_compile(config, num_classes, synchronized_batch_norm=False):
    """The model of `config` with the paper's optimiser: SGD, Nesterov momentum, weight decay
    as L2 in the layers (gradient term weight_decay * w), in `config.precision`. Keras wraps
    the optimiser in a LossScaleOptimizer under mixed_float16."""
    if config.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {config.precision!r}.")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(config.precision)
    try:
        model = models.FastResNet(
            config.depth, config.variant, num_classes=num_classes, shortcut=config.shortcut,
            drop_path_rate=config.drop_path_rate, weight_decay=config.weight_decay,
            normalization=config.dataset, synchronized_batch_norm=synchronized_batch_norm,
            batch_norm=config.batch_norm)
        model.compile(
            optimizer=keras.optimizers.SGD(config.learning_rate, momentum=config.momentum,
                                           nesterov=True),
            loss=("categorical_crossentropy" if data.mixes_labels(config.extra_augmentation)
                  else "sparse_categorical_crossentropy"),
            metrics=["accuracy"], jit_compile=resolve_jit_compile(config.jit_compile))
    finally:
        keras.config.set_dtype_policy(previous)
    return model


def train(config):
    """Runs (or resumes) one experiment and returns its metrics dict (on every worker; only
    the chief writes outputs)."""
    check_config(config)
    run_dir = config.run_dir()
    strategy = distribute.make_strategy(config.strategy, config.cpu_replicas)
    chief = distribute.is_chief(strategy)
    with run_lock(run_dir) if chief else contextlib.nullcontext():
        check_not_finished(run_dir)  # again: another process may have just finished it
        return _train(config, run_dir, strategy, chief)


def _train(config, run_dir, strategy, chief):
    replicas = strategy.num_replicas_in_sync
    jit_compile = resolve_jit_compile(config.jit_compile)
    if jit_compile and replicas > 1 and config.precision == "mixed_float16":
        raise ValueError(
            "mixed_float16 with XLA on several replicas crashes in Keras's LossScaleOptimizer "
            "(keras-team/keras#21366); use --precision mixed_bfloat16 or --jit-compile off.")
    if jit_compile and replicas > 1 and not tf.config.list_logical_devices("GPU"):
        # Measured here: XLA on CPUs implements no cross-replica collectives (TensorFlow
        # b/194942685), and logical CPU replicas read variables placed on another device.
        raise ValueError(
            "XLA cannot compile a training step that spans several CPU replicas or CPU "
            "workers in TensorFlow; use --jit-compile off (the default on CPUs).")
    backup = Backup(run_dir / "backup", write=chief)
    if chief:
        backup.remove_leftovers()
    stored = backup.stored_experiment()
    seed = run_seed(config, stored, strategy)
    backup.experiment = experiment(config, seed)
    if stored is not None:
        check_same_experiment(stored, backup.experiment, run_dir)
    keras.utils.set_random_seed(seed)
    if config.lr_scaling == "linear":
        config = dataclasses.replace(
            config, learning_rate=config.learning_rate * config.batch_size / PAPER_BATCH_SIZE)
    with strategy.scope():
        # Synchronised BN: the replicas normalise with the global batch's statistics, so
        # N devices train like one device with the same global batch, and the workers' BN
        # moving averages stay identical.
        model = build_and_compile(config, len(data.CLASS_NAMES[config.dataset]),
                                  synchronized_batch_norm=replicas > 1)
    trainer = distribute.Trainer(model, strategy, data.mixes_labels(config.extra_augmentation),
                                 jit_compile)
    cifar = data.load_cifar(config.dataset, config.source, config.data_dir,
                            synthetic_size=config.synthetic_size, seed=seed)
    train_data = data.TrainingData(cifar.train, config.batch_size, seed, cifar.num_classes,
                                   config.extra_augmentation)
    test_data = data.test_dataset(cifar.test, config.batch_size, cifar.num_classes,
                                  one_hot=data.mixes_labels(config.extra_augmentation))

    if chief:
        run_dir.mkdir(parents=True, exist_ok=True)
        files.remove_leftovers(run_dir)  # history and metrics a killed run was replacing
    finished_epochs = backup.restore(model)
    if finished_epochs and chief:
        # A kill between an epoch's history row and its backup leaves a row the run redoes.
        callbacks.truncate_history(run_dir / "history.csv", finished_epochs)
        print(f"Resuming {run_dir} after epoch {finished_epochs}.", flush=True)
    timer = callbacks.EpochTimer(len(cifar.train.labels))
    verbose = config.verbose if config.verbose is not None else (1 if sys.stdout.isatty() else 2)
    # Order matters: the schedule and the timer add to the epoch logs that the history file
    # records, and the backup is taken after the history row is written.
    outputs = [callbacks.HistoryCSV(run_dir / "history.csv"),
               keras.callbacks.TensorBoard(run_dir / "tensorboard", profile_batch=0)]
    trainer.fit(train_data, test_data, config.epochs, initial_epoch=finished_epochs,
                verbose=verbose if chief else 0, callbacks=[
                    callbacks.paper_schedule(config.epochs, config.learning_rate), timer,
                    *(outputs if chief else []), keras.callbacks.TerminateOnNaN(), backup])
    if model.stop_training:
        raise RunFailed(
            f"Training stopped in epoch {finished_epochs + len(timer.epoch_seconds)} of "
            f"{config.epochs}: the loss became NaN or infinite. Lower the learning rate or "
            f"check the data; the history is in {run_dir}.")

    test = trainer.evaluate(test_data)
    history = callbacks.read_history(run_dir / "history.csv") if chief else []
    # Resumed after the last epoch, this process timed nothing: the history file has the times.
    seconds = timer.epoch_seconds or [float(row["epoch_seconds"]) for row in history]
    timed = callbacks.timed_epochs(seconds) or [math.nan]
    mean_seconds = sum(timed) / len(timed)
    metrics = {
        "test_error": 1.0 - test["accuracy"],
        "test_loss": test["loss"],
        "mean_epoch_seconds": mean_seconds,
        "images_per_second": len(cifar.train.labels) / mean_seconds,
        "timed_epochs": len(timed),
        "train_images": len(cifar.train.labels),
        "test_images": len(cifar.test.labels),
        # Trainable: the count the README's tables and the paper's reference nets give;
        # total adds each BN's moving mean and variance.
        "trainable_parameters": sum(math.prod(w.shape) for w in model.trainable_weights),
        "total_parameters": model.count_params(),
        "replicas": replicas,
        "outputs": str(run_dir) if chief else None,
        **{key: value for key, value in dataclasses.asdict(config).items()
           if key not in ("verbose", "output_dir")},
        "seed": seed,
        "versions": versions(),
        "device": describe_device(),
    }
    if chief:
        write_outputs(model, config, metrics, history)
    return metrics


# The settings that define an experiment: a run is only ever continued with the same ones.
# (How it runs - strategy, XLA, the BN implementation, verbosity - may change.)
EXPERIMENT_FIELDS = ("dataset", "source", "synthetic_size", "depth", "variant", "shortcut",
                     "epochs", "batch_size", "learning_rate", "lr_scaling", "momentum",
                     "weight_decay", "drop_path_rate", "extra_augmentation", "precision")


def experiment(config, seed):
    """The settings of `config` that define its experiment, with its seed, as stored (JSON)."""
    settings = {field: getattr(config, field) for field in EXPERIMENT_FIELDS}
    if config.source != "synthetic":
        del settings["synthetic_size"]
    return json.loads(json.dumps({**settings, "seed": seed}))


def run_seed(config, stored, strategy):
    """The seed of the run: the one stored with the backup of a run being continued, else
    --seed, else one drawn now (the same on every worker of a cluster). Weights, data order
    and augmentation all follow from it, so a continued run sees what an uninterrupted one
    would."""
    if stored is not None and config.seed is None:
        return stored["seed"]
    if config.seed is not None:
        return config.seed
    return distribute.agree_on_seed(strategy, random.SystemRandom().randrange(2 ** 31))


def check_same_experiment(stored, current, run_dir):
    """A ValueError naming every setting in which `current` differs from the unfinished run
    stored in `run_dir`, and what to do."""
    changed = [f"{field} {stored[field]!r} -> {current.get(field)!r}" for field in stored
               if stored[field] != current.get(field)]
    if changed:
        raise ValueError(
            f"{run_dir} holds an unfinished run of another experiment ({'; '.join(changed)}). "
            f"To continue it, run the command that started it (its settings are in "
            f"{run_dir / 'backup' / 'epoch-*' / 'state.json'}); for a new experiment, pass "
            f"another --output-dir.")


def write_outputs(model, config, metrics, history):
    """The chief's end of a run: model, metrics, plot, export; then the backup goes, which
    marks the run finished."""
    run_dir = config.run_dir()
    model.save(run_dir / "model.keras")
    if config.export:
        metrics["export_dir"] = str(export_saved_model(model, run_dir / "export"))
        print(f"Exported a SavedModel to {metrics['export_dir']}", flush=True)
    write_json(run_dir / "metrics.json", metrics)
    plots.plot_runs([(f"ResNet-{config.depth} {config.variant}", history)],
                    run_dir / "error_curve.png", train_error=True,
                    title=f"{config.dataset}, ResNet-{config.depth} {config.variant}")
    shutil.rmtree(run_dir / "backup", ignore_errors=True)


def write_json(path, content):
    temporary = files.temporary_sibling(Path(path))
    temporary.write_text(json.dumps(content, indent=2, default=str) + "\n")
    os.replace(temporary, path)


def versions():
    import tensorflow_datasets as tfds
    import keras_fastres
    return {"keras_fastres": keras_fastres.__version__, "keras": keras.__version__,
            "tensorflow": tf.__version__, "tensorflow_datasets": tfds.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def describe_device():
    """The accelerators TensorFlow sees, or the CPU model and core count."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        names = [tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
                 for gpu in gpus]
        return f"{len(gpus)} x GPU: {', '.join(sorted(set(names)))}"
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo
                         if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"CPU: {model}, {os.cpu_count()} cores"


def parse_args(defaults, argv=None, choose_dataset=False):
    """The recipes' command line; `defaults` is the recipe's TrainConfig. `choose_dataset` adds
    --dataset (fastres-train)."""
    parser = argparse.ArgumentParser(
        prog=program("keras_fastres.training") if choose_dataset else None,
        description=f"Train a CIFAR ResNet on "
                    f"{'CIFAR-10 or CIFAR-100' if choose_dataset else defaults.dataset} with "
                    f"the paper's recipe. A killed run continues from its last finished epoch "
                    f"when the same command is run again.",
        formatter_class=HelpFormatter)
    if choose_dataset:
        parser.add_argument("--dataset", choices=data.DATASETS, default=defaults.dataset,
                            help="the data set, and its mean and std in the model")
    parser.add_argument("--depth", type=int, default=defaults.depth, help="6n+2")
    parser.add_argument("--variant", choices=sorted(models.BLOCKS), default=defaults.variant,
                        help="type1: FastResNet; preact: the paper's baseline; type2: its "
                             "ablation; v1: the original ResNet")
    parser.add_argument("--shortcut", choices=models.SHORTCUTS, default=defaults.shortcut,
                        help="at stride-2 blocks: A zero-pads, B projects (1x1 convolution)")
    parser.add_argument("--epochs", type=int, default=defaults.epochs,
                        help="the learning rate drops 10x at 50%% and 75%% of them")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size,
                        help="the global batch (over all replicas)")
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate,
                        help="SGD with Nesterov momentum 0.9, weight decay 1e-4")
    parser.add_argument("--drop-path-rate", type=float, default=defaults.drop_path_rate,
                        help="stochastic depth, last block's drop rate (0: off)")
    parser.add_argument("--extra-augmentation", nargs="*", choices=data.EXTRA_AUGMENTATIONS,
                        default=list(defaults.extra_augmentation),
                        help="beyond the paper's crop and flip (default: none)")
    parser.add_argument("--precision", choices=PRECISIONS, default=defaults.precision,
                        help="mixed_bfloat16: bf16 activations (fast on CPUs with AMX-BF16); "
                             "mixed_float16: fp16 with loss scaling (GPUs)")
    parser.add_argument("--batch-norm", choices=batch_norm.IMPLEMENTATIONS,
                        default=defaults.batch_norm,
                        help="auto: TensorFlow's fused kernel; keras: Keras's layer")
    parser.add_argument("--jit-compile", choices=("auto", "on", "off"), default="auto",
                        help="XLA; auto: on with GPUs, off on CPUs")
    parser.add_argument("--strategy", choices=distribute.STRATEGIES, default=defaults.strategy,
                        help="auto: all local GPUs when there are several; multi-worker: "
                             "configured by TF_CONFIG")
    parser.add_argument("--cpu-replicas", type=positive_integer, default=None,
                        help="with --strategy mirrored and no GPUs: that many logical CPU "
                             "devices (to try data parallelism); default: none")
    parser.add_argument("--lr-scaling", choices=("none", "linear"), default="none",
                        help="linear: learning rate x batch size / 128 (the batch is global)")
    parser.add_argument("--source", choices=data.SOURCES, default=defaults.source,
                        help="tfds: downloads CIFAR on first use; archive: the official "
                             "cifar-*-python.tar.gz in --data-dir; synthetic: random images")
    parser.add_argument("--synthetic", action="store_true",
                        help="shorthand for --source synthetic (smoke runs and benchmarks only)")
    parser.add_argument("--synthetic-size", type=positive_integer, nargs=2,
                        metavar=("TRAIN", "TEST"), default=list(defaults.synthetic_size),
                        help="images of the synthetic source")
    parser.add_argument("--data-dir", default=defaults.data_dir,
                        help="TFDS data_dir (None: TFDS's default, ~/tensorflow_datasets), or "
                             "the CIFAR python archive / its folder")
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help="fixes weights, data order and augmentation (None: one is drawn "
                             "and stored with the run)")
    parser.add_argument("--output-dir", default=None,
                        help="None: runs/<dataset>[-synthetic]-resnet<depth>-<variant>"
                             "[-seed<seed>]")
    parser.add_argument("--export", action="store_true",
                        help="write a SavedModel for serving at the end (default: no)")
    parser.add_argument("--compare", nargs="+", metavar="RUN_DIR",
                        help="plot the test error of finished runs on one figure and exit")
    args = parser.parse_args(argv)
    if args.compare:
        return args
    return dataclasses.replace(
        defaults, dataset=getattr(args, "dataset", defaults.dataset), depth=args.depth,
        variant=args.variant, shortcut=args.shortcut,
        epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
        drop_path_rate=args.drop_path_rate, extra_augmentation=tuple(args.extra_augmentation),
        source="synthetic" if args.synthetic else args.source, data_dir=args.data_dir,
        synthetic_size=tuple(args.synthetic_size), precision=args.precision,
        batch_norm=args.batch_norm,
        jit_compile={"auto": None, "on": True, "off": False}[args.jit_compile],
        strategy=args.strategy, cpu_replicas=args.cpu_replicas,
        lr_scaling=None if args.lr_scaling == "none" else args.lr_scaling,
        seed=args.seed, output_dir=args.output_dir, export=args.export)


def command(argv=None):
    """fastres-train: the paper's recipe on CIFAR-10 or, with --dataset cifar100, CIFAR-100."""
    return main(TrainConfig(), argv, choose_dataset=True)


def main(defaults, argv=None, choose_dataset=False):
    """Entry point of the recipes (and fastres-train, with `choose_dataset`): parse, train,
    print the result; errors as one clear line."""
    parsed = parse_args(defaults, argv, choose_dataset)
    try:
        if isinstance(parsed, argparse.Namespace):
            figure = Path(parsed.output_dir or ".") / "comparison.png"
            plots.compare_runs(parsed.compare, figure)
            print(f"Wrote {figure}")
            return 0
        metrics = train(parsed)
    except (ValueError, data.DataUnavailableError, RunFailed, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2 if isinstance(error, ValueError) else 1
    except tf.errors.OpError as error:
        message = f"error: TensorFlow: {error.message.splitlines()[0]}"
        if parsed.strategy == "multi-worker":
            # A lost worker aborts every other worker's collectives.
            message += (f"\nIf a worker was lost, start every worker again with the same "
                        f"command: the run continues from its last finished epoch (saved in "
                        f"{parsed.run_dir() / 'backup'}).")
        print(message, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\nInterrupted. Run the same command again to continue from the last finished "
              f"epoch (saved in {parsed.run_dir() / 'backup'}).", file=sys.stderr)
        return 130
    print(f"test error {100 * metrics['test_error']:.2f}%, "
          f"{metrics['mean_epoch_seconds']:.2f} s/epoch "
          f"({metrics['images_per_second']:.0f} images/s) on {metrics['device']}; "
          + (f"outputs in {metrics['outputs']}" if metrics["outputs"] else
             "this worker wrote nothing; the chief wrote the outputs"))
    return 0
