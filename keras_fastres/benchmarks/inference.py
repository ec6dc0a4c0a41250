"""Serving speed: exported models timed side by side in one process.

For each depth and variant, one model is exported three ways: a SavedModel with every BN that
follows a convolution folded into it (the default export), the same unfolded, and the folded
ONNX model. Then, round by round and every runtime once per round, batches of `batch_size`
images are timed (throughput: the median over rounds) and single images are timed one call at
a time (latency: p50 and p99 over all calls), so that a noisy machine slows all of them alike.
The weights are random: speed does not depend on their values.
"""

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from keras_fastres import models
from keras_fastres.benchmarks.report import check_models
from keras_fastres.console import check_positive_integers
from keras_fastres.machine import describe_device
from keras_fastres.serving.export import export_onnx, export_saved_model

RUNTIMES = (("saved_model", True), ("saved_model", False), ("onnxruntime", True))


def _runners(depth, variant, directory):
    """{(runtime, folded): function of uint8 images -> probabilities} for one model."""
    import onnxruntime

    model = models.FastResNet(depth, variant)
    runners = {}
    for runtime, folded in RUNTIMES:
        target = directory / f"{depth}-{variant}-{runtime}-{'folded' if folded else 'unfolded'}"
        if runtime == "saved_model":
            path = export_saved_model(model, target, version=None, fold_batch_norm=folded)
            serve = tf.saved_model.load(str(path)).signatures["serving_default"]
            runners[runtime, folded] = (
                lambda images, serve=serve: serve(images=tf.constant(images))["probabilities"]
                .numpy())
        else:
            path = export_onnx(model, target.with_suffix(".onnx"), fold_batch_norm=folded)
            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            runners[runtime, folded] = (
                lambda images, session=session: session.run(["probabilities"],
                                                            {"images": images})[0])
    return runners


def run_inference_benchmark(depths=(110,), variants=("preact", "type1"), batch_size=128,
                            rounds=10, batches=2, latency_calls=20, progress=None):
    """Times every (depth, variant, runtime, folded) case interleaved; returns the report.

    Each round runs `batches` batches of `batch_size` and `latency_calls` single images
    through every case. `progress`, if given, is called with a one-line status."""
    import onnxruntime

    check_models(depths, variants)
    check_positive_integers(batch_size=batch_size, rounds=rounds, batches=batches,
                            latency_calls=latency_calls)
    progress = progress or (lambda message: None)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch_size, 32, 32, 3), dtype=np.uint8)

    runners = {}
    with tempfile.TemporaryDirectory() as directory:
        for depth in depths:
            for variant in variants:
                progress(f"exporting ResNet-{depth} {variant}: SavedModel folded and unfolded, "
                         f"ONNX")
                for (runtime, folded), run in _runners(depth, variant, Path(directory)).items():
                    run(images)  # warm up
                    run(images[:1])
                    runners[depth, variant, runtime, folded] = run

    throughput = {case: [] for case in runners}
    latencies = {case: [] for case in runners}
    for round_index in range(1, rounds + 1):
        progress(f"round {round_index}/{rounds}")
        for case, run in runners.items():
            start = time.perf_counter()
            for _ in range(batches):
                run(images)
            throughput[case].append(batches * batch_size / (time.perf_counter() - start))
            for index in range(latency_calls):
                start = time.perf_counter()
                run(images[index % batch_size:][:1])
                latencies[case].append(1000 * (time.perf_counter() - start))

    results = []
    for (depth, variant, runtime, folded), per_round in throughput.items():
        calls = latencies[depth, variant, runtime, folded]
        results.append({
            "depth": depth, "variant": variant, "runtime": runtime, "folded": folded,
            "batch_size": batch_size, "images_per_second": statistics.median(per_round),
            "images_per_second_per_round": per_round,
            "latency_ms_p50": float(np.percentile(calls, 50)),
            "latency_ms_p99": float(np.percentile(calls, 99)),
        })
    for result in results:
        unfolded = next(r for r in results if r["depth"] == result["depth"]
                        and r["variant"] == result["variant"]
                        and (r["runtime"], r["folded"]) == ("saved_model", False))
        result["ratio_to_unfolded"] = result["images_per_second"] / unfolded["images_per_second"]
    return {"kind": "inference", "device": describe_device(), "tensorflow": tf.__version__,
            "onnxruntime": onnxruntime.__version__, "batch_size": batch_size, "rounds": rounds,
            "latency_calls": latency_calls, "results": results}


COLUMNS = (
    ("depth", "depth", "{}"), ("variant", "variant", "{}"), ("runtime", "runtime", "{}"),
    ("BN folded", "folded", "{}"), ("images/s", "images_per_second", "{:.0f}"),
    ("vs unfolded", "ratio_to_unfolded", "{:.3f}"),
    ("batch-1 p50 ms", "latency_ms_p50", "{:.2f}"),
    ("batch-1 p99 ms", "latency_ms_p99", "{:.2f}"))


def summary(report):
    return (f"{report['device']}; TensorFlow {report['tensorflow']}, onnxruntime "
            f"{report['onnxruntime']}; throughput at batch {report['batch_size']} (median of "
            f"{report['rounds']} rounds), batch-1 latency over {report['rounds']} rounds x "
            f"{report['latency_calls']} calls")
