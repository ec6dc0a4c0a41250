"""fastres-serve as a client meets it: started on a free local port (a process of its own, since
the process is what is tested), TF Serving's REST API, base64 images in, class names out, bad
requests answered 400 while it goes on serving, concurrent clients, SIGTERM."""

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from keras_fastres.serving.predict import predict

from conftest import free_ports, serving_bytes_without_keras


def call(url, body=None, timeout=60):
    """(status, JSON answer) of a GET (no body) or a POST of `body` (a dict or bytes)."""
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data),
                                    timeout=timeout) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


# As a user's shell starts it: the tests' own quieting of TensorFlow left out.
USER_ENV = {name: value for name, value in os.environ.items() if name != "TF_CPP_MIN_LOG_LEVEL"}


@pytest.fixture
def server(digits_run, tmp_path):
    """fastres-serve on the digits run's export: (base URL of the model, the process, its
    output file)."""
    _, run = digits_run
    with serving(run / "export", tmp_path, "--host", "127.0.0.1") as started:
        yield started


@contextlib.contextmanager
def serving(export, tmp_path, *options):
    """fastres-serve on `export` as the model "digits", ready: yields (its URL, the process,
    its output file), and kills it after."""
    with several({"digits": export}, tmp_path, *options) as started:
        yield started["digits"]


@contextlib.contextmanager
def several(exports, tmp_path, *options):
    """fastres-serve on each of `exports` ({model name: export}), all started at once, then
    each waited for until ready: yields {name: (its URL, the process, its output file)}, and
    kills them after. Their output goes to files: a server logs every request, and a pipe
    nobody reads would fill and stop it."""
    started = {}
    try:
        for (name, export), port in zip(exports.items(), free_ports(len(exports))):
            log = tmp_path / f"server-{name}.log"
            with open(log, "w") as output:
                process = subprocess.Popen(
                    [sys.executable, "-m", "keras_fastres.commands.serve", str(export),
                     "--port", str(port), "--model-name", name, *options], stdout=output,
                    stderr=subprocess.STDOUT, text=True, env=USER_ENV)
            started[name] = (f"http://127.0.0.1:{port}/v1/models/{name}", process, log)
        deadline = time.monotonic() + 180
        for name, (url, process, log) in started.items():
            while True:
                try:
                    status, answer = call(url, timeout=5)
                    break
                except (urllib.error.URLError, ConnectionError):
                    assert process.poll() is None and time.monotonic() < deadline, (
                        log.read_text()[-3000:])
                    time.sleep(0.5)
            assert (status, answer) == (200, {"name": name, "ready": True})
        yield started
    finally:
        for _, process, _ in started.values():
            if process.poll() is None:
                process.kill()
                process.wait()


def encoded(path):
    return {"b64": base64.b64encode(path.read_bytes()).decode()}


