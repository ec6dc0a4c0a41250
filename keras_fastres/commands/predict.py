"""fastres-predict: the top classes of image files by any model the package writes (a
SavedModel, ONNX, LiteRT, a run or a .keras file), without a server (serving/predict.py)."""

import argparse
import sys

from keras_fastres.commands.output import Unreadable, run_command
from keras_fastres.serving.predict import predict
from keras_fastres.utils.console import HelpFormatter, positive_integer, program, quiet_converters


def build_parser():
    """The command's argument parser (its --help, and the CLI reference)."""
    parser = argparse.ArgumentParser(prog=program("keras_fastres.commands.predict"),
                                     formatter_class=HelpFormatter,
                                     description="Top classes of image files.")
    parser.add_argument("export_dir", metavar="MODEL",
                        help="a SavedModel or its versioned base dir, a model.onnx or "
                             "model.tflite (or its version or base dir), a training run's dir "
                             "or a .keras file")
    parser.add_argument("images", nargs="+", help="image files (JPEG, PNG, WebP, TIFF...), "
                                                  "any size")
    parser.add_argument("--top", type=positive_integer, default=3,
                        help="how many classes to print per image")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)

    def show_predictions():
        unreadable = Unreadable()
        # One image: its error is the one line; several: each named, the others classified.
        for path, classes in predict(args.export_dir, args.images, args.top,
                                     on_error=unreadable if len(args.images) > 1 else None):
            print(f"{path}: " + ", ".join(f"{name} {100 * p:.1f}%" for name, p in classes))
        unreadable.check(f"{len(unreadable.paths)} of {len(args.images)} images",
                         "classified above")
    return run_command(quiet_converters()(show_predictions))


if __name__ == "__main__":
    sys.exit(main())
