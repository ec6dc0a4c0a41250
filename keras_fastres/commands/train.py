"""fastres-train and the recipes: the training command line, derived from `TrainConfig`.

Every option is a TrainConfig field whose metadata says `option` (training/config.py): its name is the
field's (`--batch-size` for batch_size), its default the recipe's value, its help and choices
the field's. --compare is the one option that is not a setting: it plots finished runs.
"""

import argparse
import dataclasses
import sys
from pathlib import Path

from keras_fastres.commands.output import progress_bar, run_command
from keras_fastres.errors import is_tensorflow_error
from keras_fastres.training.compare import PlotNotWritten, compare_runs
from keras_fastres.training.config import TrainConfig, option_name, option_word, value_of_word
from keras_fastres.training.run import train
from keras_fastres.utils.console import HelpFormatter, program, quiet_loggers


def auto_or(kind):
    """argparse type: the word "auto" (None), or a value of `kind`."""
    def parse(text):
        return None if text == "auto" else kind(text)
    parse.__name__ = f"auto or {kind.__name__}"  # what argparse's error names
    return parse


def _add_option(parser, field, default):
    meta = field.metadata
    kwargs = {"default": option_word(field, default), "help": meta["help"].replace("%", "%%")}
    if isinstance(field.default, bool):
        kwargs["action"] = "store_true"
    else:
        several = isinstance(field.default, tuple)
        kwargs["choices"] = tuple(meta["cli_values"] or ()) or meta["choices"]
        kind = meta["type"] or (str if several or meta["cli_values"] else type(field.default))
        kwargs["type"] = auto_or(kind) if meta["auto"] else kind  # ranges: check_config's
        if meta["nargs"]:
            kwargs["nargs"] = meta["nargs"]
        if meta["metavar"]:
            kwargs["metavar"] = meta["metavar"]
    parser.add_argument(option_name(field), dest=field.name, **kwargs)
    if meta["shorthand"]:
        flag, value, help_text = meta["shorthand"]
        parser.add_argument(flag, dest=field.name, action="store_const", const=value,
                            help=help_text)


def options(defaults, choose_dataset=False):
    """The settings of `defaults` (a TrainConfig) that the command line takes."""
    return [field for field in dataclasses.fields(defaults) if field.metadata["option"]
            and (choose_dataset or not field.metadata["only_fastres_train"])]


def build_parser(defaults, choose_dataset=False):
    """The recipes' parser, `defaults` (the recipe's TrainConfig) as its defaults;
    `choose_dataset` adds --dataset (fastres-train)."""
    parser = argparse.ArgumentParser(
        prog=program("keras_fastres.commands.train") if choose_dataset else None,
        description=f"Train a FastResNet on "
                    f"{'CIFAR-10, CIFAR-100, a TFDS data set or your own images (--data)' if choose_dataset else defaults.dataset} "
                    f"with the paper's recipe. A killed run continues from its last finished "
                    f"epoch when the same command is run again.",
        formatter_class=HelpFormatter)
    for field in options(defaults, choose_dataset):
        _add_option(parser, field, getattr(defaults, field.name))
    parser.add_argument("--compare", nargs="+", metavar="RUN_DIR",
                        help="print a table of finished runs (test error mean +- std and "
                             "seconds per epoch per configuration, ratio to preact) and plot "
                             "their test error into comparison.png beside the first run (or in "
                             "--output-dir); then exit")
    return parser


def parse_args(defaults, argv=None, choose_dataset=False):
    """The recipes' command line parsed into a copy of `defaults` (see `build_parser`), or the
    parsed arguments of --compare."""
    args = build_parser(defaults, choose_dataset).parse_args(argv)
    if args.compare:
        return args
    return dataclasses.replace(defaults, **{
        field.name: value_of_word(field, getattr(args, field.name))
        for field in options(defaults, choose_dataset)})


def command(argv=None):
    """fastres-train: the paper's recipe on CIFAR-10, CIFAR-100 (--dataset cifar100), a TFDS
    catalog data set (--dataset tfds:NAME) or a folder of images (--data DIR)."""
    return main(TrainConfig(), argv, choose_dataset=True)


def main(defaults, argv=None, choose_dataset=False):
    """Entry point of the recipes (and fastres-train, with `choose_dataset`): parse, train,
    print the result; errors as one clear line (commands/output.py's exit statuses)."""
    parsed = parse_args(defaults, argv, choose_dataset)
    if isinstance(parsed, argparse.Namespace):
        return run_command(lambda: compare(parsed))
    backup = parsed.run_dir() / "backup"

    def advice(error):
        if parsed.strategy == "multi-worker" and is_tensorflow_error(error):
            # A lost worker aborts every other worker's collectives.
            return (f"If a worker was lost, start every worker again with the same command: "
                    f"the run continues from its last finished epoch (saved in {backup}).")
        return ""
    def stopped_hint():
        if (parsed.run_dir() / "metrics.json").exists():  # stopped as it ended: nothing to redo
            return f"The run had finished; its results are in {parsed.run_dir()}."
        return (f"Run the same command again to continue from the last finished epoch (saved "
                f"in {backup}).")
    return run_command(lambda: train_and_report(parsed), advice=advice,
                       stopped_hint=stopped_hint)


def compare(parsed):
    folder = Path(parsed.output_dir) if parsed.output_dir else Path(
        parsed.compare[0]).resolve().parent
    try:
        print(compare_runs(parsed.compare, folder / "comparison.png"))
    except PlotNotWritten as error:
        print(error.table)  # the table first, then the one-line error (exit 1)
        raise
    print(f"Wrote {folder / 'comparison.png'}")


def train_and_report(config):
    progress = (progress_bar(f"Decoding {Path(config.data).expanduser()}")
                if config.data and sys.stdout.isatty() else None)
    with quiet_loggers("absl"):
        metrics = train(config, progress)
    if config.cache_only:
        print(f"{metrics['train_images']:,} training and {metrics['test_images']:,} test images "
              f"{'were already' if metrics['cache'] == 'hit' else 'now'} in the cache: "
              f"{metrics['cache_entry']}")
        return
    print(f"test error {100 * metrics['test_error']:.2f}%, "
          f"{metrics['mean_epoch_seconds']:.2f} s/epoch "
          f"({metrics['images_per_second']:.0f} images/s) on {metrics['device']}; "
          + (f"outputs in {metrics['outputs']}, what it got wrong in "
             f"{metrics['evaluation']}" if metrics["outputs"] else
             "this worker wrote nothing; the chief wrote the outputs"))


if __name__ == "__main__":
    sys.exit(command())