def test_it_answers_like_predict_refuses_bad_requests_and_stops_on_sigterm(digits_run, server):
    root, run = digits_run
    url, process, log = server
    port = int(url.split(":")[2].split("/")[0])
    # --host 127.0.0.1: listening on this machine's loopback address only.
    listening = [line.split()[1] for line in open("/proc/net/tcp").read().splitlines()[1:]
                 if line.split()[3] == "0A"]  # LISTEN
    assert f"0100007F:{port:04X}" in listening and f"00000000:{port:04X}" not in listening
    assert f"on 127.0.0.1:{port}: http://127.0.0.1:{port}/v1/models/digits" in log.read_text()
    files = sorted((root / "test" / "three").glob("*.*"))[:2] + sorted(
        (root / "test" / "eight").glob("*.*"))[:2]
    status, answer = call(url + ":predict", {"instances": [encoded(f) for f in files]})
    assert status == 200, answer
    expected = [classes[0][0] for _, classes in predict(run / "export", files, top=1)]
    assert [p["class_name"] for p in answer["predictions"]] == expected
    assert all(len(p["probabilities"]) == 10 and 0 <= p["classes"] < 10
               for p in answer["predictions"])

    for body, reason in (
            ({"instances": [{"b64": "!! not base64"}]}, "not base64 text"),
            ({"instances": [{"b64": base64.b64encode(b"hello").decode()}]},
             "image_bytes[0] is not a JPEG, PNG, GIF, BMP or WebP image"),
            (b"{not json", "not JSON"),
            ({"instances": [[[[300, 0, 0]] * 16] * 16]}, "whole pixel values 0-255"),
            ({"signature_name": "serving_float", "instances": [[[[300.0, 0, 0]] * 16] * 16]},
             "got a value above 255"),
            ({"instances": [[[[3, 0, 0]] * 16] * 12]}, "must have shape [batch, 16, 16, 3]"),
            ({"signature_name": "nope", "instances": [encoded(files[0])]}, "is not one of")):
        status, answer = call(url + ":predict", body)
        assert status == 400 and reason in answer["error"], (status, answer)
        assert "\n" not in answer["error"]
    status, answer = call(url + ":predict", {"instances": [encoded(files[0])]})
    assert status == 200 and answer["predictions"][0]["class_name"] == expected[0]
    pixels = {"instances": [[[[0, 0, 0]] * 16] * 16]}  # serving_default's pixel arrays
    assert call(url + ":predict", pixels)[0] == 200

    # 8 clients at once, 25 requests each.
    statuses = []

    def client():
        for _ in range(25):
            statuses.append(call(url + ":predict", {"instances": [encoded(files[1])]})[0])
    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 200

    start = time.monotonic()
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)
    output = log.read_text()
    assert time.monotonic() - start < 10 and process.returncode == 143, output[-2000:]
    assert output.startswith("Serving ") and output.rstrip().endswith(
        "Stopped.\n\nTerminated (SIGTERM). It stopped after the requests in flight.")
    # One line per request, the refused ones too; no traceback, no warning.
    assert len([line for line in output.splitlines() if "digits:predict" in line]) == 210
    assert "Traceback" not in output and "Warning" not in output, output[-3000:]


