"""An exported model served over HTTP with TF Serving's REST API (`fastres-serve`), on
KServe's Python model server, whose V1 protocol is that API: the same `FastResModel` class
deploys as a KServe InferenceService, which scales out on Kubernetes.

    GET  /v1/models/NAME            {"name": NAME, "ready": true}
    POST /v1/models/NAME:predict    {"instances": [...], "signature_name": ...}
         instances: {"b64": "<base64 of a JPEG/PNG/GIF/BMP/WebP file>"} each (serving_bytes;
         a request with a TIFF, which TensorFlow cannot decode, is decoded by the training
         loader's code and the model's preparation, then runs serving_default), or
         pixel arrays [H][W][3] (serving_default, uint8; serving_float with that name)
         -> {"predictions": [{"probabilities": [...], "classes": i, "class_name": "..."}]}

Every export format is served: a SavedModel through its signatures; an ONNX (float or int8,
onnxruntime) or LiteRT model, or a .keras file, through `fastres-predict`'s classifier, its
images prepared by the training loader's code (EXIF, every Pillow format) and the model's
preparation, with the same request and answer.

A request the model cannot answer (bad base64, no image, a wrong shape, a pixel out of range)
gets 400 with one line saying why, and the server goes on. Requests run in worker threads
(TensorFlow releases the GIL), so concurrent clients are served together. SIGTERM or Ctrl-C:
the server stops taking requests, finishes those in flight, and exits.
"""

import asyncio
import base64
import binascii
import gc
import io
import json
import logging
import re
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from keras_fastres.errors import summary, tensorflow_reason
from keras_fastres.serving.predict import (
    exported_preparation,
    find_model,
    load_signatures,
    open_classifier,
)

log = logging.getLogger(__name__)

SIGNATURES = ("serving_default", "serving_float", "serving_bytes")
TIFF = (b"II*\x00", b"MM\x00*")  # the two byte orders' magic


def _kserve():
    """kserve, imported with an empty command line: it parses sys.argv when imported."""
    try:
        argv, sys.argv = sys.argv, sys.argv[:1]
        try:
            import kserve
        finally:
            sys.argv = argv
    except ImportError:
        raise ImportError('fastres-serve needs KServe: pip install "keras-fastres[serve]".') \
            from None
    return kserve


@dataclass(frozen=True)
class Served:
    """One loaded version: its path, and either a SavedModel's signatures or a classifier (ONNX,
    LiteRT, Keras), with its image preparation."""

    path: Path
    signatures: dict
    classifier: Any
    preparation: Any


def open_served(export_dir) -> Served:
    """The newest version of `export_dir`, loaded (see `predict.find_model`)."""
    kind, path = find_model(export_dir)
    if kind != "saved_model":
        classifier = open_classifier(path)
        # Its images come as pixels or as files prepared here: the two ways in.
        return Served(path, dict.fromkeys(("serving_default", "serving_bytes")), classifier,
                      classifier.preparation)
    signatures = load_signatures(path)  # checked to be fastres-export's
    size = signatures["serving_default"].structured_input_signature[1]["images"].shape[1:3]
    return Served(path, signatures, None, exported_preparation(path / "assets", tuple(size)))


