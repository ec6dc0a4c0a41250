"""fastres-evaluate: what a model gets wrong on labelled images, as a report (evaluation/)."""

import argparse
import json
import sys
from pathlib import Path

from keras_fastres.commands.output import Unreadable, run_command
from keras_fastres.utils.console import HelpFormatter, positive_integer, program, quiet_converters

DESCRIPTION = """What a model gets wrong on labelled images: accuracy with its 95% interval,
per-class precision, recall and F1, the most confused classes, the confusion matrix, the most
confident errors as images (and all of them as CSV), calibration; with --compare, where two
models disagree."""


def default_output(model, data):
    """evaluation/ in a run (evaluated on its own test split), else evaluation-<name> beside
    the model: never inside a served model's folder."""
    model = Path(model)
    if data is None and (model / "metrics.json").is_file():
        return model / "evaluation"
    return model.parent / f"evaluation-{model.name}"


def build_parser():
    """The command's argument parser (its --help, and the CLI reference)."""
    parser = argparse.ArgumentParser(prog=program("keras_fastres.commands.evaluate"),
                                     formatter_class=HelpFormatter, description=DESCRIPTION)
    parser.add_argument("model", metavar="MODEL",
                        help="what fastres-predict reads: a training run's dir, a .keras file, "
                             "a SavedModel or its base, a model.onnx or model.tflite")
    parser.add_argument("data", metavar="DATA", nargs="?",
                        help="a folder of class folders (with train/ and test/: its test "
                             "split), a finished run's dir (its test split), or cifar10, "
                             "cifar100, tfds:NAME (the test split); default: MODEL when it is a "
                             "run")
    parser.add_argument("--output", metavar="DIR",
                        help="where the report goes; default: evaluation/ in the run, else "
                             "evaluation-<name> beside the model")
    parser.add_argument("--compare", metavar="MODEL2",
                        help="a second model evaluated on the same images: where they disagree")
    parser.add_argument("--json", action="store_true",
                        help="print the numbers as JSON (metrics.json's keys) instead of text")
    parser.add_argument("--batch-size", type=positive_integer, default=256,
                        help="images prepared and classified at a time")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.data is None and not (Path(args.model) / "metrics.json").is_file():
        parser.error(f"give DATA: {args.model} is not a training run, whose test split would "
                     f"be the default")
    data = args.data or args.model
    output = Path(args.output) if args.output else default_output(args.model, args.data)

    def report():
        from keras_fastres.evaluation import evaluate
        from keras_fastres.evaluation.report import summary_text, write_report
        unreadable = Unreadable()  # named by the first model (the second skips them too)

        source = data
        if (Path(data) / "metrics.json").is_file():  # a run: its test split, as it loaded it
            from keras_fastres.training.run import run_data
            source = run_data(data)
        evaluation = evaluate(args.model, source, batch_size=args.batch_size,
                              on_error=unreadable)
        compare = None
        if args.compare:
            compare = evaluate(args.compare, source, batch_size=args.batch_size,
                               on_error=lambda path, message: None)
        write_report(evaluation, output, compare)
        if args.json:
            print(json.dumps(evaluation.summary(), indent=1))
        else:
            print(summary_text(evaluation, compare))
            print(f"Report in {output}")
        unreadable.check(f"{len(unreadable.paths)} images", "evaluated above")
    return run_command(quiet_converters()(report))


if __name__ == "__main__":
    sys.exit(main())
