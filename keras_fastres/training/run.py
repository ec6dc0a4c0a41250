"""One training run: its directory and lock, its seed, resuming it, training it, its outputs.

A run writes into its output directory:
    history.csv      one row per epoch (callbacks.HistoryCSV)
    metrics.json     test error, seconds per epoch, images/s, the configuration, versions, device
    error_curve.png  train and test error per epoch, like the paper's figures 6-8
    evaluation/      what the model gets wrong on the test split (evaluation/report.py)
    model.keras      the trained model (keras.saving.load_model after `import keras_fastres`)
    export/1/        with `export`: a SavedModel for serving (serving/export.py)
    tensorboard/     TensorBoard logs
    backup/          the last two finished epochs while the run is unfinished (backup.Backup):
                     running the same command again continues from the newest one
A run is finished when its metrics.json exists: it is written last, atomically, and a finished
run is never trained again.
Training runs in distribute.Trainer under a tf.distribute strategy (one device by default);
only the chief writes these outputs.
"""

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import shutil
import sys
import warnings
from pathlib import Path

import keras
import tensorflow as tf

from keras_fastres import callbacks, data
from keras_fastres.data.summary import data_summary, summary_lines
from keras_fastres.errors import (
    FastResWarning,
    Terminated,
    stop_on_sigterm,
    stopped_by,
    summary,
)
from keras_fastres.evaluation import evaluate
from keras_fastres.evaluation.report import write_report
from keras_fastres.models import MODEL_FILE
from keras_fastres.serving.export import export_saved_model
from keras_fastres.training import distribute, plots
from keras_fastres.training.backup import Backup
from keras_fastres.training.config import (
    TrainConfig,
    build_and_compile,
    check_config,
    check_last_batches,
    check_parallel_settings,
    experiment_fields,
    option_word,
    scaled_learning_rate,
    value_of_word,
)
from keras_fastres.training.finetune import check_network, initialize_from
from keras_fastres.training.lock import folder_lock
from keras_fastres.utils import files
from keras_fastres.utils.machine import (
    describe_device,
    require_tensorflow_backend,
    resolve_data_placement,
    resolve_jit_compile,
    resolve_steps_per_execution,
    versions,
)

log = logging.getLogger(__name__)


DATA_IDENTITY = ("class_names", "data_files", "data_content")  # data_identity's keys
FEW_IMAGES = 10  # a class with fewer training images is warned about
SHOWN_SKIPPED_FILES = 100  # of the undecodable files, those metrics.json names


class RunFailed(RuntimeError):
    """Training stopped without a usable model (the loss or a weight became NaN)."""


class RunRefused(RuntimeError):
    """The output directory holds a finished run."""


def check_apart(run_dir, data_dir):
    """A ValueError when the output directory and the --data folder overlap: the run's files
    would become training images of later runs (or its data, its outputs)."""
    output, data_folder = Path(run_dir).resolve(), Path(data_dir).resolve()
    if output == data_folder or data_folder in output.parents:
        raise ValueError(f"The output directory {run_dir} is inside the data folder {data_dir}: "
                         f"the run's files would be read as images by later runs. Pass an "
                         f"--output-dir outside it.")
    if output in data_folder.parents:
        raise ValueError(f"The data folder {data_dir} is inside the output directory {run_dir}; "
                         f"keep them apart: pass another --output-dir.")


def check_output_dir(run_dir):
    """A ValueError when `run_dir` is a file, a broken link, or cannot be created, or its backup
    folder is a link (checked before any work)."""
    if run_dir.is_symlink() and not run_dir.exists():
        raise ValueError(f"The output directory {run_dir} is a symbolic link to nothing (its "
                         f"target is missing, or the link leads to itself). Remove the link, "
                         f"or pass another --output-dir.")
    existing = next(path for path in (run_dir, *run_dir.parents) if path.exists())
    if not existing.is_dir():
        raise ValueError(f"The output directory {run_dir} cannot be created: {existing} is a "
                         f"file. Pass another --output-dir.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"The output directory {run_dir} cannot be created: no permission to "
                         f"write in {existing}. Pass another --output-dir.")
    if (run_dir / "backup").is_symlink():
        raise ValueError(f"{run_dir / 'backup'} is a symbolic link; a run keeps its backup in "
                         f"its own output directory. Remove the link, or pass another "
                         f"--output-dir.")


