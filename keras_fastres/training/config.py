"""The training settings, declared once: `TrainConfig`.

Each field carries its default and, in its metadata (`setting`), its help, its choices, whether
the command line takes it, and whether it defines the experiment (a resumed run may not change
it). The command line (commands/train.py), the checks (`check_config`), the settings stored with
a run (run.py's `experiment`) and the README's option table (checked by a test) all follow from
this one declaration: a new setting is one field here plus the code that uses it.

Also here: the model and optimiser a configuration describes (`build_and_compile`), which the
runs and the benchmarks share.
"""

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import keras

from keras_fastres import batch_norm, blocks, models
from keras_fastres.data import (
    EXTRA_AUGMENTATIONS,
    RESIZE_MODES,
    SOURCES,
    TFDS_PREFIX,
    check_dataset_name,
    check_validation_fraction,
    image_size_pair,
    is_cifar,
    mixes_labels,
)
from keras_fastres.preparation import ImagePreparation
from keras_fastres.training import distribute
from keras_fastres.utils.machine import resolve_jit_compile

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
PAPER_BATCH_SIZE = 128  # the reference for --lr-scaling linear
MAX_SEED = 2 ** 32 - 1  # numpy's (and so keras.utils.set_random_seed's) largest seed


def setting(default, help, *, experiment=False, choices=None, cli_values=None, option=True,
            only_fastres_train=False, positive=False, type=None, nargs=None, metavar=None,
            shorthand=None, auto=False):
    """A TrainConfig field and what the command line and the checks need to know of it.

    experiment: a run is only ever continued with the same value (see run.py).
    choices: the valid values (each item's, for a tuple field).
    cli_values: {command-line word: value}, for fields whose values are not words (None,
        True...): e.g. --jit-compile auto|on|off for None|True|False.
    option: False for settings a recipe's TrainConfig sets but the command line does not.
    only_fastres_train: an option of fastres-train only (the recipes fix it).
    positive: an integer >= 1 (each item's, for a tuple field).
    type, nargs, metavar: as argparse's (type: from the default when not given).
    shorthand: (flag, value, help): a flag that sets this field to value.
    auto: the command line also takes the word "auto", for None (chosen by the machine).
    """
    return dataclasses.field(default=default, metadata={
        "help": help, "experiment": experiment, "choices": choices, "cli_values": cli_values,
        "option": option, "only_fastres_train": only_fastres_train, "positive": positive,
        "type": type, "nargs": nargs, "metavar": metavar, "shorthand": shorthand,
        "auto": auto})


