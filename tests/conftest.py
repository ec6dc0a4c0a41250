import os

# Quiet TensorFlow's C++ start-up logging; must be set before TensorFlow is imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import io
import pickle
import tarfile
import time

import numpy as np

from keras_fastres.data import ARCHIVES


def write_cifar_archive(directory, name, train, test, packed=True):
    """Writes (images, labels) splits in the official python-version layout: pickled dicts with
    b"data" (N, 3072) uint8 rows of 1024 red, green, blue values, and the labels list; as the
    .tar.gz that the CIFAR site serves (packed) or as its extracted folder. Returns the path."""
    archive, folder, members, label_key = ARCHIVES[name]
    files = {}
    for (images, labels), split in ((train, "train"), (test, "test")):
        parts = np.array_split(np.arange(len(labels)), len(members[split]))
        for member, index in zip(members[split], parts):
            rows = images[index].transpose(0, 3, 1, 2).reshape(len(index), 3072)
            batch = {b"data": rows.astype(np.uint8), label_key: [int(v) for v in labels[index]],
                     b"batch_label": member.encode()}
            files[member] = pickle.dumps(batch, protocol=2)
    directory.mkdir(parents=True, exist_ok=True)
    if not packed:
        (directory / folder).mkdir()
        for member, content in files.items():
            (directory / folder / member).write_bytes(content)
        return directory / folder
    path = directory / archive
    with tarfile.open(path, "w:gz") as tar:
        for member, content in files.items():
            info = tarfile.TarInfo(f"{folder}/{member}")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return path


def wait_for_backup(run_dir, process, generations=1, timeout=300):
    """Waits until the run in `run_dir` has backed up `generations` finished epochs (at most the
    two it keeps), or `process` ended."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        # A generation is complete once visible (it is renamed into place).
        if len(list((run_dir / "backup").glob("epoch-*"))) >= generations:
            return
        time.sleep(0.02)
