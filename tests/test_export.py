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

from keras_fastres import FastResNet, export_onnx, export_saved_model, fold_batch_norms
from keras_fastres.batch_norm import BatchNorm

VARIANTS = ("v1", "preact", "type1", "type2")
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
# As from a user's shell: TensorFlow's log level unset, so the commands keep it quiet.
USER_ENV = {k: v for k, v in os.environ.items()
            if k not in ("TF_CPP_MIN_LOG_LEVEL", "KERAS_FASTRES_COMMAND")}

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
    for batch in (0, 1, 7):
        out = loaded.signatures["serving_default"](images=tf.constant(images[:batch]))
        results[f"{name}-{batch}-probabilities"] = out["probabilities"].numpy()
        results[f"{name}-{batch}-classes"] = out["classes"].numpy()
    floats = loaded.signatures["serving_float"](images=tf.constant(images.astype(np.float32)))
    results[f"{name}-float-probabilities"] = floats["probabilities"].numpy()
    empty = loaded.signatures["serving_float"](images=tf.zeros([0, 32, 32, 3], tf.float32))
    results[f"{name}-float-empty"] = empty["probabilities"].numpy()
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


def model_with_moved_statistics(variant, shortcut="A", seed=0, num_classes=10):
    """A depth-8 model (3 blocks) whose BN statistics and affine parameters are far from their
    initial values, so that a BN folded wrongly, or not at all, changes the answers."""
    rng = np.random.default_rng(seed)
    model = FastResNet(8, variant, shortcut=shortcut, num_classes=num_classes)
    for weight in model.weights:
        name = weight.path.rsplit("/", 1)[-1]
        if name in ("gamma", "moving_variance"):
            weight.assign(rng.uniform(0.5, 2.0, weight.shape))
        elif name in ("beta", "moving_mean"):
            weight.assign(rng.normal(0.0, 0.5, weight.shape))
    return model


def test_every_variant_serves_without_this_package(tmp_path):
    images = uint8_images()
    np.save(tmp_path / "images.npy", images)
    models, exports = {}, {}
    for variant in VARIANTS:
        models[variant] = model_with_moved_statistics(variant)
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
        # An empty batch is answered with empty outputs (TensorFlow's convolutions would fail).
        assert served[f"{variant}-0-probabilities"].shape == (0, 10)
        assert served[f"{variant}-0-probabilities"].dtype == np.float32
        assert served[f"{variant}-0-classes"].shape == (0,)
        assert served[f"{variant}-float-empty"].shape == (0, 10)


def test_the_signature_def_and_saved_model_cli_run(tmp_path):
    """The SignatureDef that TF Serving and `saved_model_cli show` read, from saved_model.pb
    itself; then `saved_model_cli run`, the tool a user tries first, in a process of its own."""
    from tensorflow.core.protobuf import saved_model_pb2

    model = model_with_moved_statistics("type1", num_classes=100)
    export = export_saved_model(model, tmp_path / "serving")
    saved_model = saved_model_pb2.SavedModel.FromString((export / "saved_model.pb").read_bytes())
    [graph] = [g for g in saved_model.meta_graphs if "serve" in g.meta_info_def.tags]
    signature = graph.signature_def["serving_default"]

    def described(tensor):
        return tf.dtypes.as_dtype(tensor.dtype).name, [d.size for d in tensor.tensor_shape.dim]
    assert described(signature.inputs["images"]) == ("uint8", [-1, 32, 32, 3])
    assert described(signature.outputs["probabilities"]) == ("float32", [-1, 100])
    assert described(signature.outputs["classes"]) == ("int64", [-1])
    cli = shutil.which("saved_model_cli", path=os.path.dirname(sys.executable)) or "saved_model_cli"

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
    floats = tf.saved_model.load(str(tmp_path / "m" / "1")).signatures["serving_float"]
    for bad in (np.nan, np.inf):
        pixels = images.astype(np.float32)
        pixels[1, 3, 4, 0] = bad
        with pytest.raises(tf.errors.InvalidArgumentError,
                           match="images must be finite pixel values"):
            floats(images=tf.constant(pixels))
    for bad, word in ((1000.0, "above 255"), (-1.0, "below 0"), (255.5, "above 255")):
        pixels = images.astype(np.float32)
        pixels[0, 5, 6, 2] = bad
        with pytest.raises(tf.errors.InvalidArgumentError,
                           match=rf"images must be pixel values in \[0, 255\] .*got a value "
                                 rf"{word}"):
            floats(images=tf.constant(pixels))
    edges = images.astype(np.float32)
    edges[0, 0, 0], edges[1, 0, 0] = 0.0, 255.0
    assert floats(images=tf.constant(edges))["probabilities"].shape == (2, 10)


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