@dataclass
class TrainConfig:
    """One experiment. The defaults are the paper's recipe (He et al.'s ResNet setup).

    Field order is the order of the command line's --help and of the README's option table.
    """

    dataset: str = setting(
        "cifar10", "cifar10, cifar100 (CIFAR's mean and std in the model), or tfds:NAME, an "
        "image classification data set of the TFDS catalog (e.g. tfds:svhn_cropped)",
        experiment=True, only_fastres_train=True)
    data: str | None = setting(
        None, "a folder of your own images instead: DIR/<class>/<images>, or "
        "DIR/train/<class>/... and DIR/test/<class>/...", experiment=True,
        only_fastres_train=True, type=str, metavar="DIR")
    image_size: tuple = setting(
        (32,), "with --data or tfds:NAME: every image resized to H x W (one number: square)",
        experiment=True, only_fastres_train=True, positive=True, type=int, nargs="+",
        metavar=("H", "W"))
    validation_fraction: float = setting(
        0.1, "with --data DIR/<class>/... or a TFDS set without a test split: the part of each "
        "class held out as the test split (the same files in every run)", experiment=True,
        only_fastres_train=True)
    train_split: str = setting("train", "with tfds:NAME: the TFDS split to train on",
                               experiment=True, only_fastres_train=True)
    test_split: str = setting(
        "test", "with tfds:NAME: the split to test on (none named test: a hold-out)",
        experiment=True, only_fastres_train=True)
    no_flip: bool = setting(
        False, "no horizontal flips in the augmentation: for images a mirror changes "
        "(digits, text, some medical images)", experiment=True, only_fastres_train=True)
    init_from: str | None = setting(
        None, "fine-tune: start from the weights of a finished run (RUN_DIR) or a .keras file; "
        "another class count replaces the classifier", experiment=True,
        only_fastres_train=True, type=str, metavar="RUN_DIR|MODEL.keras")
    max_memory: float | None = setting(
        None, "with --data: GiB the decoded images may take (N x H x W x 3 bytes); default: "
        "half of the machine's memory; a larger set is read from the cache's memory-mapped file "
        "a batch at a time", only_fastres_train=True, type=float, metavar="GIB")
    resize: str = setting(
        "stretch", "with --data: stretch (the whole image to the size, any aspect), crop (the "
        "centred window of the size's aspect), pad (the whole image, letterboxed on black); "
        "kept in the model, so predict and the exports resize the same way", experiment=True,
        only_fastres_train=True, choices=RESIZE_MODES)
    cache_dir: str | None = setting(
        None, "with --data: where the decoded folder is kept for later runs on the same files; "
        "default: $KERAS_FASTRES_CACHE, else $XDG_CACHE_HOME/keras_fastres, else "
        "~/.cache/keras_fastres", only_fastres_train=True, type=str, metavar="DIR")
    cache_only: bool = setting(
        False, "with --data: decode the folder into the cache and exit without training (once "
        "for all the workers of a cluster)", only_fastres_train=True)
    depth: int = setting(110, "6n+2", experiment=True)
    variant: str = setting(
        "type1", "type1: FastResNet; preact: the paper's baseline; type2: its ablation; v1: "
        "the original ResNet", experiment=True, choices=tuple(sorted(models.BLOCKS)))
    shortcut: str = setting(
        "A", "at stride-2 blocks: A zero-pads, B projects (1x1 convolution)", experiment=True,
        choices=blocks.SHORTCUTS)
    epochs: int = setting(160, "the learning rate drops 10x at 50% and 75% of them",
                          experiment=True, positive=True)
    batch_size: int = setting(128, "the global batch (over all replicas)", experiment=True,
                              positive=True)
    learning_rate: float = setting(  # divided by 10 at 50% and 75% of the epochs
        0.1, "SGD with Nesterov momentum 0.9, weight decay 1e-4", experiment=True)
    momentum: float = setting(0.9, "Nesterov momentum", experiment=True, option=False)
    weight_decay: float = setting(1e-4, "L2, as the gradient term weight_decay * w",
                                  experiment=True, option=False)
    drop_path_rate: float = setting(0.0, "stochastic depth, last block's drop rate (0: off)",
                                    experiment=True)
    extra_augmentation: tuple = setting(
        (), "beyond the paper's crop and flip (default: none)", experiment=True,
        choices=EXTRA_AUGMENTATIONS, nargs="*")
    precision: str = setting(
        "float32", "mixed_bfloat16: bf16 activations (fast on CPUs with AMX-BF16); "
        "mixed_float16: fp16 with loss scaling (GPUs)", experiment=True, choices=PRECISIONS)
    batch_norm: str = setting("auto", "auto: TensorFlow's fused kernel; keras: Keras's layer",
                              choices=batch_norm.IMPLEMENTATIONS)
    jit_compile: bool | None = setting(
        None, "XLA; auto: on with GPUs, off on CPUs",
        cli_values={"auto": None, "on": True, "off": False})
    steps_per_execution: int | None = setting(
        None, "training steps per compiled call; auto: 1 on CPUs, 16 with GPUs", positive=True,
        type=int, auto=True)
    data_placement: str = setting(
        "auto", "host: batches from tf.data; device: the training split copied to the "
        "accelerator once and cropped and flipped there (the same images); auto: device with "
        "an accelerator when the split fits, host otherwise", choices=("auto", "host", "device"))
    strategy: str = setting(
        "auto", "auto: all local GPUs when there are several; multi-worker: configured by "
        "TF_CONFIG", choices=distribute.STRATEGIES)
    cluster_timeout: int = setting(
        300, "with --strategy multi-worker: seconds to wait for every worker of TF_CONFIG to "
        "start", positive=True)
    cpu_replicas: int | None = setting(
        None, "with --strategy mirrored and no GPUs: that many logical CPU devices (to try "
        "data parallelism); default: none", positive=True, type=int)
    lr_scaling: str | None = setting(
        None, "linear: learning rate x batch size / 128 (the batch is global)",
        experiment=True, cli_values={"none": None, "linear": "linear"})
    source: str = setting(
        "tfds", "tfds: downloads CIFAR on first use; archive: the official "
        "cifar-*-python.tar.gz in --data-dir; synthetic: random images", experiment=True,
        choices=SOURCES, shorthand=(
            "--synthetic", "synthetic",
            "shorthand for --source synthetic (smoke runs and benchmarks only)"))
    synthetic_size: tuple = setting(
        (1024, 256), "images of the synthetic source", experiment=True, positive=True,
        type=int, nargs=2, metavar=("TRAIN", "TEST"))
    data_dir: str | None = setting(
        None, "TFDS data_dir (None: TFDS's default, ~/tensorflow_datasets), or the CIFAR "
        "python archive / its folder", type=str)
    seed: int | None = setting(  # stored with the run as the experiment's "seed"
        None, "fixes weights, data order and augmentation (None: one is drawn and stored "
        "with the run)", type=int)
    output_dir: str | None = setting(
        None, "None: runs/<dataset>[-synthetic]-resnet<depth>-<variant>[-seed<seed>]",
        type=str)
    export: bool = setting(False, "write a SavedModel for serving at the end (default: no)")
    verbose: int | None = setting(
        None, "None: a progress bar on a terminal, one line per epoch otherwise", option=False)

    def data_name(self) -> str:
        """What the run trains on: the --data folder's name, tfds:NAME, or cifar10/cifar100."""
        return Path(self.data).resolve().name if self.data else self.dataset

    def run_dir(self) -> Path:
        if self.output_dir:
            return Path(self.output_dir)
        source = "-synthetic" if self.source == "synthetic" else ""
        seed = f"-seed{self.seed}" if self.seed is not None else ""
        name = self.data_name().replace(TFDS_PREFIX, "tfds-").replace("/", "-")
        return Path("runs") / f"{name}{source}-resnet{self.depth}-{self.variant}{seed}"


