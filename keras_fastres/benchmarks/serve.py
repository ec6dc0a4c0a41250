"""Requests/s and latency of `fastres-serve` (`fastres-benchmark serve`): a FastResNet's
SavedModel (random weights: speed does not depend on them) served on a free local port by the
command itself, twice (batching on and off), each in a process of its own, and asked for one
base64 PNG per request by 1, 8 and 32 concurrent clients, every load interleaved round by
round. Each client keeps its connection open between requests, as an HTTP client's connection
pool does; every load runs once untimed first (the first call at a new batch size is slower:
TensorFlow prepares its kernels for the shape)."""

import base64
import http.client
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np

from keras_fastres import models
from keras_fastres.serving.export import export_saved_model
from keras_fastres.utils.console import check_positive_integers
from keras_fastres.utils.machine import describe_device

CONCURRENCY = (1, 8, 32)


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _load(url, body, clients, requests_per_client):
    """(requests/s, [latency in ms of each request answered 200]) of `clients` threads each
    sending `requests_per_client` POST requests one after the other on one connection."""
    latencies, failures = [], []
    where = urllib.parse.urlsplit(url)

    def client():
        connection = http.client.HTTPConnection(where.hostname, where.port, timeout=60)
        for _ in range(requests_per_client):
            start = time.perf_counter()
            try:
                connection.request("POST", where.path, body,
                                   {"Content-Type": "application/json"})
                answer = connection.getresponse()
                answer.read()
            except (http.client.HTTPException, OSError) as error:
                failures.append(str(error))
                connection.close()  # opened again by the next request
                continue
            if answer.status != 200:
                failures.append(str(answer.status))
            else:
                latencies.append(1000 * (time.perf_counter() - start))
        connection.close()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"{len(failures)} requests to fastres-serve failed: {failures[0]}")
    return len(latencies) / (time.perf_counter() - start), latencies


def run_serve_benchmark(depth=20, variant="type1", rounds=5, requests_per_client=25,
                        progress=None):
    """Starts fastres-serve twice on a new export, batching on (its defaults) and off
    (--max-batch 1), and times each under 1, 8 and 32 clients, `rounds` rounds (all
    interleaved); returns the report (requests/s: median of rounds; latency percentiles over
    every request)."""
    check_positive_integers(depth=depth, rounds=rounds, requests_per_client=requests_per_client)
    progress = progress or (lambda message: None)
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    png = io.BytesIO()
    from PIL import Image
    Image.fromarray(pixels).save(png, format="PNG")
    body = json.dumps({"instances": [{"b64": base64.b64encode(png.getvalue()).decode()}]})
    modes = {"on": [], "off": ["--max-batch", "1"]}
    with tempfile.TemporaryDirectory(prefix="fastres-serve-") as folder:
        progress(f"exporting ResNet-{depth} {variant} and starting fastres-serve twice")
        export_saved_model(models.FastResNet(depth, variant), Path(folder) / "model")
        servers, urls, logs = {}, {}, {}
        try:
            for mode, options in modes.items():
                port = _free_port()
                logs[mode] = open(Path(folder) / f"server-{mode}.log", "w")
                servers[mode] = subprocess.Popen(
                    [sys.executable, "-m", "keras_fastres.commands.serve",
                     str(Path(folder) / "model"), "--port", str(port), "--host", "127.0.0.1",
                     *options], stdout=logs[mode], stderr=subprocess.STDOUT,
                    env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
                urls[mode] = f"http://127.0.0.1:{port}/v1/models/model"
            for mode in modes:
                _wait_until_ready(urls[mode], servers[mode], Path(folder) / f"server-{mode}.log")
            keys = [(mode, clients) for clients in CONCURRENCY for mode in modes]
            for mode, clients in keys:  # untimed: every batch size seen once
                _load(urls[mode] + ":predict", body.encode(), clients, requests_per_client)
            per_round: dict[tuple, list[float]] = {key: [] for key in keys}
            latencies: dict[tuple, list[float]] = {key: [] for key in keys}
            for round_index in range(1, rounds + 1):
                progress(f"round {round_index}/{rounds}")
                for mode, clients in keys:
                    speed, times = _load(urls[mode] + ":predict", body.encode(), clients,
                                         requests_per_client)
                    per_round[(mode, clients)].append(speed)
                    latencies[(mode, clients)] += times
        finally:
            for server in servers.values():
                server.send_signal(signal.SIGTERM)
                try:
                    server.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    server.kill()
            for log in logs.values():
                log.close()
    results = [{"depth": depth, "variant": variant, "batching": mode, "clients": clients,
                "requests": len(latencies[(mode, clients)]),  # answered, as counted
                "requests_per_second": statistics.median(per_round[(mode, clients)]),
                "requests_per_second_per_round": per_round[(mode, clients)],
                "latency_ms_p50": float(np.percentile(latencies[(mode, clients)], 50)),
                "latency_ms_p99": float(np.percentile(latencies[(mode, clients)], 99))}
               for mode, clients in keys]
    return {"kind": "serve", "device": describe_device(), "rounds": rounds, "results": results}


def _wait_until_ready(url, server, log, timeout=180):
    deadline = time.monotonic() + timeout
    while True:
        try:
            if _request_get(url) == 200:
                return
        except (urllib.error.URLError, OSError):
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"fastres-serve did not start: {log.read_text()[-500:]}")
        time.sleep(0.5)


def _request_get(url):
    with urllib.request.urlopen(url, timeout=5) as answer:
        return answer.status


COLUMNS = (("depth", "depth", "{}"), ("variant", "variant", "{}"),
           ("batching", "batching", "{}"), ("clients", "clients", "{}"),
           ("requests", "requests", "{:,}"), ("requests/s", "requests_per_second", "{:.0f}"),
           ("p50 ms", "latency_ms_p50", "{:.1f}"), ("p99 ms", "latency_ms_p99", "{:.1f}"))


def summary(report):
    return (f"{report['device']}; fastres-serve (KServe) on one local port, one 32x32 PNG "
            f"(base64) per request, each client on one kept-alive connection; requests/s the median of {report['rounds']} rounds, "
            f"latency over every request")