def test_exports_at_once_claim_one_version_each(tmp_path, monkeypatch):
    """Two exporters released together at the rename that publishes them: with "auto" the
    later takes the next version; asking for one version, the later is refused; nothing
    published is written into."""
    import threading

    from keras_fastres.serving import export as export_module
    rename, barrier, waited = os.rename, threading.Barrier(2), set()

    def together(source, target):
        if threading.get_ident() not in waited:  # the first attempt of each: at once
            waited.add(threading.get_ident())
            barrier.wait(timeout=30)
        return rename(source, target)
    monkeypatch.setattr(export_module.os, "rename", together)

    def write(content):
        return lambda folder: (folder / "model.onnx").write_text(content)
    for version in ("auto", 3):
        root, results = tmp_path / f"serving-{version}", {}
        waited.clear()
        barrier.reset()

        def export(name, root=root, version=version, results=results):
            try:
                results[name] = export_module.publish(root, version, write(name))
            except FileExistsError as error:
                results[name] = error
        threads = [threading.Thread(target=export, args=(name,)) for name in ("a", "b")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        published = {p.name: (p / "model.onnx").read_text() for p in root.iterdir()}
        if version == "auto":
            assert sorted(published) == ["1", "2"] and sorted(published.values()) == ["a", "b"]
            assert {results[n].name for n in "ab"} == {"1", "2"}
        else:
            assert list(published) == ["3"]
            refused = [n for n in "ab" if isinstance(results[n], FileExistsError)]
            assert len(refused) == 1 and published["3"] != refused[0]


def test_an_onnx_export_never_writes_into_a_published_version(tmp_path):
    model = FastResNet(8)
    export_onnx(model, tmp_path / "triton", version=1)
    before = (tmp_path / "triton" / "1" / "model.onnx").read_bytes()
    with pytest.raises(FileExistsError, match="never overwrites"):
        export_onnx(model, tmp_path / "triton", version=1)
    assert (tmp_path / "triton" / "1" / "model.onnx").read_bytes() == before
    assert export_onnx(model, tmp_path / "triton", version="auto") == (
        tmp_path / "triton" / "2" / "model.onnx")


def test_a_base_folder_holds_one_format(tmp_path, capsys):
    """TF Serving loads the highest version of its base: an ONNX version 2 beside a
    SavedModel version 1 would break it. Each format is refused in another's base."""
    from keras_fastres.commands import export
    model = FastResNet(8)
    model.save(tmp_path / "model.keras")
    export_saved_model(model, tmp_path / "serving")
    for args in (["--format", "onnx"], ["--format", "litert"]):
        assert export.main(["--model", str(tmp_path / "model.keras"), "--export-dir",
                            str(tmp_path / "serving"), *args]) == 2
        error = capsys.readouterr().err
        assert (f"{tmp_path / 'serving'} holds saved_model versions (1/saved_model.pb)" in error
                and f"e.g. {tmp_path / 'serving'}-{args[1]}" in error), error
    assert [p.name for p in (tmp_path / "serving").iterdir()] == ["1"]
    assert (tmp_path / "serving" / "1" / "saved_model.pb").is_file()
    export_onnx(model, tmp_path / "serving-onnx", version="auto")
    with pytest.raises(ValueError, match="holds onnx versions"):
        export_saved_model(model, tmp_path / "serving-onnx")


def test_predict_says_what_a_folder_holds_instead_of_a_usable_model(tmp_path, capsys):
    import keras
    from PIL import Image

    from keras_fastres.commands import predict
    Image.fromarray(uint8_images(1)[0]).save(tmp_path / "cat.png")
    model = FastResNet(8)
    (tmp_path / "nothing").mkdir()
    (tmp_path / "notes.txt").write_text("no model")
    empty = tmp_path / "empty" / "1"
    empty.mkdir(parents=True)
    (empty / "saved_model.pb").write_bytes(b"")
    truncated = export_saved_model(model, tmp_path / "truncated")
    for part in (truncated / "variables").glob("variables.data*"):
        part.write_bytes(part.read_bytes()[:100])
    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx" / "model.onnx").write_bytes(b"\x08\x07 not a protobuf")
    keras_export = tmp_path / "keras_export"
    model.export(str(keras_export), verbose=False)
    for folder, code, message in (  # 2: not what the command reads; 1: damaged
            (tmp_path / "nothing", 2, "No model in"),
            (tmp_path / "notes.txt", 2, "is not a model this command reads"),
            (tmp_path / "empty", 1, f"{empty} is not a complete SavedModel"),
            (tmp_path / "truncated", 1, f"{truncated} is not a complete SavedModel"),
            (tmp_path / "onnx", 1, f"{tmp_path / 'onnx' / 'model.onnx'} is not a complete ONNX"),
            (keras_export, 2, "takes images float32, not the uint8 images of a fastres-export")):
        assert predict.main([str(folder), str(tmp_path / "cat.png")]) == code
        error = capsys.readouterr().err
        assert error.startswith("error: ") and error.count("\n") == 1, error
        assert message in error, error
    assert keras.backend.backend() == "tensorflow"


def _half_written_save(obj, export_dir, *args, **kwargs):
    os.makedirs(os.path.join(export_dir, "variables"))
    open(os.path.join(export_dir, "saved_model.pb"), "wb").close()
    raise RuntimeError("disk full")


def _full_disk_in_tensorflow(obj, export_dir, *args, **kwargs):
    os.makedirs(os.path.join(export_dir, "variables"))
    raise tf.errors.ResourceExhaustedError(None, None, "disk full\n\t[[node SaveV2]] ...")


@pytest.mark.parametrize("target, failure", [
    ("tensorflow.saved_model.save", _half_written_save),           # while writing
    ("tensorflow.saved_model.save", _full_disk_in_tensorflow),     # TensorFlow's own error
    ("keras_fastres.serving.export.os.rename", OSError("disk full")),  # written, not in place
])
def test_an_interrupted_export_leaves_nothing_behind(tmp_path, target, failure):
    root = tmp_path / "serving"
    with mock.patch(target, side_effect=failure):
        with pytest.raises((RuntimeError, OSError), match="disk full") as error:
            export_saved_model(FastResNet(8), root)
    assert "\n" not in str(error.value)  # one line, whatever raised it
    assert list(root.iterdir()) == []
    assert export_saved_model(FastResNet(8), root) == root / "1"


def test_export_refuses_a_model_without_a_fixed_image_size(tmp_path):
    with pytest.raises(ValueError, match="fixed"):
        export_saved_model(FastResNet(8, input_shape=(None, None, 3)), tmp_path / "m")


def test_export_cli_and_predict_on_image_files(tmp_path, capsys):
    from PIL import Image

    from keras_fastres.commands import export, predict

    model = model_with_moved_statistics("type1")
    model.save(tmp_path / "model.keras")
    assert export.main(["--model", str(tmp_path), "--export-dir", str(tmp_path / "serving")]) == 0
    assert capsys.readouterr().out == f"Wrote {tmp_path / 'serving' / '1'}\n"
    assert (tmp_path / "serving" / "1" / "saved_model.pb").is_file()

    pixels = uint8_images(1)[0]
    Image.fromarray(pixels).save(tmp_path / "exact.png")
    Image.fromarray(pixels).resize((96, 64)).save(tmp_path / "large.jpg")
    assert predict.main([str(tmp_path / "serving"), str(tmp_path / "exact.png"),
                         str(tmp_path / "large.jpg"), "--top", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[1].startswith(str(tmp_path / "large.jpg"))
    # A model without class names answers with indices (no names guessed from the count).
    best = int(np.argmax(model.predict(pixels[None].astype("float32"), verbose=0)))
    assert lines[0].split(": ")[1].startswith(f"class {best} ")
    assert all(line.count("%") == 2 for line in lines)


def test_predict_resizes_images_to_the_model_with_antialiasing(tmp_path):
    from PIL import Image

    from keras_fastres import ImagePreparation
    from keras_fastres.serving.predict import load_image

    pixels = uint8_images(1)[0]
    Image.fromarray(pixels).save(tmp_path / "exact.png")
    np.testing.assert_array_equal(load_image(tmp_path / "exact.png", ImagePreparation(32)), pixels)  # as is
    # 96x64, left half red and right half blue, to 32x32: each output column covers 3 input
    # columns and each row 2; away from the edge between the halves every pixel keeps its
    # colour exactly, and the two columns at the edge are blends.
    halves = np.zeros((64, 96, 3), np.uint8)
    halves[:, :48, 0] = 255
    halves[:, 48:, 2] = 255
    Image.fromarray(halves).save(tmp_path / "halves.png")
    resized = np.asarray(load_image(tmp_path / "halves.png", ImagePreparation(32)))
    assert resized.shape == (32, 32, 3) and resized.dtype == np.uint8
    np.testing.assert_array_equal(resized[:, :15], np.broadcast_to([255, 0, 0], (32, 15, 3)))
    np.testing.assert_array_equal(resized[:, 17:], np.broadcast_to([0, 0, 255], (32, 15, 3)))
    edge = resized[:, 15:17].astype(int)
    assert (edge[..., 0] + edge[..., 2] >= 254).all() and (edge[..., 1] == 0).all()
    assert 0 < edge[0, 0, 2] < 255 and 0 < edge[0, 1, 0] < 255  # blended: antialiased
    # A downscale by 4 of a checkerboard of single pixels averages it to grey; without
    # antialiasing a resize would sample the squares and keep black or white.
    board = (np.indices((128, 128)).sum(axis=0) % 2 * 255).astype(np.uint8)
    Image.fromarray(np.repeat(board[..., None], 3, axis=-1)).save(tmp_path / "board.png")
    grey = np.asarray(load_image(tmp_path / "board.png", ImagePreparation(32))).astype(int)
    assert np.abs(grey - 128).max() <= 1


def test_bad_inputs_to_the_export_and_predict_commands_are_one_line_each(tmp_path, capsys):
    from keras_fastres.commands import export, predict

    export_dir = export_saved_model(FastResNet(8), tmp_path / "serving")
    FastResNet(8).save(tmp_path / "model.keras")
    written = (tmp_path / "model.keras").read_bytes()
    (tmp_path / "truncated.keras").write_bytes(written[: len(written) // 2])
    (tmp_path / "empty.keras").write_bytes(b"")
    (tmp_path / "broken.png").write_bytes(b"not an image")

    def one_line(command, argv, code, message, by_argparse=False):
        if by_argparse:  # argparse refuses the argument itself
            with pytest.raises(SystemExit) as exit:
                command.main(argv)
            assert exit.value.code == code
            error = capsys.readouterr().err.splitlines()[-1]
        else:
            assert command.main(argv) == code
            error = capsys.readouterr().err
            assert error.count("\n") == 1, error
        assert message in error, error

    # A damaged file is a failure (exit 1); a wrong argument is a usage error (exit 2).
    one_line(predict, [str(export_dir), str(tmp_path / "broken.png")], 1, "Cannot read")
    one_line(predict, [str(export_dir), str(tmp_path)], 2, f"{tmp_path} is a folder")
    one_line(predict, [str(export_dir), str(tmp_path / "cat.png")], 2, "no such image file")
    one_line(predict, [str(tmp_path / "nothing"), str(tmp_path / "broken.png")], 2,
             f"{tmp_path / 'nothing'}: no such model file or folder")
    one_line(predict, [str(export_dir), str(tmp_path / "broken.png"), "--top", "0"], 2,
             "--top: must be an integer >= 1, got '0'", by_argparse=True)
    target = ["--export-dir", str(tmp_path / "out")]
    one_line(export, ["--model", str(tmp_path / "nothing"), *target], 2, "No model at")
    for damaged in ("truncated.keras", "empty.keras"):
        one_line(export, ["--model", str(tmp_path / damaged), *target], 1,
                 f"{tmp_path / damaged} is not a complete .keras file")
    # One byte flipped inside the compressed weights: still a zip, but its CRC fails.
    flipped = bytearray(written)
    flipped[len(written) // 2] ^= 0xFF
    (tmp_path / "flipped.keras").write_bytes(bytes(flipped))
    one_line(export, ["--model", str(tmp_path / "flipped.keras"), *target], 1,
             f"{tmp_path / 'flipped.keras'} cannot be loaded as a Keras model")
    one_line(export, ["--model", str(tmp_path / "model.keras"), *target, "--version", "0"], 2,
             "--version: must be an integer >= 1, got '0'", by_argparse=True)
    assert not (tmp_path / "out").exists()


def test_exports_killed_while_writing_leave_temporaries_the_next_export_removes(tmp_path):
    root = tmp_path / "serving"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    (root / f".1.incomplete-{dead}" / "variables").mkdir(parents=True)  # killed mid-write
    (root / f".model.onnx.incomplete-{dead}").write_bytes(b"half")
    (root / f".2.incomplete-{os.getpid()}").mkdir()  # a running export's: left alone
    assert export_saved_model(FastResNet(8), root) == root / "1"
    assert sorted(p.name for p in root.iterdir()) == [f".2.incomplete-{os.getpid()}", "1"]


def saved_model_ops(export_dir, signature="serving_default"):
    """Op types in a SavedModel signature's graph and every function it calls."""
    graph_def = tf.saved_model.load(str(export_dir)).signatures[signature].graph.as_graph_def()
    return [node.op for node in graph_def.node] + [
        node.op for function in graph_def.library.function for node in function.node_def]


# BNs left after folding, at depth 8 (3 blocks): type1 keeps its final BN only, preact the first
# BN of each block and the final one, v1 none (stem, blocks and option-B projections all fold).
BNS_AFTER_FOLDING = {"type1": 1, "preact": 3 + 1, "v1": 0, "type2": 3 + 1}
BNS_UNFOLDED = {"type1": 3 + 1, "preact": 2 * 3 + 1, "v1": 1 + 2 * 3 + 2, "type2": 3 + 1}


@pytest.mark.parametrize("variant, shortcut", [("v1", "B"), ("preact", "A"), ("type1", "A"),
                                               ("type2", "A")])
def test_folding_keeps_the_answers_and_leaves_the_model_alone(variant, shortcut):
    model = model_with_moved_statistics(variant, shortcut)
    weights = [np.array(w) for w in model.weights]
    folded = fold_batch_norms(model)
    images = uint8_images(8).astype("float32")
    np.testing.assert_allclose(folded.predict(images, verbose=0), model.predict(images, verbose=0),
                               atol=1e-5)
    bns = [layer for layer in folded._flatten_layers() if isinstance(layer, BatchNorm)]
    assert sum(not bn.folded for bn in bns) == BNS_AFTER_FOLDING[variant]
    assert all(np.array_equal(a, np.array(w)) for a, w in zip(weights, model.weights))
    assert not any(layer.folded for layer in model._flatten_layers()
                   if isinstance(layer, BatchNorm))


def test_a_folded_copy_refuses_to_train():
    folded = fold_batch_norms(FastResNet(8))
    with pytest.raises(ValueError, match="folded into the convolution before it, for inference"):
        folded(uint8_images(2).astype("float32"), training=True)


@pytest.mark.parametrize("variant, shortcut", [("v1", "B"), ("preact", "A"), ("type1", "A")])
def test_folded_saved_model_answers_the_same_with_fewer_batch_norms(variant, shortcut, tmp_path):
    model = model_with_moved_statistics(variant, shortcut)
    folded = export_saved_model(model, tmp_path / "folded")
    unfolded = export_saved_model(model, tmp_path / "unfolded", fold_batch_norm=False)
    assert saved_model_ops(folded).count("FusedBatchNormV3") == BNS_AFTER_FOLDING[variant]
    assert saved_model_ops(unfolded).count("FusedBatchNormV3") == BNS_UNFOLDED[variant]
    images = uint8_images(7)
    expected = model.predict(images.astype("float32"), verbose=0)
    for export in (folded, unfolded):
        loaded = tf.saved_model.load(str(export))
        for signature, batch in (("serving_default", images),
                                 ("serving_float", images.astype(np.float32))):
            out = loaded.signatures[signature](images=tf.constant(batch))
            np.testing.assert_allclose(out["probabilities"], expected, atol=1e-4)
            # The same function as an attribute of the loaded object, as Keras's exports have it.
            as_attribute = getattr(loaded, signature)(images=tf.constant(batch))
            np.testing.assert_array_equal(as_attribute["probabilities"], out["probabilities"])


SERVE_ONNX_WITHOUT_KERAS = """
import sys, json
import numpy as np
import onnxruntime
paths, inputs, outputs = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
images = np.load(inputs)
results = {}
for name, path in paths.items():
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    results[f"{name}-signature"] = np.array(json.dumps({
        "inputs": [(i.name, i.type, i.shape) for i in session.get_inputs()],
        "outputs": [(o.name, o.type, o.shape) for o in session.get_outputs()]}))
    for batch in (1, 7):
        probabilities, classes = session.run(["probabilities", "classes"],
                                             {"images": images[:batch]})
        results[f"{name}-{batch}-probabilities"] = probabilities
        results[f"{name}-{batch}-classes"] = classes
np.savez(outputs, **results)
assert not {"keras", "keras_fastres", "tensorflow"} & set(sys.modules), "imported Keras or TF"
"""


def test_onnx_model_serves_on_onnxruntime_without_keras(tmp_path):
    import onnx
    images = uint8_images()
    np.save(tmp_path / "images.npy", images)
    models, paths = {}, {}
    for variant, shortcut in (("v1", "B"), ("preact", "A"), ("type1", "A")):
        models[variant] = model_with_moved_statistics(variant, shortcut)
        paths[variant] = str(export_onnx(models[variant], tmp_path / f"{variant}.onnx"))
        graph = onnx.load(paths[variant]).graph
        assert [node.op_type for node in graph.node].count("BatchNormalization") == \
            BNS_AFTER_FOLDING[variant]
    site_dir = site_without_keras(tmp_path / "site")
    result = subprocess.run(
        [sys.executable, "-S", "-c", SERVE_ONNX_WITHOUT_KERAS, json.dumps(paths),
         str(tmp_path / "images.npy"), str(tmp_path / "out.npz")],
        capture_output=True, text=True, timeout=300, env={**ENV, "PYTHONPATH": str(site_dir)})
    assert result.returncode == 0, result.stderr[-3000:]
    out = np.load(tmp_path / "out.npz")
    for variant, model in models.items():
        signature = json.loads(str(out[f"{variant}-signature"]))
        assert [[name, kind, shape[1:]] for name, kind, shape in signature["inputs"]] == [
            ["images", "tensor(uint8)", [32, 32, 3]]]  # any batch size
        assert [(name, kind) for name, kind, _ in signature["outputs"]] == [
            ("probabilities", "tensor(float)"), ("classes", "tensor(int64)")]
        expected = model.predict(images.astype("float32"), verbose=0)
        for batch in (1, 7):
            np.testing.assert_allclose(out[f"{variant}-{batch}-probabilities"], expected[:batch],
                                       atol=1e-4)
            np.testing.assert_array_equal(out[f"{variant}-{batch}-classes"],
                                          np.argmax(expected[:batch], axis=1))


def test_onnx_export_never_overwrites(tmp_path):
    path = export_onnx(FastResNet(8), tmp_path / "model.onnx")
    written = path.read_bytes()
    with pytest.raises(FileExistsError, match="never overwrites"):
        export_onnx(FastResNet(8, "preact"), path)
    assert path.read_bytes() == written
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no temporary left


def test_export_cli_writes_onnx_quietly_and_unfolded_saved_models(tmp_path, capsys):
    from keras_fastres.commands import export

    model_with_moved_statistics("preact").save(tmp_path / "model.keras")
    # The ONNX export as a user's shell runs it (the process's quiet start is the subject): no
    # start-up lines, no logging tracebacks from handlers left on a closed stream, no
    # deprecation notes of tf2onnx's TensorFlow calls.
    exported = subprocess.run(
        [sys.executable, "-m", "keras_fastres.commands.export", "--model",
         str(tmp_path / "model.keras"), "--export-dir", str(tmp_path / "serving"), "--format",
         "onnx"], capture_output=True, text=True, env=USER_ENV, timeout=300)
    assert exported.returncode == 0, exported.stderr
    assert exported.stderr == ""
    assert exported.stdout == f"Wrote {tmp_path / 'serving' / '1' / 'model.onnx'}\n"
    assert export.main(["--model", str(tmp_path / "model.keras"), "--export-dir",
                        str(tmp_path / "saved"), "--no-fold"]) == 0
    assert capsys.readouterr().out == f"Wrote {tmp_path / 'saved' / '1'}\n"
    assert saved_model_ops(tmp_path / "saved" / "1").count("FusedBatchNormV3") == (
        BNS_UNFOLDED["preact"])


def test_onnx_export_without_its_extra_says_what_to_install(tmp_path, monkeypatch, capsys):
    from keras_fastres.commands.export import main
    FastResNet(8).save(tmp_path / "model.keras")
    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # as if the onnx extra were missing
    assert main(["--model", str(tmp_path / "model.keras"), "--export-dir",
                 str(tmp_path / "serving"), "--format", "onnx"]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and 'pip install "keras-fastres[onnx]"' in error
    assert not (tmp_path / "serving").exists()


def test_a_class_names_file_that_does_not_match_the_model_is_named(tmp_path, capsys):
    from PIL import Image

    from keras_fastres.commands import predict
    export = export_saved_model(FastResNet(8, num_classes=3, class_names=["a", "b", "c"],
                                           normalization=None),
                                tmp_path / "serving")
    names = export / "assets" / "class_names.txt"
    Image.fromarray(uint8_images(1)[0]).save(tmp_path / "cat.png")
    for content, message in ((b"a\nb\n", "names 2 classes and the model has 3"),
                             (b"a\n\xff\nc\n", "is not UTF-8 text")):
        names.write_bytes(content)
        assert predict.main([str(export), str(tmp_path / "cat.png")]) == 1
        error = capsys.readouterr().err
        assert error == f"error: {names} {message}" + error.split(message, 1)[1]
        assert error.count("\n") == 1 and "export the model again" in error
    names.write_bytes("a\u2028x\nb\rc\nd\n".encode())  # lines end at \n only, as written
    assert predict.main([str(export), str(tmp_path / "cat.png"), "--top", "3"]) == 0
    printed = capsys.readouterr().out
    assert "a\u2028x " in printed and "b\rc " in printed and "d " in printed


def test_version_folders_are_ascii_numbers_up_to_int64(tmp_path, capsys):
    """TF Serving reads <base>/<int64 version>/: a folder named '²' is no version (int() of it
    failed), a version beyond int64 is refused, and a base that is a file is named."""
    from keras_fastres.commands import export
    FastResNet(8).save(tmp_path / "model.keras")
    (tmp_path / "serving" / "²").mkdir(parents=True)
    assert export.main(["--model", str(tmp_path / "model.keras"), "--export-dir",
                        str(tmp_path / "serving")]) == 0
    assert capsys.readouterr().out == f"Wrote {tmp_path / 'serving' / '1'}\n"
    (tmp_path / "serving" / "007").mkdir()  # a version 7 written by hand, leading zeros
    (tmp_path / "serving" / "007" / "saved_model.pb").write_bytes(b"")
    from keras_fastres.serving.predict import find_saved_model
    assert find_saved_model(tmp_path / "serving") == tmp_path / "serving" / "007"
    for argv, message in ((["--version", str(2 ** 63)], "an integer from 1 to "
                                                         "9223372036854775807"),
                          (["--export-dir", str(tmp_path / "model.keras")], "is a file")):
        target = ["--export-dir", str(tmp_path / "serving")] if argv[0] == "--version" else []
        assert export.main(["--model", str(tmp_path / "model.keras"), *target, *argv]) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and message in error, error
    assert sorted(p.name for p in (tmp_path / "serving").iterdir()) == ["007", "1", "²"]
