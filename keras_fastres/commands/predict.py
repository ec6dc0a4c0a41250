"""fastres-predict: the top classes of image files by an exported SavedModel, without a
server (serving/predict.py)."""

import argparse
import sys

from keras_fastres.commands.output import run_command
from keras_fastres.console import HelpFormatter, positive_integer, program
from keras_fastres.serving.predict import predict


def main(argv=None):
    parser = argparse.ArgumentParser(prog=program("keras_fastres.commands.predict"),
                                     formatter_class=HelpFormatter,
                                     description="Top classes of image files.")
    parser.add_argument("export_dir", help="an exported SavedModel or its versioned base dir")
    parser.add_argument("images", nargs="+", help="PNG/JPEG/GIF/BMP files, any size")
    parser.add_argument("--top", type=positive_integer, default=3,
                        help="how many classes to print per image")
    args = parser.parse_args(argv)

    def show_predictions():
        for path, classes in predict(args.export_dir, args.images, args.top):
            print(f"{path}: " + ", ".join(f"{name} {100 * p:.1f}%" for name, p in classes))
    return run_command(show_predictions)


if __name__ == "__main__":
    sys.exit(main())
