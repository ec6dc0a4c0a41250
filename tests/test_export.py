"""Exported SavedModels serve with plain TensorFlow, exactly like the Keras model."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf

from keras_fastres import FastResNet, export_saved_model
from keras_fastres.data import CLASS_NAMES

VARIANTS = ("v1", "preact", "type1", "type2")
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}

# Runs in a fresh interpreter that sees this environment's packages except Keras and
# keras_fastres (see `site_without_keras`): TensorFlow only, as on a serving machine.
SERVE_WITHOUT_PACKAGE = """
import sys, json
import numpy as np
import tensorflow as tf
exports, inputs, outputs = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
images = np.load(inputs)
results = {}
for name, path in exports.items():
    loaded = tf.saved_model.load(path)
    for batch in (1, 7):
        out = loaded.signatures["serving_default"](images=tf.constant(images[:batch]))
        results[f"{name}-{batch}-probabilities"] = out["probabilities"].numpy()
        results[f"{name}-{batch}-classes"] = out["classes"].numpy()
    floats = loaded.signatures["serving_float"](images=tf.constant(images.astype(np.float32)))
    results[f"{name}-float-probabilities"] = floats["probabilities"].numpy()
np.savez(outputs, **results)
assert "keras_fastres" not in sys.modules and "keras" not in sys.modules, "imported Keras"
"""


def site_without_keras(directory):
    """A folder of links to this environment's site-packages entries, less Keras, tf_keras and
    keras_fastres (and the .pth files that add the editable checkout), for `python -S`."""
    import site
    directory.mkdir()
    for site_dir in map(Path, site.getsitepackages()):
        for entry in site_dir.iterdir():
            name = entry.name.lower()
            if name.startswith(("keras", "tf_keras", "__editable__")) or name.endswith(".pth"):
                continue
            if not (directory / entry.name).exists():
                (directory / entry.name).symlink_to(entry)
    return directory


def uint8_images(batch=7, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)


def trained_model(variant, depth=8, num_classes=10):
    """A model whose BN statistics and weights have moved off their initial values."""
    model = FastResNet(depth, variant, num_classes=num_classes)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    images = uint8_images(32, seed=1).astype("float32")
    model.fit(images, np.arange(32) % num_classes, epochs=1, batch_size=16, verbose=0)
    return model


def test_every_variant_serves_without_this_package(tmp_path):
    images = uint8_images()
    np.save(tmp_path / "images.npy", images)
    models, exports = {}, {}
    for variant in VARIANTS:
        models[variant] = trained_model(variant)
        exports[variant] = str(export_saved_model(models[variant], tmp_path / variant))
    site_dir = site_without_keras(tmp_path / "site")
    result = subprocess.run(
        [sys.executable, "-S", "-c", SERVE_WITHOUT_PACKAGE, json.dumps(exports),
         str(tmp_path / "images.npy"), str(tmp_path / "out.npz")],
        capture_output=True, text=True, env={**ENV, "PYTHONPATH": str(site_dir)},
        cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    served = np.load(tmp_path / "out.npz")
    for variant, model in models.items():
        expected = model.predict(images.astype("float32"), verbose=0)
        for batch in (1, 7):
            probabilities = served[f"{variant}-{batch}-probabilities"]
            assert probabilities.dtype == np.float32 and probabilities.shape == (batch, 10)
            assert np.max(np.abs(probabilities - expected[:batch])) < 1e-5
            classes = served[f"{variant}-{batch}-classes"]
            assert classes.dtype == np.int64
            np.testing.assert_array_equal(classes, np.argmax(expected[:batch], axis=1))
        assert np.max(np.abs(served[f"{variant}-float-probabilities"] - expected)) < 1e-5


def test_saved_model_cli_shows_and_runs_the_signature(tmp_path):
    model = trained_model("type1", num_classes=100)
    export = export_saved_model(model, tmp_path / "serving")
    cli = shutil.which("saved_model_cli", path=os.path.dirname(sys.executable)) or "saved_model_cli"
    shown = subprocess.run([cli, "show", "--dir", str(export), "--tag_set", "serve",
                            "--signature_def", "serving_default"],
                           capture_output=True, text=True, env=ENV, timeout=120)
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert "inputs['images']" in text and "DT_UINT8" in text and "(-1, 32, 32, 3)" in text
    assert "outputs['probabilities']" in text and "(-1, 100)" in text
    assert "outputs['classes']" in text and "DT_INT64" in text

    images = uint8_images(5)
    np.save(tmp_path / "batch.npy", images)
    ran = subprocess.run([cli, "run", "--dir", str(export), "--tag_set", "serve",
                          "--signature_def", "serving_default",
                          "--inputs", f"images={tmp_path / 'batch.npy'}",
                          "--outdir", str(tmp_path / "cli_out")],
                         capture_output=True, text=True, env=ENV, timeout=120)
    assert ran.returncode == 0, ran.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "cli_out" / "classes.npy"),
                                  np.argmax(model.predict(images.astype("float32"), verbose=0), 1))


def test_wrong_inputs_are_refused_not_converted(tmp_path):
    serve = tf.saved_model.load(str(export_saved_model(FastResNet(8), tmp_path / "m")))
    serve = serve.signatures["serving_default"]
    images = uint8_images(2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="expected to be a uint8"):
        serve(images=tf.constant(images.astype(np.float32)))
    for wrong in (images[0], images[:, :16], images[..., :1], images[None]):
        with pytest.raises(tf.errors.InvalidArgumentError,
                           match=r"images must have shape \[batch, 32, 32, 3\]"):
            serve(images=tf.constant(wrong))


def test_versions_follow_tf_serving_and_are_never_overwritten(tmp_path):
    model = FastResNet(8)
    root = tmp_path / "cifar10"
    assert export_saved_model(model, root) == root / "1"
    assert export_saved_model(model, root) == root / "2"
    assert export_saved_model(model, root, version=10) == root / "10"
    stamp = (root / "1" / "saved_model.pb").stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="never overwrites"):
        export_saved_model(model, root, version=1)
    assert (root / "1" / "saved_model.pb").stat().st_mtime_ns == stamp
    plain = export_saved_model(model, tmp_path / "plain", version=None)
    assert (plain / "saved_model.pb").is_file()
    with pytest.raises(FileExistsError):
        export_saved_model(model, plain, version=None)
    assert sorted(p.name for p in root.iterdir()) == ["1", "10", "2"]


def _half_written_save(obj, export_dir, *args, **kwargs):
    os.makedirs(os.path.join(export_dir, "variables"))
    open(os.path.join(export_dir, "saved_model.pb"), "wb").close()
    raise RuntimeError("disk full")


@pytest.mark.parametrize("target, failure", [
    ("tensorflow.saved_model.save", _half_written_save),           # while writing
    ("keras_fastres.export.os.rename", OSError("disk full")),      # written, not yet in place
])
def test_an_interrupted_export_leaves_nothing_behind(tmp_path, target, failure):
    root = tmp_path / "serving"
    with mock.patch(target, side_effect=failure):
        with pytest.raises((RuntimeError, OSError), match="disk full"):
            export_saved_model(FastResNet(8), root)
    assert list(root.iterdir()) == []
    assert export_saved_model(FastResNet(8), root) == root / "1"


def test_export_refuses_a_model_without_a_fixed_image_size(tmp_path):
    with pytest.raises(ValueError, match="fixed"):
        export_saved_model(FastResNet(8, input_shape=(None, None, 3)), tmp_path / "m")


def test_export_cli_and_predict_on_image_files(tmp_path):
    from PIL import Image

    model = trained_model("type1")
    model.save(tmp_path / "model.keras")
    exported = subprocess.run(
        [sys.executable, "-m", "keras_fastres.export", "--model", str(tmp_path),
         "--export-dir", str(tmp_path / "serving")],
        capture_output=True, text=True, env=ENV, timeout=300)
    assert exported.returncode == 0, exported.stderr
    assert (tmp_path / "serving" / "1" / "saved_model.pb").is_file()

    pixels = uint8_images(1)[0]
    Image.fromarray(pixels).save(tmp_path / "exact.png")
    Image.fromarray(pixels).resize((96, 64)).save(tmp_path / "large.jpg")
    predicted = subprocess.run(
        [sys.executable, "-m", "keras_fastres.predict", str(tmp_path / "serving"),
         str(tmp_path / "exact.png"), str(tmp_path / "large.jpg"), "--top", "2"],
        capture_output=True, text=True, env=ENV, timeout=300)
    assert predicted.returncode == 0, predicted.stderr
    lines = predicted.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[1].startswith(str(tmp_path / "large.jpg"))
    best = CLASS_NAMES["cifar10"][int(np.argmax(model.predict(pixels[None].astype("float32"),
                                                              verbose=0)))]
    assert lines[0].split(": ")[1].startswith(f"{best} ")
    assert all(line.count("%") == 2 for line in lines)

    (tmp_path / "broken.png").write_bytes(b"not an image")
    broken = subprocess.run(
        [sys.executable, "-m", "keras_fastres.predict", str(tmp_path / "serving"),
         str(tmp_path / "broken.png")], capture_output=True, text=True, env=ENV, timeout=300)
    assert broken.returncode == 1 and "Cannot read" in broken.stderr

    missing = subprocess.run(
        [sys.executable, "-m", "keras_fastres.export", "--model", str(tmp_path / "nothing"),
         "--export-dir", str(tmp_path / "x")], capture_output=True, text=True, env=ENV)
    assert missing.returncode == 1 and "No model at" in missing.stderr