def model_class():
    """FastResModel, a kserve.Model (defined on first use: KServe is an optional extra)."""
    kserve: Any = _kserve()
    invalid = kserve.errors.InvalidInput

    class FastResModel(kserve.Model):
        """A model the package exports (a version, or the newest of a base: SavedModel, ONNX,
        LiteRT; or a .keras file) as a KServe model. Every `poll` seconds (None: never) the
        base is looked at again, and a newer complete version is loaded and then served; a
        version that cannot be loaded is logged in one line and the one served stays."""

        def __init__(self, name, export_dir, poll=None, max_batch=1, batch_wait=0.0,
                     max_instances=MAX_INSTANCES):
            super().__init__(name)
            self.export_dir, self.poll, self.max_instances = export_dir, poll, max_instances
            self.max_batch, self.batch_wait = max_batch, batch_wait
            self.served: Served | None = None  # until load()
            self._stop = threading.Event()
            self._waiting: dict[str, list] = {}  # signature: [(inputs, count, future)]
            self._busy: dict[str, int] = {}  # signature: its calls running

        @property
        def preparation(self):
            assert self.served is not None
            return self.served.preparation

        def load(self):
            self.served = open_served(self.export_dir)
            self.ready = True
            if self.poll:
                threading.Thread(target=self._watch, daemon=True,
                                 name="fastres-versions").start()
            return self.ready

        def stop(self):
            self._stop.set()

        def _watch(self):
            refused = None
            while not self._stop.wait(self.poll):
                try:
                    _, newest = find_model(self.export_dir)
                except ValueError:  # the base emptied: keep serving what is loaded
                    continue
                assert self.served is not None
                if newest in (self.served.path, refused):
                    continue
                try:
                    self.served = open_served(newest)  # one assignment: requests see either
                    _freeze_loaded_objects()
                    log.info("Serving %s", newest)
                except Exception as error:  # a damaged version fails in many ways
                    refused = newest
                    log.warning("Not serving %s: %s; still serving %s", newest,
                                summary(error)[:200], self.served.path)

        async def predict(self, payload, headers=None):
            served = self.served
            assert served is not None
            signature, inputs = self.inputs(payload, served)
            if served.classifier is not None:
                return await self.classified(signature, inputs, served)
            if self.max_batch > 1 and signature != "serving_float":
                values = await self.batched(served, signature, inputs)
            else:
                values = await asyncio.to_thread(self.run, served, signature, inputs)
            names = sorted(values)
            return {"predictions": [{name: _plain(values[name][i]) for name in names}
                                    for i in range(len(values[names[0]]))]}

        @staticmethod
        def run(served, signature, inputs):
            """{output: numpy values} of one call of a SavedModel's signature."""
            try:
                outputs = served.signatures[signature](**inputs)
            except tf.errors.InvalidArgumentError as error:
                raise invalid(_reason(error)) from None
            return {name: value.numpy() for name, value in outputs.items()}

        async def batched(self, served, signature, inputs):
            """The request's outputs from a call shared with other requests, its own rows in
            order: a request that finds no call running starts one after `batch_wait` seconds
            (0: at once); those that come while a call runs share the next one, which starts
            when it ends (or when they reach `max_batch` images)."""
            (key, value), = inputs.items()
            future = asyncio.get_running_loop().create_future()
            waiting = self._waiting.setdefault(signature, [])
            waiting.append((value, int(value.shape[0]), future))
            if signature in self._busy:  # sent with the call after the running one
                if sum(count for _, count, _ in waiting) >= self.max_batch:
                    self._flush(served, signature, key)
            elif len(waiting) == 1:
                asyncio.get_running_loop().call_later(
                    self.batch_wait, self._flush, served, signature, key)
            return await future

        def _flush(self, served, signature, key):
            """A call for what waits, at most `max_batch` images (the rest waits on)."""
            waiting, images = self._waiting.get(signature, []), 0
            batch: list = []
            while waiting and (not batch or images + waiting[0][1] <= self.max_batch):
                batch.append(waiting.pop(0))
                images += batch[-1][1]
            if batch:
                self._busy[signature] = self._busy.get(signature, 0) + 1
                asyncio.get_running_loop().create_task(
                    self._answer(served, signature, key, batch))

        async def _answer(self, served, signature, key, batch):
            try:
                await self._answer_batch(served, signature, key, batch)
            finally:
                self._busy[signature] -= 1
                if not self._busy[signature]:
                    del self._busy[signature]
                    if self._waiting.get(signature):  # what came meanwhile, at once
                        self._flush(served, signature, key)

        async def _answer_batch(self, served, signature, key, batch):
            counts = [count for _, count, _ in batch]
            try:
                merged = tf.concat([value for value, _, _ in batch], axis=0)
                values = await asyncio.to_thread(self.run, served, signature, {key: merged})
            except Exception:  # one bad request (or shape): each answered on its own
                for value, _, future in batch:
                    try:
                        future.set_result(await asyncio.to_thread(
                            self.run, served, signature, {key: value}))
                    except Exception as error:
                        future.set_exception(error)
                return
            start = 0
            for (_, _, future), end in zip(batch, np.cumsum(counts)):
                future.set_result({name: rows[start:end] for name, rows in values.items()})
                start = end

        def inputs(self, payload, served):
            """(signature name, its keyword inputs) of a V1 request, or InvalidInput."""
            if isinstance(payload, (bytes, str)):  # a body sent without a JSON content type
                try:                               # (curl -d): TF Serving reads it as JSON too
                    payload = json.loads(payload)
                except (ValueError, RecursionError):  # nested past Python's recursion limit
                    raise invalid("the request is not JSON, or is nested too deep") from None
            if not isinstance(payload, dict) or not isinstance(payload.get("instances"), list):
                raise invalid('the request must be JSON {"instances": [...]}')
            instances = payload["instances"]
            if not instances:
                raise invalid("no instances in the request")
            if len(instances) > self.max_instances:
                raise invalid(f"{len(instances):,} instances in one request, more than "
                              f"{self.max_instances:,} (--max-instances): send them in parts")
            encoded = [isinstance(item, dict) and set(item) == {"b64"} for item in instances]
            name = payload.get("signature_name") or (
                "serving_bytes" if all(encoded) else "serving_default")
            if name not in served.signatures:
                raise invalid(f"signature_name {name!r} is not one of {SIGNATURES}")
            if name == "serving_bytes":
                if not all(encoded):
                    raise invalid('serving_bytes takes instances {"b64": "<base64 of an image '
                                  'file>"}')
                try:
                    files = [base64.b64decode(item["b64"], validate=True) for item in instances]
                except (binascii.Error, ValueError, TypeError):
                    raise invalid("an instance's b64 is not base64 text") from None
                if any(file[:4] in TIFF for file in files):
                    return "serving_default", {"images": tf.constant(
                        self.prepared(files, served))}
                return name, {"image_bytes": tf.constant(files)}
            dtype = np.uint8 if name == "serving_default" else np.float32
            try:
                pixels = np.asarray(instances, dtype=np.float64)
            except (ValueError, TypeError):
                raise invalid("instances must be pixel arrays [H][W][3] of numbers, or "
                              '{"b64": ...} images') from None
            if dtype == np.uint8 and (np.any(pixels < 0) or np.any(pixels > 255)
                                      or np.any(pixels != np.round(pixels))):
                raise invalid("serving_default takes whole pixel values 0-255")
            return name, {"images": tf.constant(pixels.astype(dtype))}

        async def classified(self, signature, inputs, served):
            """The answer of a model other than a SavedModel, as a SavedModel's reads."""
            if signature == "serving_bytes":
                images = self.prepared(list(inputs["image_bytes"].numpy()), served)
            else:
                images = inputs["images"].numpy()
                height, width = served.preparation.image_size
                if images.ndim != 4 or images.shape[1:] != (height, width, 3):
                    raise invalid(f"images must have shape [batch, {height}, {width}, 3]; got "
                                  f"{list(images.shape)}")
            probabilities = np.asarray(await asyncio.to_thread(
                served.classifier.probabilities, images.astype(np.uint8)), np.float32)
            classes = probabilities.argmax(axis=1)
            names = served.classifier.names(probabilities.shape[1])
            return {"predictions": [
                {"classes": int(c), "probabilities": row.tolist(),
                 **({"class_name": names[c]} if names else {})}
                for c, row in zip(classes, probabilities)]}

        def prepared(self, files, served):
            """uint8 images of encoded files, by the training loader's decoder (Pillow)."""
            pixels = []
            for index, file in enumerate(files):
                try:
                    pixels.append(served.preparation.prepare_file(io.BytesIO(file)))
                except ValueError as error:
                    raise invalid(f"image_bytes[{index}] cannot be read: {error}") from None
            return np.stack(pixels)

    return FastResModel