def check_not_finished(run_dir):
    """RunRefused when `run_dir` holds a finished run: its metrics.json (written last), or a
    model.keras with no backup to continue from (a finished run whose metrics.json was lost:
    a run writes model.keras while its backup is still there, and removes the backup only
    after metrics.json). What killed writers left there is removed first."""
    if (run_dir / "metrics.json").exists():
        files.remove_leftovers(run_dir)  # e.g. half of a backup being removed when killed
        raise RunRefused(f"{run_dir} already holds a finished run; pass another output "
                         f"directory or delete it to train again.")
    if (run_dir / MODEL_FILE).exists() and not Backup(run_dir / "backup").generations():
        raise RunRefused(f"{run_dir} holds a trained {MODEL_FILE} but no metrics.json and no "
                         f"backup to continue from (a finished run whose metrics.json was "
                         f"deleted?); pass another output directory, or delete {MODEL_FILE} "
                         f"to train again.")


def run_lock(run_dir):
    """Holds the run directory for the whole run (lock.folder_lock): a second process is
    refused at once, naming the holder's PID; a killed run leaves no lock behind; a run that
    fails before writing anything leaves no directory behind."""
    return folder_lock(run_dir, f"Another process (PID {{pid}}) is training in {run_dir}; wait "
                                f"for it to end, or pass another --output-dir.")


def train(config: TrainConfig, progress=None) -> dict:
    """Runs (or resumes) one experiment and returns its metrics dict (on every worker; only
    the chief writes outputs). `progress`: None, or `progress(done, total)` told how many
    files of an image folder are decoded (`load_image_folder`). Says what it does through the
    logger "keras_fastres" (INFO) and `FastResWarning`s."""
    require_tensorflow_backend("Training with the recipes")
    check_config(config)
    if config.cache_only:
        return fill_cache(config, progress)
    run_dir = config.run_dir()
    if config.data:
        check_apart(run_dir, config.data)
    check_output_dir(run_dir)
    check_not_finished(run_dir)
    strategy = distribute.make_strategy(config.strategy, config.cpu_replicas,
                                        config.cluster_timeout)
    chief = distribute.is_chief(strategy)
    # After the strategy: TensorFlow's multi-worker runtime installs a SIGTERM handler of its own.
    try:
        with stop_on_sigterm(), run_lock(run_dir) if chief else contextlib.nullcontext():
            check_not_finished(run_dir)  # again: another process may have just finished it
            return _train(config, run_dir, strategy, chief, progress)
    except BaseException as error:
        stop = stopped_by(error)
        if isinstance(stop, Terminated) and chief and (run_dir / "metrics.json").exists():
            files.remove_folder(run_dir / "backup")  # stopped as it ended: finish tidying
        raise


def _train(config, run_dir, strategy, chief, progress):
    """The run in five phases: its seed and backup, its data, its model, training, outputs."""
    backup, seed = _prepare(config, run_dir, strategy, chief)
    if config.init_from:  # before the data is decoded
        check_network(config.init_from, config.depth, config.variant, config.shortcut)
    images = _load_data(config, seed, backup, run_dir, strategy.num_replicas_in_sync, progress)
    normalization = (images.name if data.is_cifar(images.name)
                     else data.channel_statistics(images.train.images))
    # The learning rate trained with; the experiment keeps the one asked for.
    config = dataclasses.replace(config, learning_rate=scaled_learning_rate(config))
    model, trainer, train_data, test_data = _model(config, images, seed, strategy,
                                                   normalization)
    about_data = data_summary(images, normalization)
    finished_epochs, timer, stop = _fit(config, run_dir, chief, backup, model, trainer,
                                        train_data, test_data, images, about_data)
    if model.stop_training:
        raise RunFailed(
            f"Training stopped in epoch {finished_epochs + len(timer.epoch_seconds)} of "
            f"{config.epochs}: {stop.reason}. Lower the learning rate or check the data; the "
            f"history is in {run_dir}.")
    return _finish(config, run_dir, chief, seed, model, trainer, test_data, images, timer,
                   about_data)


def _prepare(config, run_dir, strategy, chief):
    """The run's backup (with the experiment it stores) and its seed; a ValueError when the
    unfinished run in `run_dir` is another experiment or the settings cannot run here."""
    check_parallel_settings(strategy.num_replicas_in_sync, resolve_jit_compile(
        config.jit_compile), config.precision, bool(tf.config.list_logical_devices("GPU")))
    backup = Backup(run_dir / "backup", write=chief)
    if chief:
        backup.remove_leftovers()
    stored = backup.stored_experiment()
    seed = run_seed(config, stored, strategy)
    backup.experiment = experiment(config, seed)
    if stored is not None:
        check_same_experiment(stored, backup.experiment, run_dir)
    return backup, seed


