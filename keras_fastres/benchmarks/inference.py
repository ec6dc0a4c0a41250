"""Serving speed: exported models timed side by side in one process.

For each depth and variant, one model is exported six ways: a SavedModel with every BN that
follows a convolution folded into it (the default export), the same unfolded, the folded ONNX
model, float and quantized to int8 (calibrated on 64 random images), and the LiteRT model,
float and full integer. Then, round by round and every runtime once per round, batches of `batch_size`
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
from keras_fastres.serving.export import export_onnx, export_saved_model
from keras_fastres.utils.console import check_positive_integers
from keras_fastres.utils.machine import describe_device

RUNTIMES = (("saved_model", True), ("saved_model", False), ("onnxruntime", True),
            ("onnxruntime int8", True), ("litert", True), ("litert int8", True))


def _runners(depth, variant, directory):
    """{(runtime, folded): function of uint8 images -> probabilities} for one model."""
    import onnxruntime

    model = models.FastResNet(depth, variant)
    calibration = np.random.default_rng(1).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    runners = {}
    for runtime, folded in RUNTIMES:
        if runtime != "saved_model" and runtime != "onnxruntime":
            runners[runtime, folded] = _compact_runner(model, runtime, calibration)
            continue
        target = directory / f"{depth}-{variant}-{runtime}-{'folded' if folded else 'unfolded'}"
        if runtime == "saved_model":
            path = export_saved_model(model, target, version=None, fold_batch_norm=folded)
            serve = tf.saved_model.load(str(path)).signatures["serving_default"]
            runners[runtime, folded] = (
                lambda images, serve=serve: serve(images=tf.constant(images))["probabilities"]
                .numpy())
        else:
            path = export_onnx(model, target.with_suffix(".onnx"), fold_batch_norm=folded)
            session = onnxruntime.InferenceSession(str(path), _quiet_threads(),
                                                   providers=["CPUExecutionProvider"])
            runners[runtime, folded] = (
                lambda images, session=session: session.run(["probabilities"],
                                                            {"images": images})[0])
    return runners


def _quiet_threads():
    """onnxruntime's session options with its worker threads' spinning off: by default they
    spin after each call, and, timed in turn, every other runtime of the round would share
    the cores with them (measured: int8 ONNX right after float ONNX at 1.2x its speed instead
    of 1.5x)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def _compact_runner(model, runtime, calibration):
    """uint8 images -> probabilities for "onnxruntime int8", "litert" or "litert int8"; LiteRT
    with one interpreter for batches and one for single images (resizing an interpreter's
    input between the two would be timed too)."""
    import onnxruntime

    from keras_fastres.serving.compact import litert_bytes, litert_runner, quantize_onnx
    from keras_fastres.serving.export import onnx_bytes
    if runtime == "onnxruntime int8":
        session = onnxruntime.InferenceSession(quantize_onnx(onnx_bytes(model), calibration),
                                               _quiet_threads(), providers=["CPUExecutionProvider"])
        return lambda images: session.run(["probabilities"], {"images": images})[0]
    content = litert_bytes(model, "int8" if runtime.endswith("int8") else None, calibration)
    batch, single = litert_runner(content), litert_runner(content)
    return lambda images: (single if len(images) == 1 else batch)(images=images)["probabilities"]


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
                         f"ONNX and LiteRT, float and int8")
                for (runtime, folded), run in _runners(depth, variant, Path(directory)).items():
                    run(images)  # warm up
                    run(images[:1])
                    runners[depth, variant, runtime, folded] = run

    throughput: dict[tuple, list[float]] = {case: [] for case in runners}
    latencies: dict[tuple, list[float]] = {case: [] for case in runners}
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
    speed = {(r["depth"], r["variant"], r["runtime"], r["folded"]): r["images_per_second"]
             for r in results}
    for result in results:
        model = result["depth"], result["variant"]
        result["ratio_to_unfolded"] = (result["images_per_second"]
                                       / speed[(*model, "saved_model", False)])
        result["ratio_to_onnx_float"] = (result["images_per_second"]
                                         / speed[(*model, "onnxruntime", True)])
    return {"kind": "inference", "device": describe_device(), "tensorflow": tf.__version__,
            "onnxruntime": onnxruntime.__version__, "batch_size": batch_size, "rounds": rounds,
            "latency_calls": latency_calls, "results": results}


COLUMNS = (
    ("depth", "depth", "{}"), ("variant", "variant", "{}"), ("runtime", "runtime", "{}"),
    ("BN folded", "folded", "{}"), ("images/s", "images_per_second", "{:.0f}"),
    ("vs unfolded", "ratio_to_unfolded", "{:.3f}"), ("vs ONNX", "ratio_to_onnx_float", "{:.2f}"),
    ("batch-1 p50 ms", "latency_ms_p50", "{:.2f}"),
    ("batch-1 p99 ms", "latency_ms_p99", "{:.2f}"))


def summary(report):
    return (f"{report['device']}; TensorFlow {report['tensorflow']}, onnxruntime "
            f"{report['onnxruntime']}; throughput at batch {report['batch_size']} (median of "
            f"{report['rounds']} rounds), batch-1 latency over {report['rounds']} rounds x "
            f"{report['latency_calls']} calls")
