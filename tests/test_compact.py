"""Small and fast exports on a model that learned something: the digits-as-folder run,
exported as int8 ONNX and as LiteRT (float and full integer), checked against the float
model; LiteRT run without Keras or this package; fastres-predict on every format."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_own_images import WORDS

from keras_fastres.commands.export import main as export_main
from keras_fastres.commands.predict import main as predict_main


def exported(args, run, target, capsys):
    assert export_main(["--model", str(run), "--export-dir", str(target), *args]) == 0, (
        capsys.readouterr().err)
    out, err = capsys.readouterr()
    # The run's folder holds a damaged file (conftest.digits_run): training said so, not export.
    assert "warning:" not in err, err
    return Path(re.search(r"Wrote (.*)", out).group(1)), out


def test_int8_models_agree_with_the_float_model_and_are_small(digits_run, tmp_path, capsys):
    import onnxruntime

    from keras_fastres.serving.compact import litert_runner
    from keras_fastres.training.run import run_data

    _, run = digits_run
    float_onnx, _ = exported(["--format", "onnx"], run, tmp_path / "onnx", capsys)
    int8_onnx, said = exported(["--format", "onnx", "--quantize", "int8"], run,
                               tmp_path / "onnx", capsys)
    assert int8_onnx == tmp_path / "onnx" / "2" / "model.onnx"
    assert re.search(r"int8 against float on 397 test images: top-1 agreement [\d.]+%, test "
                     r"error [\d.]+% \(float [\d.]+%\)", said), said
    float_litert, _ = exported(["--format", "litert"], run, tmp_path / "litert", capsys)
    int8_litert, said = exported(["--format", "litert", "--quantize", "int8"], run,
                                 tmp_path / "litert", capsys)
    assert "top-1 agreement" in said and int8_litert.name == "model.tflite"
    for small in (int8_onnx, int8_litert):
        assert small.stat().st_size <= 0.35 * float_onnx.stat().st_size, small

    test = run_data(run).test
    images, labels = np.asarray(test.images), test.labels
    sessions = [onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                for path in (float_onnx, int8_onnx)]
    reference, onnx_int8 = (session.run(["classes"], {"images": images})[0]
                            for session in sessions)
    litert = [litert_runner(path.read_bytes())(images=images) for path in
              (float_litert, int8_litert)]
    assert litert[1]["probabilities"].dtype == np.uint8  # full integer: steps of 1/256
    for classes in (onnx_int8, litert[0]["classes"], litert[1]["classes"]):
        assert np.mean(classes == reference) >= 0.99
        assert np.mean(classes != labels) <= np.mean(reference != labels) + 0.01
    # The int8 ONNX keeps the float model's interface and metadata.
    meta = sessions[1].get_modelmeta().custom_metadata_map
    assert json.loads(meta["class_names"]) == sorted(WORDS)
    assert json.loads(meta["preparation"]) == {"image_size": [16, 16], "resize": "stretch"}
    assert [i.name for i in sessions[1].get_inputs()] == ["images"]
    assert (int8_litert.parent / "class_names.txt").read_text().split() == sorted(WORDS)
    assert json.loads((int8_litert.parent / "preparation.json").read_text()) == json.loads(
        meta["preparation"])


def test_litert_runs_where_keras_and_this_package_cannot_be_imported(digits_run, tmp_path,
                                                                      capsys):
    """A phone's view: the .tflite file, its class_names.txt, and a LiteRT interpreter."""
    root, run = digits_run
    model, _ = exported(["--format", "litert", "--quantize", "int8"], run, tmp_path / "lite",
                        capsys)
    files = sorted((root / "test" / "seven").glob("*.png"))[:5]
    script = f"""
import sys
for blocked in ("keras", "keras_fastres", "tensorflow"):
    sys.modules[blocked] = None  # importing any of them now fails
import numpy as np
from PIL import Image
from ai_edge_litert.interpreter import Interpreter
runner = Interpreter(model_path={str(model)!r}).get_signature_runner("serving_default")
names = open({str(model.parent / "class_names.txt")!r}, encoding="utf-8").read().split("\\n")
images = np.stack([np.asarray(Image.open(p).convert("RGB").resize((16, 16))) for p in
                   {[str(f) for f in files]!r}])
print(" ".join(names[c] for c in runner(images=images)["classes"]))
"""
    done = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    answers = done.stdout.split()
    assert len(answers) == 5 and answers.count("seven") >= 4, answers


def test_predict_reads_every_format_and_goes_past_an_unreadable_image(digits_run, tmp_path,
                                                                      capsys):
    root, run = digits_run
    onnx, _ = exported(["--format", "onnx", "--quantize", "int8"], run, tmp_path / "o",
                       capsys)
    litert, _ = exported(["--format", "litert"], run, tmp_path / "l", capsys)
    files = [str(f) for f in sorted((root / "test").rglob("*.*"))[::40]]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(next((root / "test" / "one").glob("*.jpg")).read_bytes()[:60])
    answers = {}
    for model in (run / "export", run / "export" / "1", onnx, onnx.parent.parent, litert,
                  litert.parent, run, run / "model.keras"):
        code = predict_main([str(model), *files[:3], str(broken), *files[3:], "--top", "1"])
        out, err = capsys.readouterr()
        assert code == 1, err
        assert f"Cannot read {broken}" in err and f"1 of {len(files) + 1} images could not be read" in err
        lines = out.strip().splitlines()
        assert [line.split(":")[0] for line in lines] == files
        answers[model] = [line.split(": ")[1].split()[0] for line in lines]
    first, *others = answers.values()
    assert np.mean([a == Path(f).parent.name for a, f in zip(first, files)]) >= 0.8
    for other in others:
        assert np.mean([a == b for a, b in zip(first, other)]) >= 10 / 11