def _load_data(config, seed, backup, run_dir, replicas, progress):
    """The data set `config` names, with its identity added to the stored experiment (a resume
    on other files is refused) and its last batches checked against the replicas."""
    images = data.load(
        config.dataset, folder=config.data, source=config.source, data_dir=config.data_dir,
        image_size=config.image_size, validation_fraction=config.validation_fraction,
        train_split=config.train_split, test_split=config.test_split,
        synthetic_size=config.synthetic_size, seed=seed, progress=progress,
        max_memory=None if config.max_memory is None else int(config.max_memory * 2 ** 30),
        resize=config.resize, cache_dir=config.cache_dir)
    if images.from_disk and config.data_placement == "device":
        raise ValueError("--data-placement device copies the training split to the accelerator, "
                         "and this one is larger than the memory budget (--max-memory); use "
                         "--data-placement auto or host.")
    stored = backup.stored_experiment()
    backup.experiment.update(data_identity(images))
    if stored is not None:
        check_same_experiment(stored, backup.experiment, run_dir, DATA_IDENTITY)
    check_last_batches({"training": len(images.train.labels), "test": len(images.test.labels)},
                       config.batch_size, replicas)
    return images


def fill_cache(config, progress=None):
    """`cache_only`: the folder of `config.data` decoded into the cache (or found there), and
    {"cache": "hit"|"miss", "cache_entry", "train_images", "test_images"}; no training."""
    images = data.load(
        folder=config.data, image_size=config.image_size, resize=config.resize,
        validation_fraction=config.validation_fraction, cache_dir=config.cache_dir,
        progress=progress, max_memory=0)  # nothing read into memory
    return {"cache": images.details.cache, "cache_entry": images.details.cache_entry,
            "train_images": len(images.train.labels), "test_images": len(images.test.labels)}


def run_data(run_dir, progress=None):
    """The data set a finished run trained and tested on, loaded as the run loaded it (a
    folder from the decode-once cache), from the settings in its metrics.json; a ValueError
    when `run_dir` holds no finished run. What the loader warns of (skipped files, small
    classes) was said when the run trained, and is not said again."""
    metrics_file = Path(run_dir) / "metrics.json"
    if not metrics_file.is_file():
        raise ValueError(f"{run_dir} holds no finished run (no metrics.json): give the run "
                         f"directory a training wrote, whose data quantization calibrates on.")
    metrics = json.loads(metrics_file.read_text())
    fields = {field.name: field for field in dataclasses.fields(TrainConfig)}
    settings = {name: value_of_word(fields[name], metrics[name]) for name in DATA_SETTINGS
                if name in metrics}
    config = dataclasses.replace(TrainConfig(), **settings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FastResWarning)
        return data.load(
            TrainConfig.dataset if config.data else metrics["dataset"], folder=config.data,
            source=config.source, data_dir=config.data_dir, image_size=config.image_size,
            validation_fraction=config.validation_fraction, train_split=config.train_split,
            test_split=config.test_split, synthetic_size=config.synthetic_size,
            seed=metrics["seed"], progress=progress, resize=config.resize,
            cache_dir=config.cache_dir)


def _model(config, images, seed, strategy, normalization):
    """The compiled model (`normalization`: CIFAR's published statistics, or those of the
    training split), its trainer, and the training and test data pipelines."""
    keras.utils.set_random_seed(seed)
    replicas = strategy.num_replicas_in_sync
    with strategy.scope():
        # Synchronised BN: the replicas normalise with the global batch's statistics, so
        # N devices train like one device with the same global batch, and the workers' BN
        # moving averages stay identical.
        model = build_and_compile(
            config, images.num_classes, synchronized_batch_norm=replicas > 1,
            input_shape=images.image_shape, class_names=list(images.class_names),
            normalization=normalization)
    trainer = distribute.Trainer(model, strategy, resolve_jit_compile(config.jit_compile))
    mixed = data.mixes_labels(config.extra_augmentation)
    train_data = data.TrainingData(images.train, config.batch_size, seed, images.num_classes,
                                   config.extra_augmentation, flip=not config.no_flip)
    test_data = data.test_dataset(images.test, config.batch_size, images.num_classes,
                                  one_hot=mixed)
    return model, trainer, train_data, test_data


