"""One command for whoever has an accelerator: `fastres-benchmark report --json FILE`.

On whatever device TensorFlow finds, in about 10 minutes on one GPU: the training benchmark
for depths 20 and 110, preact and type1, float32 and the device's fast mixed precision, XLA
off and on; 1 against 16 steps per compiled call at depth 20; and a short synthetic recipe run
with the data on the host and on the device. `quick` runs the same at depth 8 with one round,
for a smoke test (the tests run it on the CPU).
"""

import tempfile
from pathlib import Path

import tensorflow as tf

from keras_fastres.benchmarks import training
from keras_fastres.benchmarks.report import format_markdown
from keras_fastres.training.config import TrainConfig
from keras_fastres.training.run import train
from keras_fastres.utils.machine import describe_device, versions


def fast_mixed_precision():
    """bfloat16 where it is fast without loss scaling (GPUs of compute capability 8.0 and
    later, CPUs with AMX/AVX-512 BF16), float16 on older GPUs."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        capability = tf.config.experimental.get_device_details(gpus[0]).get(
            "compute_capability", (0, 0))
        return "mixed_bfloat16" if tuple(capability) >= (8, 0) else "mixed_float16"
    return "mixed_bfloat16"


def placement_runs(quick, progress):
    """Images/s of one short synthetic recipe run per data placement (the epochs after the
    first, as the recipes time them)."""
    results = []
    with tempfile.TemporaryDirectory() as directory:
        for placement in ("host", "device"):
            progress(f"a short recipe run with the data on the {placement}")
            metrics = train(TrainConfig(
                depth=8 if quick else 20, epochs=2 if quick else 3, source="synthetic",
                synthetic_size=(256, 64) if quick else (10_000, 1_000), seed=0,
                data_placement=placement, output_dir=str(Path(directory) / placement),
                verbose=0))
            results.append({"data_placement": placement, "depth": metrics["depth"],
                            "train_images": metrics["train_images"],
                            "mean_epoch_seconds": metrics["mean_epoch_seconds"],
                            "images_per_second": metrics["images_per_second"]})
    host = results[0]["images_per_second"]
    for result in results:
        result["ratio_to_host"] = result["images_per_second"] / host
    return results


def run_report(quick=False, progress=None):
    """The report as one dict (JSON-ready): device, versions and every figure."""
    progress = progress or (lambda message: None)
    depths, rounds, calls = ((8,), 1, 1) if quick else ((20, 110), 5, 3)
    precisions = ("float32",) if quick else ("float32", fast_mixed_precision())
    models = training.run_benchmark(
        depths, ("type1",) if quick else ("preact", "type1"), rounds=rounds, steps=calls,
        precisions=precisions, jit_compile=(False, True), progress=progress)
    per_call = training.run_benchmark(
        (depths[0],), ("type1",), rounds=rounds, steps=calls,
        steps_per_execution=(1, 4) if quick else (1, 16), progress=progress)
    return {"kind": "report", "device": describe_device(), "versions": versions(),
            "quick": quick, "training": models, "steps_per_execution": per_call,
            "data_placement": placement_runs(quick, progress)}


PLACEMENT_COLUMNS = (
    ("data", "data_placement", "{}"), ("depth", "depth", "{}"),
    ("images", "train_images", "{}"), ("s/epoch", "mean_epoch_seconds", "{:.2f}"),
    ("images/s", "images_per_second", "{:.0f}"), ("vs host", "ratio_to_host", "{:.3f}"))


def format_report(report):
    """The report as Markdown: the three tables under their summaries."""
    placement = {"results": report["data_placement"]}
    return "\n\n".join([
        f"# keras-fastres report{' (quick)' if report['quick'] else ''}: {report['device']}",
        format_markdown(report["training"], training.COLUMNS,
                        training.summary(report["training"])),
        format_markdown(report["steps_per_execution"], training.COLUMNS,
                        "Steps per compiled call: " + training.summary(
                            report["steps_per_execution"])),
        format_markdown(placement, PLACEMENT_COLUMNS,
                        "Short synthetic recipe runs, data on the host (tf.data) and on the "
                        "device (mean of the epochs after the first)")])
