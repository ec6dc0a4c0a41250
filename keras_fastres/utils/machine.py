"""What this machine is, for metrics and benchmarks, and the choices that depend on it: the
device, the library versions, the Keras backend, and whether XLA pays here."""

import importlib.metadata
import os
import platform

import keras
import numpy as np
import tensorflow as tf


def require_tensorflow_backend(what):
    """A ValueError naming the backend when Keras does not run on TensorFlow: the recipes
    (tf.distribute, tf.data) and the exports need it; the models do not."""
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise ValueError(
            f"{what} needs Keras's TensorFlow backend, and KERAS_BACKEND selects {backend!r}. "
            f"Run it with KERAS_BACKEND=tensorflow (the models themselves build, train and load "
            f"on every backend).")


def resolve_jit_compile(jit_compile):
    """XLA as asked, or by default on GPUs only: on CPUs TensorFlow's XLA convolutions were
    1.4x slower than its oneDNN graph kernels (ResNet-20 training steps, the benchmark)."""
    if jit_compile is None:
        return bool(tf.config.list_physical_devices("GPU"))
    return jit_compile


def resolve_steps_per_execution(steps):
    """As asked, or by default 16 with a GPU and 1 on CPUs. On a GPU a ResNet-20 step at batch
    128 takes a few milliseconds, about what a Python round trip (dispatch, callbacks, reading
    the metrics back) costs; 16 steps per call make that 1/16th while the progress bar still
    moves several times a second. On a CPU a step takes 100 ms or more: nothing to save."""
    if steps is None:
        return 16 if tf.config.list_physical_devices("GPU") else 1
    return steps


# The largest training split `data_placement="auto"` copies to an accelerator: a quarter of an
# 8 GB GPU like the paper's GTX 1070 (CIFAR, packed 4 bytes a pixel: 205 MB).
DEVICE_DATA_BYTES = 2 * 2 ** 30


def resolve_data_placement(placement, split_bytes):
    """"host" or "device" for "auto": device with an accelerator when the split fits in
    DEVICE_DATA_BYTES."""
    if placement != "auto":
        return placement
    fits = split_bytes <= DEVICE_DATA_BYTES
    return "device" if tf.config.list_physical_devices("GPU") and fits else "host"


def versions():
    """The versions of the libraries a result depends on (read from the installed packages'
    metadata: nothing imported for it)."""
    return {"keras_fastres": importlib.metadata.version("keras-fastres"),
            "keras": keras.__version__, "tensorflow": tf.__version__,
            "tensorflow_datasets": importlib.metadata.version("tensorflow-datasets"),
            "numpy": np.__version__, "python": platform.python_version()}


def describe_device():
    """The accelerators TensorFlow sees, or the CPU model and core count."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        names = [tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
                 for gpu in gpus]
        return f"{len(gpus)} x GPU: {', '.join(sorted(set(names)))}"
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo
                         if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"CPU: {model}, {os.cpu_count()} cores"