def test_a_folder_without_a_savedmodel_is_one_line(tmp_path, capsys):
    from keras_fastres.commands.serve import main
    assert main([str(tmp_path), "--port", str(free_ports(1)[0])]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: No model in {tmp_path}") and error.count("\n") == 1, error


def test_the_serve_benchmark_counts_what_it_sent():
    """Few requests: every request sent is answered and counted, for each server (batching on
    and off) and load, not a speed (the README's numbers come from `fastres-benchmark serve`)."""
    from keras_fastres.benchmarks.serve import run_serve_benchmark
    report = run_serve_benchmark(depth=8, rounds=2, requests_per_client=3)
    assert [(r["batching"], r["clients"]) for r in report["results"]] == [
        ("on", 1), ("off", 1), ("on", 8), ("off", 8), ("on", 32), ("off", 32)]
    for result in report["results"]:
        assert result["requests"] == 2 * 3 * result["clients"]
        assert len(result["requests_per_second_per_round"]) == 2
        assert result["requests_per_second"] == pytest.approx(
            sum(result["requests_per_second_per_round"]) / 2)  # the median of two
        assert 0 < result["latency_ms_p50"] <= result["latency_ms_p99"]


def test_a_tiff_is_answered_as_predict_answers_it(digits_run, tmp_path):
    """TensorFlow has no TIFF decoder: the server decodes a request holding one with the
    training loader's code and the export's preparation, and answers as fastres-predict."""
    import asyncio
    import base64

    from PIL import Image

    from keras_fastres.serving.predict import predict
    from keras_fastres.serving.server import model_class
    root, run = digits_run
    sources = sorted((root / "test").rglob("*.png"))[:6]
    files = []
    for index, source in enumerate(sources):
        files.append(tmp_path / f"{index}.{'tif' if index % 2 else 'png'}")
        Image.open(source).convert("RGB").resize((24, 20)).save(files[-1])
    model = model_class()("digits", run / "export")
    model.load()
    answer = asyncio.run(model.predict({"instances": [
        {"b64": base64.b64encode(path.read_bytes()).decode()} for path in files]}))
    expected = predict(run / "export", files, top=1)
    assert [p["class_name"] for p in answer["predictions"]] == [
        ranked[0][0] for _, ranked in expected]
    assert [p["probabilities"][p["classes"]] for p in answer["predictions"]] == pytest.approx(
        [ranked[0][1] for _, ranked in expected], abs=1e-5)


KINDS = (("jpg", 1), ("jpg", 3), ("jpg", 6), ("jpg", 8), ("webp", None), ("png", None),
         ("tif", None))  # a JPEG's EXIF orientation; the other formats as stored


def parity_photos(root, folder, per_kind=3):
    """`per_kind` photos of each of KINDS: digits of the test split enlarged to sizes other than
    the model's 16x16, the JPEGs stored turned as a phone stores them, with the EXIF orientation
    that shows them upright."""
    from PIL import Image
    turned = {1: None, 3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90,
              8: Image.Transpose.ROTATE_270}
    folder.mkdir()
    files = []
    for index, source in enumerate(sorted((root / "test").rglob("*.png"))[:7 * per_kind]):
        suffix, orientation = KINDS[index % len(KINDS)]
        size = (16 + 7 * (index % 5), 16 + 5 * (index % 7))
        image = Image.open(source).convert("RGB").resize(size, Image.Resampling.BICUBIC)
        files.append(folder / f"{index}.{suffix}")
        if orientation:
            exif = Image.Exif()
            exif[0x0112] = orientation
            stored = image.transpose(turned[orientation]) if turned[orientation] else image
            stored.save(files[-1], quality=95, exif=exif)
        else:
            image.save(files[-1])
    return files


def test_every_way_in_answers_predicts_class_for_every_photo(digits_run, tmp_path):
    """One folder of photos (JPEGs with EXIF orientations 1, 3, 6 and 8, WebP, PNG, TIFF):
    fastres-serve over HTTP on every export format (SavedModel, ONNX, int8 ONNX, LiteRT, the
    .keras file), and serving_bytes in a process where Keras and this package cannot be imported
    (the formats TensorFlow decodes), give fastres-predict's class for every photo; the graph's
    image is the loader's within the README's tolerance (a mean of at most one level)."""
    import tensorflow as tf

    from keras_fastres.models import load_model
    from keras_fastres.serving.compact import export_compact
    from keras_fastres.serving.decode import decode_batch
    from keras_fastres.serving.export import export_onnx
    from keras_fastres.serving.predict import open_classifier
    from keras_fastres.training.run import run_data
    root, run = digits_run
    model = load_model(run)
    export_onnx(model, tmp_path / "onnx", version=1)
    export_compact(model, tmp_path / "int8", run_data(run), "onnx", "int8", version=1)
    export_compact(model, tmp_path / "litert", None, "litert", version=1)
    exports = {"saved": run / "export", "onnx": tmp_path / "onnx", "int8": tmp_path / "int8",
               "litert": tmp_path / "litert", "keras": run}
    files = parity_photos(root, tmp_path / "photos")
    in_graph = [path for path in files if path.suffix != ".tif"]
    without_keras = serving_bytes_without_keras(run / "export" / "1", in_graph)
    expected = {name: [ranked[0][0] for _, ranked in predict(export, files, top=1)]
                for name, export in exports.items()}
    assert all(classes == expected["keras"] for classes in expected.values()), expected
    with several(exports, tmp_path, "--host", "127.0.0.1") as started:
        for name, (url, _, _) in started.items():
            status, answer = call(url + ":predict", {"instances": [encoded(f) for f in files]})
            assert status == 200, answer
            assert [p["class_name"] for p in answer["predictions"]] == expected[name], name
    out, err = without_keras.communicate(timeout=180)
    assert without_keras.returncode == 0, err[-2000:]
    assert out.split() == [c for c, f in zip(expected["keras"], files) if f.suffix != ".tif"]

    preparation = open_classifier(run).preparation
    loader = np.stack([preparation.prepare_file(path) for path in in_graph]).astype(int)
    graph = decode_batch(tf.constant([path.read_bytes() for path in in_graph]),
                         *preparation.image_size, preparation.resize).numpy()
    assert np.abs(loader - graph).reshape(len(in_graph), -1).mean(axis=1).max() <= 1.0


def test_a_long_request_in_flight_at_sigterm_is_answered_within_the_grace(tmp_path):
    """A request of 2,000 photos for a ResNet-20 at 96x96 (about 13 s here, longer than the 5 s
    grace the server had before) is in flight when SIGTERM comes: it is answered with 200, and
    the server then exits with 143 well within --grace."""
    import io

    from PIL import Image

    from keras_fastres import FastResNet
    from keras_fastres.serving.export import export_saved_model
    model = FastResNet(20, input_shape=(96, 96, 3), normalization=((127,) * 3, (64,) * 3))
    export_saved_model(model, tmp_path / "export", version=1)
    photo = io.BytesIO()
    Image.fromarray(np.kron(np.random.default_rng(0).integers(0, 255, (12, 12, 3)),
                            np.ones((8, 8, 1))).astype(np.uint8)).save(photo, "JPEG")
    body = {"instances": [{"b64": base64.b64encode(photo.getvalue()).decode()}] * 2000}
    with serving(tmp_path / "export", tmp_path, "--grace", "60") as (url, process, _):
        answered = []
        client = threading.Thread(target=lambda: answered.append(
            (call(url + ":predict", body, timeout=120), time.monotonic())))
        client.start()
        time.sleep(2)  # the request sent and being answered
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        client.join(timeout=120)
        process.wait(timeout=65)
        (status, answer), at = answered[0]
        assert at > signalled, "answered before SIGTERM: the request was not in flight"
        assert status == 200 and len(answer["predictions"]) == 2000
        assert process.returncode == 143 and time.monotonic() - signalled < 60 + 5


def test_a_new_version_is_served_without_a_restart_and_a_damaged_one_is_not(digits_run, tmp_path,
                                                                            caplog):
    """Version 2, written into the served base as fastres-export writes it, answers within
    10 s; a damaged version 3 is logged in one line and version 2 goes on answering."""
    import asyncio
    import logging
    import shutil

    from keras_fastres import FastResNet
    from keras_fastres.serving.export import export_saved_model
    from keras_fastres.serving.server import model_class
    root, run = digits_run
    shutil.copytree(run / "export", tmp_path / "base")
    served = model_class()("digits", tmp_path / "base", poll=0.2)
    served.load()
    photo = sorted((root / "test").rglob("*.png"))[0]
    body = {"instances": [encoded(photo)]}

    def answer():
        return asyncio.run(served.predict(body))["predictions"][0]["class_name"]
    try:
        assert answer() in {"zero", "one", "two", "three", "four", "five", "six", "seven",
                            "eight", "nine"}
        other = FastResNet(8, num_classes=2, input_shape=(16, 16, 3), class_names=["a", "b"],
                           normalization=None)
        export_saved_model(other, tmp_path / "base", version=2)
        deadline = time.monotonic() + 10
        while answer() not in ("a", "b"):
            assert time.monotonic() < deadline, "version 2 not served within 10 s"
            time.sleep(0.1)
        (tmp_path / "base" / "3").mkdir()
        (tmp_path / "base" / "3" / "saved_model.pb").write_bytes(b"not a SavedModel")
        with caplog.at_level(logging.WARNING, "keras_fastres"):
            time.sleep(1.5)
        assert answer() in ("a", "b")
        refused = [r.getMessage() for r in caplog.records if "Not serving" in r.getMessage()]
        assert len(refused) == 1 and "/base/3" in refused[0] and "\n" not in refused[0]
    finally:
        served.stop()


def test_concurrent_requests_share_a_call_and_keep_their_own_answers(digits_run):
    """Twelve requests at once (one of them damaged) with batching on: the good ones answered
    as each alone is, in their order, from fewer model calls; the damaged one refused alone."""
    import asyncio

    from keras_fastres.serving.server import model_class
    root, run = digits_run
    files = sorted((root / "test").rglob("*.png"))[:11]
    alone = model_class()("digits", run / "export")
    alone.load()
    batching = model_class()("digits", run / "export", max_batch=64, batch_wait=0.05)
    batching.load()
    calls = []
    run_once = batching.run

    def counted(*args):
        calls.append(1)
        return run_once(*args)
    batching.run = counted
    bodies = [{"instances": [encoded(path)] * (1 + index % 3)} for index, path in enumerate(files)]
    bodies.insert(5, {"instances": [{"b64": base64.b64encode(b"not an image").decode()}]})

    async def together(model):
        return await asyncio.gather(*(model.predict(body) for body in bodies),
                                    return_exceptions=True)
    shared, single = asyncio.run(together(batching)), asyncio.run(together(alone))
    assert isinstance(shared[5], ValueError) and "image_bytes[0] is not a" in str(shared[5])
    for one, other in zip(shared[:5] + shared[6:], single[:5] + single[6:]):
        assert [p["class_name"] for p in one["predictions"]] == [
            p["class_name"] for p in other["predictions"]]
        assert np.allclose([p["probabilities"] for p in one["predictions"]],
                           [p["probabilities"] for p in other["predictions"]], atol=1e-5)
    assert len(calls) == 1 + len(bodies)  # the shared call failed: then each on its own
    del calls[:], bodies[5]
    again = asyncio.run(together(batching))
    assert len(calls) == 1 and [a["predictions"] for a in again] == [
        s["predictions"] for s in shared[:5] + shared[6:]]  # 11 requests, 22 images, one call


def rss_mb(pid):
    status = open(f"/proc/{pid}/status").read()
    return int(next(line.split()[1] for line in status.splitlines()
                    if line.startswith("VmRSS:"))) / 1024


def test_the_server_bounds_what_it_takes(digits_run, tmp_path):
    """A 200 MB body: 413 within a second, the server's memory unmoved; a chunked body over
    the limit: 413; 100,000 instances and JSON nested 100,000 deep: 400; a PNG declaring
    30,000 x 30,000 pixels: 400 before decoding; 200 connections sending their headers a byte
    at a time, and clients gone mid-request, do not keep a normal client waiting."""
    import socket

    from test_own_images import png_header
    _, run = digits_run
    with serving(run / "export", tmp_path, "--host", "127.0.0.1",
                 "--max-request-mb", "8") as (url, process, log):
        port = int(url.split(":")[2].split("/")[0])
        path = "/v1/models/digits:predict"
        before = rss_mb(process.pid)
        with socket.create_connection(("127.0.0.1", port)) as client:
            start = time.monotonic()
            client.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                           f"\r\nContent-Length: {200 * 2 ** 20}\r\n\r\n".encode())
            try:
                for _ in range(20):  # 20 MB of the 200 sent while the answer comes
                    client.sendall(b"0" * 2 ** 20)
            except (BrokenPipeError, ConnectionResetError):
                pass
            answer = client.recv(4096).decode()
            assert answer.startswith("HTTP/1.1 413"), answer
            assert time.monotonic() - start < 1 and "--max-request-mb" in answer
        assert rss_mb(process.pid) - before < 50

        with socket.create_connection(("127.0.0.1", port)) as client:  # chunked, 9 MB
            client.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                           f"\r\n".encode())
            try:
                for _ in range(9):
                    client.sendall(b"100000\r\n" + b"0" * 2 ** 20 + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass
            assert client.recv(4096).decode().startswith("HTTP/1.1 413")

        many = {"instances": [{"b64": "AAAA"}] * 100_000}
        status, answer = call(url + ":predict", many)
        assert status == 400 and "100,000 instances in one request, more than 10,000" in \
            answer["error"]
        deep = b"[" * 100_000 + b"]" * 100_000
        for headers in ({}, {"Content-Type": "application/json"}):
            request = urllib.request.Request(url + ":predict", data=deep, headers=headers)
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=30)
            assert refused.value.code == 400, headers
        bomb = {"instances": [{"b64": base64.b64encode(png_header(30_000, 30_000)).decode()}]}
        status, answer = call(url + ":predict", bomb)
        assert status == 400 and "image_bytes[0] declares 900000000 pixels, more than the " \
            "limit of 67,108,864" in answer["error"], answer

        slow = [socket.create_connection(("127.0.0.1", port)) for _ in range(200)]
        try:
            for second in range(3):
                for connection in slow:
                    connection.send(b"POST /v1/mo"[second:second + 1])
                start = time.monotonic()
                assert call(url, timeout=5)[0] == 200 and time.monotonic() - start < 2
                time.sleep(1)
            for connection in slow[:100]:  # gone mid-request: a part of the body sent
                connection.send(f"{path} HTTP/1.1\r\nContent-Length: 1000\r\n\r\n{{".encode())
                connection.close()
            files = sorted((digits_run[0] / "test").rglob("*.png"))[:1]
            status, _ = call(url + ":predict", {"instances": [encoded(files[0])]})
            assert status == 200
        finally:
            for connection in slow:
                connection.close()
        output = log.read_text()
        assert "Traceback" not in output, output[-3000:]