def _fit(config, run_dir, chief, backup, model, trainer, train_data, test_data, images,
         about_data):
    """Trains from the last finished epoch (or fine-tunes a new run's initial weights), after
    logging the data's summary; returns the epochs finished before, the timer and the
    non-finite stop."""
    if chief:
        run_dir.mkdir(parents=True, exist_ok=True)
        files.remove_leftovers(run_dir)  # history and metrics a killed run was replacing
    finished_epochs = backup.restore(model)
    if config.init_from and not finished_epochs:
        log.info(initialize_from(model, config.init_from))
    for line in summary_lines(about_data):
        log.info(line)
    few = {name: a for name, (a, _) in about_data["classes"].items() if a < FEW_IMAGES}
    if few and images.details is not None:  # a folder's classes (CIFAR's have thousands)
        shown = ", ".join(f"{name} ({count})" for name, count in list(few.items())[:5])
        warnings.warn(f"{len(few)} classes have fewer than {FEW_IMAGES} training images: "
                      f"{shown}{', ...' if len(few) > 5 else ''}; their test error says little",
                      FastResWarning, stacklevel=2)
    if finished_epochs and chief:
        # A kill between an epoch's history row and its backup leaves a row the run redoes.
        callbacks.truncate_history(run_dir / "history.csv", finished_epochs)
        log.info("Resuming %s after epoch %d.", run_dir, finished_epochs)
    timer = callbacks.EpochTimer(len(images.train.labels))
    verbose = config.verbose if config.verbose is not None else (1 if sys.stdout.isatty() else 2)
    # Order matters: the schedule and the timer add to the epoch logs that the history file
    # records, and the backup is taken after the history row is written.
    outputs = [callbacks.HistoryCSV(run_dir / "history.csv"),
               keras.callbacks.TensorBoard(run_dir / "tensorboard", profile_batch=0)]
    stop = callbacks.StopOnNonFinite()
    placement = "host" if config.extra_augmentation or images.from_disk else resolve_data_placement(
        config.data_placement, 4 * images.train.images[..., 0].size)  # packed: 4 bytes a pixel
    trainer.fit(train_data, test_data, config.epochs, initial_epoch=finished_epochs,
                verbose=verbose if chief else 0, callbacks=[
                    callbacks.paper_schedule(config.epochs, config.learning_rate),
                    timer, *(outputs if chief else []), stop, backup],
                steps_per_execution=resolve_steps_per_execution(config.steps_per_execution),
                data_placement=placement)
    return finished_epochs, timer, stop


def _finish(config, run_dir, chief, seed, model, trainer, test_data, images, timer, about_data):
    """The test error and the run's metrics; the chief writes the outputs."""
    test = trainer.evaluate(test_data)
    history = callbacks.read_history(run_dir / "history.csv") if chief else []
    # Resumed after the last epoch, this process timed nothing: the history file has the times.
    seconds = timer.epoch_seconds or [float(row["epoch_seconds"]) for row in history]
    timed = callbacks.timed_epochs(seconds) or [math.nan]
    mean_seconds = sum(timed) / len(timed)
    replicas = trainer.strategy.num_replicas_in_sync
    metrics = {
        "test_error": 1.0 - test["accuracy"],
        "test_loss": test["loss"],
        "mean_epoch_seconds": mean_seconds,
        "images_per_second": len(images.train.labels) / mean_seconds,
        "timed_epochs": len(timed),
        "train_images": len(images.train.labels),
        "test_images": len(images.test.labels),
        # Trainable: the count the README's tables and the paper's reference nets give;
        # total adds each BN's moving mean and variance.
        "trainable_parameters": sum(math.prod(w.shape) for w in model.trainable_weights),
        "total_parameters": model.count_params(),
        "class_names": list(images.class_names),
        "skipped_images": len(images.skipped),
        "skipped_files": images.skipped[:SHOWN_SKIPPED_FILES],
        "replicas": replicas,
        "outputs": str(run_dir) if chief else None,
        # As the command line writes them ("auto", "none"), where a setting's value is no word.
        **{field.name: option_word(field, getattr(config, field.name))
           for field in dataclasses.fields(config) if field.name in applicable_settings(config)},
        "dataset": config.data_name(),  # with --data, the folder's name
        "seed": seed,
        "data_summary": about_data,
        "versions": versions(),
        "device": describe_device(),
    }
    if chief:
        write_outputs(model, config, metrics, history, images)
    return metrics


FOLDER_SETTINGS = ("resize", "cache_dir", "cache_only", "max_memory")
DATA_SETTINGS = ("data", "image_size", "validation_fraction", "train_split", "test_split",
                 "source", "synthetic_size", "data_dir", "resize", "cache_dir")