def test_the_accuracy_gate_allows_the_drop_it_is_given_and_no_more():
    from keras_fastres.serving.compact import AccuracyDropped, check_accuracy

    comparison = {"agreement": 0.95, "float_test_error": 0.02, "quantized_test_error": 0.035,
                  "test_images": 397}
    with pytest.raises(AccuracyDropped) as dropped:
        check_accuracy(comparison, max_drop=1)
    assert str(dropped.value) == (
        "The int8 model's test error is 3.50% against 2.00% for the float model (+1.50 "
        "points, more than --max-accuracy-drop 1; top-1 agreement 95.00%): not published.")
    check_accuracy(comparison, max_drop=2)
    check_accuracy({**comparison, "quantized_test_error": 0.01}, max_drop=0)  # better: passes
    with pytest.raises(AccuracyDropped):
        check_accuracy({**comparison, "quantized_test_error": 0.0201}, max_drop=0)


def test_a_quantized_model_that_loses_accuracy_is_not_published(digits_run, tmp_path, capsys,
                                                                 monkeypatch):
    """The gate's verdict (above) stops the export before anything is written; the quantizer
    itself is test_int8_models_agree_...'s, so here it passes the float model through."""
    from keras_fastres.serving import compact

    _, run = digits_run
    monkeypatch.setattr(compact, "quantize_onnx", lambda content, *args, **kwargs: content)
    monkeypatch.setattr(compact, "compare", lambda *args: {
        "agreement": 0.95, "float_test_error": 0.02, "quantized_test_error": 0.035,
        "test_images": 397})
    assert export_main(["--model", str(run), "--export-dir", str(tmp_path / "o"), "--format",
                        "onnx", "--quantize", "int8"]) == 1
    assert "more than --max-accuracy-drop 1; top-1 agreement 95.00%): not published." in (
        capsys.readouterr().err)
    assert not any(p.name.isdigit() for p in (tmp_path / "o").glob("*"))


@pytest.mark.parametrize("args, message", [
    (["--quantize", "int8"], "--quantize is for --format onnx or litert"),
    (["--quantize", "int8", "--format", "onnx"], "--quantize calibrates on the training images "
                                                 "of a finished run"),
    (["--format", "litert", "--max-accuracy-drop", "-1"], "must be 0 or more points"),
])
def test_quantize_refusals(args, message, tmp_path, capsys):
    from keras_fastres import FastResNet

    FastResNet(8).save(tmp_path / "model.keras")
    with pytest.raises(SystemExit) as refused:
        export_main(["--model", str(tmp_path / "model.keras"), "--export-dir",
                     str(tmp_path / "e"), *args])
    assert refused.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_an_unreadable_litert_file_is_named(tmp_path, capsys):
    (tmp_path / "model.tflite").write_bytes(b"not a flatbuffer")
    Image.new("RGB", (8, 8)).save(tmp_path / "cat.png")
    assert predict_main([str(tmp_path / "model.tflite"), str(tmp_path / "cat.png")]) == 1
    error = capsys.readouterr().err
    assert error.startswith(f"error: {tmp_path / 'model.tflite'} is not a complete LiteRT model")


def test_the_library_leaves_logging_and_stderr_as_it_found_them(monkeypatch):
    """Converting, quantizing and running the compact formats changes no logger's level and
    no file descriptor: hiding the converters' noise is the commands' choice
    (console.quiet_converters), never the library's."""
    import logging
    import os

    import keras_fastres
    from keras_fastres.serving.compact import litert_bytes, litert_runner, quantize_onnx
    from keras_fastres.serving.export import onnx_bytes

    changed = []  # by the package's own code (tf2onnx sets and resets absl's level itself)

    def spy(function, describe):
        def call(*args, **kwargs):
            if sys._getframe(1).f_globals.get("__name__", "").startswith("keras_fastres"):
                changed.append(describe(*args))
            return function(*args, **kwargs)
        return call
    monkeypatch.setattr(logging.Logger, "setLevel", spy(
        logging.Logger.setLevel, lambda logger, level: (logger.name, level)))
    monkeypatch.setattr(os, "dup2", spy(os.dup2, lambda *fds: fds))
    level, stderr = logging.getLogger().level, os.fstat(2)  # (absl sets its own on import)
    model = keras_fastres.FastResNet(8, num_classes=3, input_shape=(8, 8, 3), normalization=None)
    images = np.random.default_rng(0).integers(0, 256, (8, 8, 8, 3)).astype(np.float32)
    runner = litert_runner(litert_bytes(model, "int8", images))
    assert runner(images=images.astype(np.uint8))["classes"].shape == (8,)
    assert quantize_onnx(onnx_bytes(model), images.astype(np.uint8), batch=4)
    assert changed == []
    assert logging.getLogger().level == level
    assert (os.fstat(2).st_dev, os.fstat(2).st_ino) == (stderr.st_dev, stderr.st_ino)