def experiment_fields(config):
    """The settings that define an experiment: a run is only ever continued with the same
    ones. (How it runs - strategy, XLA, the BN implementation, verbosity - may change.)"""
    return tuple(f.name for f in dataclasses.fields(config) if f.metadata["experiment"])


def option_name(field):
    return "--" + field.name.replace("_", "-")


def option_word(field, value):
    """How the command line writes a setting's value (`value_of_word` undoes it): the word
    for a `cli_values` setting, a list for a tuple, the value itself otherwise."""
    words = field.metadata["cli_values"]
    if words:
        return next(word for word, meant in words.items() if meant == value)
    if field.metadata["auto"] and value is None:
        return "auto"
    return list(value) if isinstance(field.default, tuple) else value


def value_of_word(field, word):
    """The setting's value for what the command line parsed."""
    words = field.metadata["cli_values"]
    if words:
        return words[word]
    return tuple(word) if isinstance(field.default, tuple) else word


def check_config(config):
    """The configuration's errors, before any data is read, as one ValueError each: every
    setting against its declared choices and ranges, then what depends on several of them.
    (The model checks its own arguments too; the run directory is checked by run.py.)"""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        several = isinstance(field.default, tuple)
        items = value if several else (value,)
        meta = field.metadata
        allowed = meta["choices"] or (meta["cli_values"] and tuple(meta["cli_values"].values()))
        if allowed and any(item not in allowed for item in items):
            raise ValueError(f"{field.name} must be {'taken from' if several else 'one of'} "
                             f"{allowed}, got {value!r}.")
        if meta["positive"] and not (field.default is None and value is None):
            for item in items:
                if isinstance(item, bool) or not isinstance(item, int) or item < 1:
                    raise ValueError(f"{field.name} must be a positive integer, got {value!r}.")
    batch_norm.check_implementation(config.batch_norm)  # and that it runs on this backend
    models.blocks_per_stage(config.depth)
    blocks.check_weight_decay(config.weight_decay)
    if not (isinstance(config.learning_rate, (int, float)) and 0 < config.learning_rate < math.inf):
        raise ValueError(f"learning_rate must be a positive number, got "
                         f"{config.learning_rate!r}.")
    if config.seed is not None and not (
            not isinstance(config.seed, bool) and isinstance(config.seed, int)
            and 0 <= config.seed <= MAX_SEED):
        raise ValueError(f"seed must be an integer from 0 to {MAX_SEED}, got {config.seed!r}.")
    blocks.check_drop_path_rate(config.drop_path_rate)
    check_dataset_name(config.dataset)
    _check_data_settings(config)
    if config.source == "archive" and not config.data_dir:
        raise ValueError("source 'archive' needs data_dir: the cifar-*-python.tar.gz file or "
                         "the folder holding it.")
    if config.data_dir and config.source != "tfds" and not Path(config.data_dir).exists():
        raise ValueError(f"data_dir {config.data_dir} does not exist.")
    if config.cpu_replicas and config.strategy != "mirrored":
        raise ValueError("cpu_replicas is for strategy 'mirrored' only.")
    if config.data_placement == "device" and config.extra_augmentation:
        raise ValueError("data_placement 'device' crops and flips on the accelerator; the extra "
                         "augmentations run in tf.data on the host: use data_placement 'host' "
                         "(or 'auto') with them.")


