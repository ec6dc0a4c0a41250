"""fastres-export: a trained FastResNet (a recipe run or a .keras file) as a SavedModel, an
ONNX model (float or int8) or a LiteRT model (float or int8), in the versioned layout servers
read (serving/export.py, serving/compact.py)."""

import argparse
import sys
from pathlib import Path

from keras_fastres.commands.output import run_command
from keras_fastres.models import MODEL_FILE, load_model
from keras_fastres.serving.compact import (
    CALIBRATION_IMAGES,
    LITERT_FILE,
    MAX_ACCURACY_DROP,
    QUANTIZATIONS,
)
from keras_fastres.serving.export import FORMATS, ONNX_FILE, export_onnx, export_saved_model
from keras_fastres.utils.console import HelpFormatter, positive_integer, program, quiet_converters
from keras_fastres.utils.machine import require_tensorflow_backend


def build_parser():
    """The command's argument parser (its --help, and the CLI reference)."""
    parser = argparse.ArgumentParser(
        prog=program("keras_fastres.commands.export"), formatter_class=HelpFormatter,
        description="Export a trained FastResNet for serving: a SavedModel (TF Serving), an "
                    "ONNX model (onnxruntime, Triton) or a LiteRT model (phones, "
                    "microcontrollers); ONNX and LiteRT also quantized to int8.")
    parser.add_argument("--model", required=True,
                        help=f"a recipe run directory (holding {MODEL_FILE}) or a .keras file")
    parser.add_argument("--export-dir", required=True,
                        help="base directory; the SavedModel goes to <export-dir>/<version>/, "
                             f"the ONNX model to <export-dir>/<version>/{ONNX_FILE}, the "
                             f"LiteRT model to <export-dir>/<version>/{LITERT_FILE}")
    parser.add_argument("--version", type=positive_integer, default=None,
                        help="version number, 1 or more (default: the next free one)")
    parser.add_argument("--format", choices=FORMATS, default="saved_model",
                        help="saved_model (TF Serving), onnx (needs the onnx extra) or litert "
                             "(.tflite)")
    parser.add_argument("--quantize", choices=QUANTIZATIONS, default=None,
                        help="with onnx or litert: static int8 quantization, calibrated on "
                             "the run's training images and checked on its test split "
                             "(--model must be a run directory)")
    parser.add_argument("--calibration-images", type=positive_integer,
                        default=CALIBRATION_IMAGES,
                        help="with --quantize: training images the ranges are calibrated on "
                             "(drawn with seed 0)")
    parser.add_argument("--max-accuracy-drop", type=float, default=MAX_ACCURACY_DROP,
                        help="with --quantize: test error points the int8 model may lose "
                             "against the float one; more, and nothing is written")
    parser.add_argument("--no-fold", action="store_true",
                        help="keep every BatchNorm (default: fold those that follow a "
                             "convolution into it; always folded with --format litert or "
                             "--quantize)")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quantize and args.format == "saved_model":
        parser.error("--quantize is for --format onnx or litert")
    if args.quantize and not (Path(args.model) / "metrics.json").is_file():
        parser.error(f"--quantize calibrates on the training images of a finished run: give "
                     f"its directory (holding metrics.json and {MODEL_FILE}), not {args.model}")
    if not 0 <= args.max_accuracy_drop < float("inf"):
        parser.error(f"--max-accuracy-drop must be 0 or more points, got "
                     f"{args.max_accuracy_drop}")

    def export():
        require_tensorflow_backend("Export")
        model = load_model(args.model)
        version = "auto" if args.version is None else args.version
        if args.quantize or args.format == "litert":
            from keras_fastres.serving.compact import export_compact
            from keras_fastres.training.run import run_data
            data = run_data(args.model) if args.quantize else None
            # The comparison of a quantized model with the float one is logged (shown).
            target, _ = export_compact(
                model, args.export_dir, data, args.format, args.quantize, version,
                args.calibration_images, args.max_accuracy_drop)
        elif args.format == "onnx":
            target = export_onnx(model, args.export_dir, fold_batch_norm=not args.no_fold,
                                 version=version)
        else:
            target = export_saved_model(model, args.export_dir, version,
                                        fold_batch_norm=not args.no_fold)
        print(f"Wrote {target}")
    return run_command(quiet_converters()(export))


if __name__ == "__main__":
    sys.exit(main())
