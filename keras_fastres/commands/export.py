"""fastres-export: a trained FastResNet (a recipe run or a .keras file) as a SavedModel or an
ONNX model, in TF Serving's versioned layout (serving/export.py)."""

import argparse
import sys

from keras_fastres.commands.output import run_command
from keras_fastres.console import HelpFormatter, positive_integer, program
from keras_fastres.machine import require_tensorflow_backend
from keras_fastres.models import MODEL_FILE, load_model
from keras_fastres.serving.export import FORMATS, ONNX_FILE, export_onnx, export_saved_model


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog=program("keras_fastres.commands.export"), formatter_class=HelpFormatter,
        description="Export a trained FastResNet for serving: a SavedModel (TF Serving) or an "
                    "ONNX model (onnxruntime, Triton).")
    parser.add_argument("--model", required=True,
                        help=f"a recipe run directory (holding {MODEL_FILE}) or a .keras file")
    parser.add_argument("--export-dir", required=True,
                        help="base directory; the SavedModel goes to <export-dir>/<version>/, "
                             f"the ONNX model to <export-dir>/<version>/{ONNX_FILE}")
    parser.add_argument("--version", type=positive_integer, default=None,
                        help="version number, 1 or more (default: the next free one)")
    parser.add_argument("--format", choices=FORMATS, default="saved_model",
                        help="saved_model (TF Serving) or onnx (needs the onnx extra)")
    parser.add_argument("--no-fold", action="store_true",
                        help="keep every BatchNorm (default: fold those that follow a "
                             "convolution into it)")
    args = parser.parse_args(argv)

    def export():
        require_tensorflow_backend("Export")
        model = load_model(args.model)
        version = "auto" if args.version is None else args.version
        if args.format == "onnx":
            target = export_onnx(model, args.export_dir, fold_batch_norm=not args.no_fold,
                                 version=version)
        else:
            target = export_saved_model(model, args.export_dir, version,
                                        fold_batch_norm=not args.no_fold)
        print(f"Wrote {target}")
    return run_command(export)


if __name__ == "__main__":
    sys.exit(main())