def _check_data_settings(config):
    """The data options: each for the source it belongs to, each in its range."""
    own_images = config.data or not is_cifar(config.dataset)
    if config.data:
        if config.dataset != TrainConfig.dataset:
            raise ValueError(f"data and dataset are two data sets; give --data {config.data} "
                             f"or --dataset {config.dataset}, not both.")
        if config.data_dir:
            raise ValueError("data_dir is where TFDS and the CIFAR archives are; --data reads "
                             "its own folder: drop --data-dir.")
        if not Path(config.data).is_dir():
            raise ValueError(f"data {config.data} is not a folder; give a folder of class "
                             f"folders (DIR/<class>/<images>).")
    for name, value in (("resize", config.resize != TrainConfig.resize),
                        ("cache_dir", config.cache_dir), ("cache_only", config.cache_only)):
        if value and not config.data:
            raise ValueError(f"{name} is for --data DIR, a folder of your own images.")
    if own_images and config.source != TrainConfig.source:
        raise ValueError(f"source {config.source!r} is for CIFAR; --data and tfds:NAME read "
                         f"their own images.")
    if image_size_pair(config.image_size) != (32, 32) and not own_images:
        raise ValueError(f"image_size is for --data and tfds:NAME; CIFAR's images are 32x32 "
                         f"(got {list(config.image_size)}).")
    check_validation_fraction(config.validation_fraction)
    if config.max_memory is not None and not 0 < config.max_memory * 2 ** 30 < math.inf:
        raise ValueError(f"max_memory must be a positive, finite number of GiB, got "
                         f"{config.max_memory!r}.")
    if config.init_from and not Path(config.init_from).exists():
        raise ValueError(f"init_from {config.init_from} does not exist; give a finished run's "
                         f"folder (it holds model.keras) or a .keras file.")


def scaled_learning_rate(config):
    """The learning rate the run trains with: the paper's, or with lr_scaling 'linear' that
    times batch_size / 128."""
    if config.lr_scaling == "linear":
        return config.learning_rate * config.batch_size / PAPER_BATCH_SIZE
    return config.learning_rate


def check_parallel_settings(replicas: int, jit_compile: bool, precision: str,
                            gpus: bool) -> None:
    """A ValueError for the combinations of replicas, XLA and precision that cannot train."""
    if jit_compile and replicas > 1 and precision == "mixed_float16":
        raise ValueError(
            "mixed_float16 with XLA on several replicas crashes in Keras's LossScaleOptimizer "
            "(keras-team/keras#21366); use --precision mixed_bfloat16 or --jit-compile off.")
    if jit_compile and replicas > 1 and not gpus:
        # Measured here: XLA on CPUs implements no cross-replica collectives (TensorFlow
        # b/194942685), and logical CPU replicas read variables placed on another device.
        raise ValueError(
            "XLA cannot compile a training step that spans several CPU replicas or CPU "
            "workers in TensorFlow; use --jit-compile off (the default on CPUs).")


def check_last_batches(split_sizes: dict, batch_size: int, replicas: int) -> None:
    """A ValueError when a batch, or the last batch of a split ({name: images}), holds fewer
    images than there are replicas: a replica with no image fails inside TensorFlow."""
    if batch_size < replicas:
        raise ValueError(
            f"--batch-size {batch_size} is smaller than the {replicas} replicas, and each "
            f"replica needs an image of every batch; choose a --batch-size of at least "
            f"{replicas} (a multiple of {replicas} shares it evenly).")
    for split_name, size in split_sizes.items():
        last = size % batch_size
        if 0 < last < replicas:
            raise ValueError(
                f"The last {split_name} batch holds {last} of the {size} images, fewer than "
                f"the {replicas} replicas, and each replica needs one; choose a --batch-size "
                f"that leaves no remainder, or a remainder of at least {replicas}.")


def build_and_compile(config, num_classes, synchronized_batch_norm=False, input_shape=(32, 32, 3),
                      normalization="auto", class_names=None):
    """The model of `config` with the paper's optimiser: SGD, Nesterov momentum, weight decay
    as L2 in the layers (gradient term weight_decay * w), in `config.precision`. Keras wraps
    the optimiser in a LossScaleOptimizer under mixed_float16. The loss is chosen here, once:
    categorical cross-entropy when an extra augmentation mixes labels, sparse otherwise (the
    Trainer takes the compiled one). `normalization` is FastResNet's: "auto" (CIFAR's, by
    the class count), a CIFAR name, or (mean, std) of the training images."""
    if config.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {config.precision!r}.")
    model = models.FastResNet(
        config.depth, config.variant, num_classes=num_classes, shortcut=config.shortcut,
        drop_path_rate=config.drop_path_rate, weight_decay=config.weight_decay,
        input_shape=input_shape, normalization=normalization,
        class_names=class_names, synchronized_batch_norm=synchronized_batch_norm,
        batch_norm=config.batch_norm, dtype=config.precision)
    # How the run's files reached the input size, saved with the model for predict and serving.
    model.preparation = ImagePreparation(tuple(input_shape[:2]), config.resize)
    model.compile(
        optimizer=keras.optimizers.SGD(config.learning_rate, momentum=config.momentum,
                                       nesterov=True),
        loss=(keras.losses.CategoricalCrossentropy() if mixes_labels(config.extra_augmentation)
              else keras.losses.SparseCategoricalCrossentropy()),
        metrics=["accuracy"], jit_compile=resolve_jit_compile(config.jit_compile))
    return model
