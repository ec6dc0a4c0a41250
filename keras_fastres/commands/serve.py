"""fastres-serve: an exported model (SavedModel, ONNX, LiteRT) served over HTTP with TF Serving's REST API, on
KServe's Python model server (serving/server.py; `pip install "keras-fastres[serve]"`)."""

import argparse
import signal
import sys
import warnings
from pathlib import Path

from keras_fastres.commands.output import run_command
from keras_fastres.errors import Terminated
from keras_fastres.utils.console import (
    HelpFormatter,
    non_negative_integer,
    positive_integer,
    program,
)

DEFAULT_PORT = 8501  # TF Serving's REST port


def build_parser():
    """The command's argument parser (its --help, and the CLI reference)."""
    parser = argparse.ArgumentParser(
        prog=program("keras_fastres.commands.serve"), formatter_class=HelpFormatter,
        description="Serve an exported model (its newest version: SavedModel, ONNX float or "
                    "int8, LiteRT) over HTTP with TF "
                    "Serving's REST API: GET /v1/models/NAME, POST /v1/models/NAME:predict "
                    'with {"instances": [{"b64": ...}]} or pixel arrays. Ctrl-C or SIGTERM '
                    "stops it after the requests in flight.")
    parser.add_argument("export_dir", metavar="EXPORT_DIR",
                        help="a SavedModel, model.onnx or model.tflite written by "
                             "fastres-export (or its version or base dir), a run's dir or a "
                             ".keras file")
    parser.add_argument("--host", default="0.0.0.0",
                        help="the address to listen on: 0.0.0.0 every interface (as TF Serving "
                             "and a container need), 127.0.0.1 this machine only")
    parser.add_argument("--port", type=positive_integer, default=DEFAULT_PORT,
                        help="the HTTP port (TF Serving's REST port)")
    parser.add_argument("--grace", type=positive_integer, default=30, metavar="SECONDS",
                        help="after SIGTERM or Ctrl-C, how long the requests in flight may "
                             "take to finish (Kubernetes' termination grace)")
    parser.add_argument("--poll", type=positive_integer, default=2, metavar="SECONDS",
                        help="how often the base is looked at for a new version, which is "
                             "then served without a restart")
    parser.add_argument("--max-batch", type=positive_integer, default=64, metavar="IMAGES",
                        help="concurrent requests to a SavedModel share one model call of up "
                             "to this many images; 1 turns batching off")
    parser.add_argument("--batch-wait-ms", type=non_negative_integer, default=0, metavar="MS",
                        help="how long a request that finds no call running waits for others "
                             "to share its call (those that come while a call runs share the "
                             "next one anyway)")
    parser.add_argument("--max-request-mb", type=positive_integer, default=64, metavar="MB",
                        help="a request body larger than this is refused with 413")
    parser.add_argument("--max-instances", type=positive_integer, default=10_000,
                        metavar="IMAGES", help="a request with more images is refused with 400")
    parser.add_argument("--model-name", default=None,
                        help="the NAME in the URLs (default: the export folder's name)")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.port > 65535:
        parser.error(f"--port must be 1 to 65535, got {args.port}")
    root = Path(args.export_dir)
    name = args.model_name or (root.parent.name if root.name.isdigit() else root.name)

    def serve():
        from keras_fastres.serving.server import serve as start
        # KServe's own use of a FastAPI response class FastAPI deprecates: nothing a user can do.
        warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")
        shown = "localhost" if args.host == "0.0.0.0" else args.host
        print(f"Serving {root} as {name!r} on {args.host}:{args.port}: "
              f"http://{shown}:{args.port}/v1/models/{name} (TF Serving's REST API); Ctrl-C "
              f"to stop.", flush=True)
        stopped_by = start(root, args.port, name, args.grace, args.poll, args.host,
                           args.max_batch, args.batch_wait_ms / 1000, args.max_request_mb,
                           args.max_instances)
        print("Stopped.", flush=True)
        # The exit status says what stopped it, as every command's does (143, 130).
        if stopped_by == signal.SIGTERM:
            raise Terminated
        if stopped_by == signal.SIGINT:
            raise KeyboardInterrupt
    return run_command(serve, stopped_hint="It stopped after the requests in flight.")


if __name__ == "__main__":
    sys.exit(main())