SOURCE_SETTINGS = ("source", "synthetic_size", "data_dir")


def applicable_settings(config):
    """The settings metrics.json records: those that apply to the run's data source (no
    synthetic size or TFDS split in a folder run, no resize mode in a CIFAR run)."""
    if config.data:
        dropped = (*SOURCE_SETTINGS, "train_split", "test_split", "cache_only")
    elif data.is_cifar(config.dataset):
        dropped = (*FOLDER_SETTINGS, "train_split", "test_split", "image_size",
                   "validation_fraction", *(() if config.source == "synthetic"
                                            else ("synthetic_size",)))
    else:
        dropped = (*FOLDER_SETTINGS, "source", "synthetic_size")
    return [field.name for field in dataclasses.fields(config)
            if field.name not in ("verbose", "output_dir", *dropped)]


def experiment(config, seed):
    """The settings of `config` that define its experiment, with its seed, as stored (JSON)."""
    settings = {field: getattr(config, field) for field in experiment_fields(config)}
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


def data_identity(images):
    """What the experiment stores of its data once loaded: the class names and, for a folder,
    which files make up each split (so a resume trains and tests on the same files)."""
    identity: dict[str, object] = {"class_names": list(images.class_names)}
    if images.files_digest:
        identity["data_files"] = images.files_digest
    if images.details is not None:  # the cache entry's key: each file's size and mtime too
        identity["data_content"] = Path(images.details.cache_entry).name
    return identity


def check_same_experiment(stored, current, run_dir, fields=None):
    """A ValueError naming every setting (of `fields`; default: all but the data identity,
    which is checked once the data is loaded) in which `current` differs from the unfinished
    run stored in `run_dir`, and what to do."""
    fields = [f for f in stored if f not in DATA_IDENTITY] if fields is None else [
        f for f in fields if f in stored]
    changed = [f"{field} {stored.get(field)!r} -> {current.get(field)!r}" for field in fields
               if stored.get(field) != current.get(field)]
    if changed:
        raise ValueError(
            f"{run_dir} holds an unfinished run of another experiment ({'; '.join(changed)}). "
            f"To continue it, run the command that started it (its settings are in "
            f"{run_dir / 'backup' / 'epoch-*' / 'state.json'}); for a new experiment, pass "
            f"another --output-dir.")


def write_outputs(model, config, metrics, history, images):
    """The chief's end of a run: model, export, plot, the evaluation report of its test split
    (`images.test`), then metrics.json, which marks the run finished; then the backup goes. Each file appears only when complete, and an error names
    the file it was writing."""
    run_dir = config.run_dir()
    with _naming(run_dir / MODEL_FILE):
        save_model(model, run_dir / MODEL_FILE)
    if config.export:
        export = run_dir / "export" / "1"
        with _naming(export):
            if not export.exists():  # else written by this run before it was killed
                export_saved_model(model, run_dir / "export", version=1)
        metrics["export_dir"] = str(export)
        log.info("Exported a SavedModel to %s", export)
    with _naming(run_dir / "error_curve.png"):
        plots.plot_runs([(f"ResNet-{config.depth} {config.variant}", history)],
                        run_dir / "error_curve.png", train_error=True,
                        title=f"{config.data_name()}, ResNet-{config.depth} {config.variant}")
    with _naming(run_dir / "evaluation"):
        write_report(evaluate(model, images), run_dir / "evaluation")
    metrics["evaluation"] = str(run_dir / "evaluation")
    with _naming(run_dir / "metrics.json"):
        write_json(run_dir / "metrics.json", metrics)
    # Renamed away first: a run stopped midway never holds part of a backup/ (`train` removes
    # what is left when SIGTERM stopped the removal).
    files.remove_folder(run_dir / "backup")


@contextlib.contextmanager
def _naming(path):
    """An OSError (a full disk...) while writing `path` as one line that names it."""
    try:
        yield
    except OSError as error:
        raise OSError(f"Could not write {path}: {summary(error)}. Make room (or fix the folder) and "
                      f"run the same command again: the run continues from its backup.") from None


def save_model(model, path):
    """`model.save(path)`, appearing only when complete (Keras wants the .keras name, so the
    file is written in a hidden folder beside it)."""
    folder = files.temporary_sibling(path)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    try:
        model.save(folder / path.name)
        os.replace(folder / path.name, path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def write_json(path, content):
    with files.replacing(path) as file:
        file.write(json.dumps(content, indent=2, default=str) + "\n")