def _reason(error):
    """The one line of a refused request: the model's own assertion message, as written."""
    line = tensorflow_reason(error.message)
    found = re.fullmatch(r"assertion failed: \[(.*?)\](?: \[.*)?", line)
    return (found.group(1) if found else line).replace("\\'", "'")[:300]


def _plain(value):
    """A JSON value of one output element."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value.item() if hasattr(value, "item") else value


def _freeze_loaded_objects():
    """Moves every object alive now (the loaded model's hundreds of thousands) out of the
    garbage collector's reach: otherwise each full collection walks them all, a 300 ms pause of
    every request in flight, measured as the p99 of 32 clients (docs/serving.md)."""
    gc.collect()
    gc.freeze()


class BodyLimit:
    """ASGI middleware: a request body larger than `limit` bytes is answered 413 with one line,
    before it is read when its Content-Length says so (nothing of it held), else as soon as
    what arrived passes the limit (at most `limit` bytes held)."""

    def __init__(self, app, limit):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.limit:
                return await self._refuse(send)
            return await self.app(scope, receive, send)
        chunks, size = [], 0  # a chunked body: read here up to the limit, then passed on
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await self._refuse(send)
            if not message.get("more_body"):
                break
        whole: bytes | None = b"".join(chunks)

        async def replay():
            nonlocal whole
            if whole is None:  # read: what comes next (a disconnect)
                return await receive()
            message, whole = {"type": "http.request", "body": whole, "more_body": False}, None
            return message
        await self.app(scope, replay, send)

    async def _refuse(self, send):
        answer = json.dumps({"error": f"the request body is larger than "
                                      f"{self.limit / 2 ** 20:g} MB (--max-request-mb)"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(answer)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": answer})


class AccessLog:
    """ASGI middleware: one line per request, `METHOD PATH STATUS MILLISECONDS ms`, in place of
    KServe's timing middleware, which reads the process's CPU time (getrusage over TensorFlow's
    threads) twice per request: a fifth of the event loop's time under load, measured."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)
        try:
            await self.app(scope, receive, sending)
        finally:
            ACCESS.info("%s %s %d %.1f ms", scope["method"], scope["path"], status[0],
                        1000 * (time.perf_counter() - start))


ACCESS = logging.getLogger("kserve.trace")  # KServe's log configuration prints it, timestamped


def _no_client_errors(refused):
    """A log filter: False for KServe's record of a request it refused (an exception of class
    `refused`, answered 400), which carries a traceback."""
    return lambda record: not (record.exc_info and isinstance(record.exc_info[1], refused))


GRACE = 30  # seconds: Kubernetes' default termination grace period


POLL = 2  # seconds between looks at the base for a new version
MAX_REQUEST_MB = 64  # a request body's limit: 2,000 phone photos' thumbnails, or 500 1 MB JPEGs
MAX_INSTANCES = 10_000  # images in one request
MAX_BATCH = 64  # images in one shared model call
BATCH_WAIT = 0.0  # seconds a request finding no call running waits for others to join it


def serve(export_dir, port=8501, model_name=None, grace=GRACE, poll=POLL, host="0.0.0.0",
          max_batch=MAX_BATCH, batch_wait=BATCH_WAIT, max_request_mb=MAX_REQUEST_MB,
          max_instances=MAX_INSTANCES):
    """Serves the model of `export_dir` (its newest version, and each newer one that appears
    complete in it, looked for every `poll` seconds) on `host`:`port` until SIGTERM or Ctrl-C,
    then finishes the requests in flight for up to `grace` seconds; returns the signal that
    stopped it. Concurrent requests to a SavedModel share one call of up to `max_batch` images,
    gathered for `batch_wait` seconds (`max_batch` 1: each request its own call). A body over
    `max_request_mb` is refused with 413, more than `max_instances` images with 400."""
    kserve = _kserve()
    model = model_class()(model_name, export_dir, poll, max_batch, batch_wait, max_instances)
    model.load()
    _freeze_loaded_objects()
    server = kserve.ModelServer(http_port=port, enable_grpc=False, workers=1,
                                enable_latency_logging=False, grace_period=grace)
    # KServe configures the process's loggers as its server is made (above). One line per
    # request, AccessLog's, not also uvicorn's access line; a refused request is that line's 400
    # and the client's one-line reason, not a logged traceback.
    logging.getLogger("kserve").addFilter(_no_client_errors(kserve.errors.InvalidInput))
    logging.getLogger("uvicorn.access").addFilter(lambda record: False)
    received = []
    stop = server.stop

    def stop_and_remember(sig):  # KServe's own handler calls server.stop(sig)
        received.append(sig)
        stop(sig)
    server.stop = stop_and_remember
    # KServe binds its REST server to 0.0.0.0 and takes no host; its uvicorn configuration is
    # read when the server starts, after the signal handlers are set: the host is set there,
    # and AccessLog replaces KServe's middleware before its application is made.
    register = server.register_signal_handler

    def register_and_bind():
        server._rest_server.config.host = host
        server._rest_server._add_middlewares = lambda app: (
            app.add_middleware(BodyLimit, limit=int(max_request_mb * 2 ** 20)),
            app.add_middleware(AccessLog))  # added last: the outermost, it logs the 413s too
        register()
    server.register_signal_handler = register_and_bind
    server.start([model])
    return received[0] if received else None
