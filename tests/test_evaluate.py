"""fastres-evaluate and `evaluate`: on data whose confusion is known by construction, the
report says exactly that; a run's own report agrees with its metrics."""

import csv
import json

import keras
import numpy as np
import pytest
from PIL import Image

from keras_fastres import ImagePreparation
from keras_fastres.commands.evaluate import main
from keras_fastres.evaluation import Evaluation, disagreements, evaluate
from keras_fastres.evaluation.figures import confusion_figure, errors_figure

RED, BLUE = (250, 10, 10), (10, 10, 250)
COUNTS = {"apple": 4, "berry": 3, "cloud": 5}  # apple and berry: identical red images


def colour_model(red_to_berry=0.5):
    """GlobalAveragePooling -> Dense(3), fixed: apple's logit is the red mean, berry's
    `red_to_berry` of it, cloud's the blue mean. Red images are apple, blue ones cloud."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 25)(inputs))
    dense = keras.layers.Dense(3, activation="softmax")
    outputs = dense(x)
    dense.set_weights([np.array([[1, red_to_berry, 0], [0, 0, 0], [0, 0, 1]], "float32"),
                       np.zeros(3, "float32")])
    model = keras.Model(inputs, outputs)
    model.class_names = list(COUNTS)
    return model


@pytest.fixture(scope="module")
def fruit(tmp_path_factory):
    root = tmp_path_factory.mktemp("fruit")
    for name, count in COUNTS.items():
        (root / name).mkdir()
        for i in range(count):
            Image.new("RGB", (12 + i, 10), BLUE if name == "cloud" else RED).save(
                root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from keras_fastres.serving.export import export_saved_model
    return export_saved_model(colour_model(), tmp_path_factory.mktemp("export"), version=1)


def test_the_report_is_the_confusion_built_into_the_data(fruit, exported, tmp_path, capsys):
    from keras_fastres.serving.predict import predict
    assert main([str(exported), str(fruit), "--output", str(tmp_path / "report")]) == 0
    said = capsys.readouterr().out
    assert "accuracy 75.00% (9 of 12 images; 95% interval" in said
    assert "most confused: berry as apple (3)" in said
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["confusion_matrix"] == [[4, 0, 0], [3, 0, 0], [0, 0, 5]]
    assert [row["recall"] for row in metrics["per_class"]] == [1.0, 0.0, 1.0]
    assert [row["precision"] for row in metrics["per_class"]] == [4 / 7, 0.0, 1.0]
    assert metrics["most_confused"] == [["berry", "apple", 3]]
    low, high = metrics["accuracy_95"]
    assert low < 0.75 < high and metrics["images"] == 12
    with open(tmp_path / "report" / "errors.csv") as file:
        rows = list(csv.DictReader(file))
    files = sorted((fruit).rglob("*.png"))
    wrong = {str(path) for path, ranked in predict(exported.parent, files, top=1)
             if ranked[0][0] != path.parent.name}
    assert {row["source"] for row in rows} == wrong and len(wrong) == 3
    assert all(row["true"] == "berry" and row["predicted"] == "apple" for row in rows)
    for name in ("confusion.png", "errors.png", "reliability.png", "report.txt"):
        assert (tmp_path / "report" / name).stat().st_size > 0, name
    assert main([str(exported), str(fruit), "--output", str(tmp_path / "j"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["confusion_matrix"] == metrics["confusion_matrix"]


def test_the_error_grid_has_one_tile_per_error():
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    evaluation = Evaluation(("a", "b"), np.array([1, 1, 1, 0]), probabilities,
                            ("w", "x", "y", "z"), pixels=lambda i: np.zeros((len(i), 4, 4, 3)))
    assert [e["source"] for e in evaluation.errors()] == ["w", "z", "y"]  # most confident first
    drawn = [axes for axes in errors_figure(evaluation).axes if axes.images]
    assert len(drawn) == 3
    assert len([a for a in errors_figure(evaluation, limit=2).axes if a.images]) == 2


def test_a_second_model_is_compared_on_the_same_images(fruit, tmp_path, capsys):
    first, second = colour_model(), colour_model(red_to_berry=2.0)  # second: red is berry
    one, two = evaluate(first, fruit), evaluate(second, fruit)
    differ = disagreements(one, two)
    assert len(differ) == 7 and {d["first"] for d in differ} == {"apple"}
    assert {d["second"] for d in differ} == {"berry"} and one.accuracy == 0.75
    assert two.accuracy == pytest.approx(8 / 12)


def test_classes_the_model_does_not_know_and_unreadable_images(fruit, exported, tmp_path,
                                                                capsys):
    other = tmp_path / "other"
    for name in ("apple", "durian"):
        (other / name).mkdir(parents=True)
        Image.new("RGB", (8, 8), RED).save(other / name / "0.png")
    assert main([str(exported), str(other), "--output", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "durian" in err[0] and "apple, berry, cloud" in err[0]
    (other / "durian" / "0.png").unlink()
    (other / "durian").rmdir()
    (other / "cloud").mkdir()
    Image.new("RGB", (8, 8), BLUE).save(other / "cloud" / "0.png")
    (other / "cloud" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    assert main([str(exported), str(other), "--output", str(tmp_path / "r")]) == 1
    out, err = capsys.readouterr()
    assert "accuracy 100.00% (2 of 2 images" in out
    lines = err.strip().splitlines()
    assert "broken.png" in lines[0] and lines[-1].startswith("error: 1 images could not be read")
    assert [line for line in lines if line.startswith("warning:")] == [
        "warning: The data has no class folder for the model's classes berry; they are "
        "evaluated as answers only."]


def test_a_confusion_matrix_of_100_classes_stays_readable():
    rng = np.random.default_rng(0)
    evaluation = Evaluation(tuple(f"class{i}" for i in range(100)), rng.integers(0, 100, 500),
                            rng.dirichlet(np.ones(100), 500), tuple(map(str, range(500))))
    counts, shares = confusion_figure(evaluation).axes[:2]
    for axes in (counts, shares):
        assert len(axes.get_xticklabels()) == 34 and not axes.texts  # every 3rd name, no values


def test_a_training_run_ends_with_its_report(tmp_path, capsys):
    from keras_fastres.commands.train import main as train
    from keras_fastres.training.config import TrainConfig
    run = tmp_path / "run"
    assert train(TrainConfig(), ["--synthetic", "--synthetic-size", "64", "48", "--depth", "8",
                                 "--epochs", "1", "--batch-size", "16", "--output-dir",
                                 str(run)]) == 0
    assert f"what it got wrong in {run / 'evaluation'}" in capsys.readouterr().out
    metrics = json.loads((run / "metrics.json").read_text())
    report = json.loads((run / "evaluation" / "metrics.json").read_text())
    # The same images right: metrics.json's accuracy is the Trainer's float32 mean of 48.
    assert report["images"] == 48 and report["accuracy"] * 48 == round(
        (1 - metrics["test_error"]) * 48)
    # fastres-evaluate RUN: the same images (the run's test split), the same accuracy.
    assert main([str(run), "--output", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert again["confusion_matrix"] == report["confusion_matrix"]


def test_the_preparation_of_the_model_is_what_evaluation_uses(fruit):
    model = colour_model()
    evaluation = evaluate(model, fruit)
    assert evaluation.images([0])[0].shape == (8, 8, 3)
    assert ImagePreparation(8).prepare_file(evaluation.sources[0]).shape == (8, 8, 3)


def test_every_float_export_of_a_run_scores_its_test_split_alike_and_int8_is_compared(
        digits_run, tmp_path, capsys):
    """The digits run on its own test split (fastres-evaluate RUN) and its .keras file, its
    SavedModel and a float ONNX export on the folder's test/ (the same files): the same
    accuracy, to the image. The int8 ONNX model's is stated, and --compare lists exactly the
    images where its class differs from the float ONNX model's (onnxruntime run here)."""
    import onnxruntime

    from keras_fastres.models import load_model
    from keras_fastres.serving.compact import calibration_images, quantize_onnx
    from keras_fastres.serving.export import export_onnx
    from keras_fastres.training.run import run_data
    root, run = digits_run
    assert main([str(run), "--output", str(tmp_path / "run")]) == 0
    reference = json.loads((tmp_path / "run" / "metrics.json").read_text())
    model = load_model(run)
    onnx_file = export_onnx(model, tmp_path / "model.onnx")
    int8_file = tmp_path / "int8.onnx"
    int8_file.write_bytes(quantize_onnx(onnx_file.read_bytes(),
                                        calibration_images(run_data(run).train, 64)))
    for source in (run / "model.keras", run / "export", onnx_file):
        evaluation = evaluate(source, root)
        assert evaluation.correct == round(reference["accuracy"] * reference["images"]), source
        assert len(evaluation.labels) == reference["images"]
    assert main([str(onnx_file), str(root), "--compare", str(int8_file), "--output",
                 str(tmp_path / "pair")]) == 0
    said = capsys.readouterr().out
    assert f"against {int8_file}: accuracy" in said
    float_eval = evaluate(onnx_file, root)
    pixels = np.stack(float_eval.images(range(len(float_eval.labels))))
    int8_classes = onnxruntime.InferenceSession(str(int8_file)).run(
        ["classes"], {"images": pixels})[0]
    differ = {float_eval.sources[i] for i in np.flatnonzero(int8_classes
                                                            != float_eval.predictions)}
    with open(tmp_path / "pair" / "disagreements.csv") as file:
        assert {row["source"] for row in csv.DictReader(file)} == differ


def test_a_data_set_name_is_its_test_split_at_the_models_size(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    from keras_fastres import FastResNet, data
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(data.catalog, "host_reachable", lambda *args: True)
    with tfds.testing.mock_data(num_examples=24):
        evaluation = evaluate(FastResNet(8), "cifar10")
    assert len(evaluation.labels) == 24 and evaluation.class_names[0] == "airplane"
